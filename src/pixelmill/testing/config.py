"""What the emulator can be told: latency, rate limits, faults, keys, deployments, image padding, batch clock.

One pydantic model, validated on every change (`Emulator.configure(**changes)` builds a new one), so a typo in
a fault name or a probability above 1 fails at once with the allowed values named.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Faults that replace the answer. Families ignore the ones that have no meaning for them (an OpenAI route
# serves a normal answer for `no_image`, `text_only`, `prompt_blocked`, `image_safety`).
FAULTS: tuple[str, ...] = (
    "rate_limit",  # 429 with Retry-After / retry-after-ms (Gemini: RESOURCE_EXHAUSTED with RetryInfo)
    "rate_limit_no_header",  # 429 without any retry hint
    "server_error",  # 500
    "bad_gateway",  # 502
    "unavailable",  # 503
    "gateway_timeout",  # 504
    "timeout",  # hold the connection for `timeout_hold` seconds, then 504
    "reset",  # close the connection abruptly, no response
    "truncated",  # declare Content-Length, send half the body, close
    "malformed",  # 200 with a body that is not JSON
    "invalid_base64",  # 200 JSON whose image data is not base64
    "moderation",  # OpenAI 400 moderation_blocked; Azure content filter; Gemini prompt_blocked or image_safety
    "prompt_blocked",  # Gemini: 200, promptFeedback.blockReason SAFETY, no candidates
    "image_safety",  # Gemini: 200, finishReason IMAGE_SAFETY, no image
    "no_image",  # Gemini: 200, finishReason NO_IMAGE, no image
    "text_only",  # Gemini: 200, finishReason STOP, a text part only
    "auth",  # 401 invalid_api_key (Azure 401; Gemini 400 API_KEY_INVALID)
    "quota",  # OpenAI 429 insufficient_quota (no Retry-After); Gemini 429 RESOURCE_EXHAUSTED, daily quota;
    # Replicate and BFL 402 (no credit), fal 403 (exhausted balance)
    "job_failed",  # remote jobs (fal, Replicate, BFL): the submit succeeds, the job ends failed (fal COMPLETED
    # with error/error_type, Replicate `failed`, BFL `Error`); the other APIs ignore it
)

# What `batch_fates` may name (see `batches` for what each does).
BATCH_FATES: tuple[str, ...] = ("normal", "expire", "fail", "slow", "stall", "reset")

# Not a failure: Gemini answers carry thought parts (with draft images) before the final image.
MODIFIERS: tuple[str, ...] = ("thoughts",)


class EmulatorConfig(BaseModel):
    """Every knob of the emulator. All times are seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Latency of every answer that gets past auth, rate limit and validation. `latency_sigma` > 0 makes it
    # lognormal with median `latency`.
    latency: float = Field(default=0.0, ge=0)
    latency_sigma: float = Field(default=0.0, ge=0)
    seed: int | None = 0  # None: a fresh random seed
    # Rate limit over a sliding window of `rate_window` seconds (60 = per minute), shared by all routes.
    rpm: int | None = Field(default=None, ge=1)
    ipm: int | None = Field(default=None, ge=1)
    rate_window: float = Field(default=60.0, gt=0)
    # Fault probabilities per request, by name (FAULTS, plus `thoughts`). The FAULTS ones are exclusive and
    # must add up to at most 1.
    faults: dict[str, float] = Field(default_factory=dict)
    # Deterministic trigger: once `fail_after` requests have been received, every later request gets `fail_with`.
    fail_after: int | None = Field(default=None, ge=0)
    fail_with: str = "auth"
    timeout_hold: float = Field(default=30.0, ge=0)  # how long the `timeout` fault holds the connection
    retry_after: float = Field(default=1.0, gt=0)  # the hint the `rate_limit` fault gives
    thought_drafts: int = Field(default=1, ge=0, le=4)  # draft images in thought parts (Gemini, `thoughts`)
    # Keys: None accepts any non-empty key; a set accepts only those. Keys are never logged.
    api_keys: frozenset[str] | None = None
    # Azure deployment name -> model; a deployment named after a known model serves that model.
    deployments: dict[str, str] = Field(default_factory=dict)
    serve_retired: bool = False  # OpenAI/Gemini routes: serve models past their shutdown date (gateways)
    today: dt.date | None = None  # the date that decides retirement; None: the real date
    image_bytes: int | None = Field(default=None, ge=0)  # pad every image to about this many bytes
    gemini_mime: str = "image/png"  # what Gemini answers carry (the API does not let the client choose)
    max_log: int = Field(default=50_000, ge=0)  # oldest log entries are dropped past this (0: no limit)
    # Remote jobs (fal queue, Replicate, BFL): how long a job runs once started, with a uniform relative jitter
    # (0.25: between 0.75x and 1.25x); `[[latency:S]]` in the prompt sets one job's run time instead.
    job_latency: float = Field(default=0.2, ge=0)
    job_jitter: float = Field(default=0.0, ge=0, le=1)
    job_queue_time: float = Field(default=0.0, ge=0)  # time each job waits queued before it may start
    # Every retention of the real APIs times this factor: fal results 1 h after completion (6 min when 10 KB or
    # more), fal media (its lifecycle header, else 7 days), Replicate data 1 h, BFL sample URLs 10 min.
    # 0.001 expires a fal result 3.6 s after completion.
    retention_scale: float = Field(default=1.0, gt=0)
    fal_concurrency: int | None = Field(default=40, ge=1)  # fal: IN_PROGRESS requests at once; the rest queue
    bfl_active_limit: int = Field(default=24, ge=1)  # BFL: active tasks before a 429 (6 for flux-kontext-max)
    bfl_credits: float | None = Field(default=None, ge=0)  # BFL credits left (None: unlimited); 402 when short
    # The host BFL `polling_url`s name (a sibling of the submit host, as api.us1.bfl.ai is of api.bfl.ai);
    # None: `localhost` for a submit to 127.0.0.1 and `127.0.0.1` for a submit to `localhost`.
    bfl_polling_host: str | None = None
    hf_cold_start: float = Field(default=0.0, ge=0)  # HF: 503 "currently loading" for this long after the first call
    # Batch APIs (OpenAI Batch, Gemini Batch Mode) on an accelerated clock. A batch has answered all its lines
    # `batch_latency` seconds after its creation; `batch_window` seconds stand for 24 h (OpenAI's completion
    # window; Gemini's 48 h expiry is twice that). `batch_fates` decides the next batches created, in order
    # (then `normal`): `expire` (the window closes with half the lines answered), `fail` (validation fails),
    # `slow` (ten times the latency), `stall` (no line is answered until the batch is cancelled or expires),
    # `reset` (the batch is created and runs normally, but the create's connection is closed with no answer).
    batch_latency: float = Field(default=1.0, ge=0)
    batch_window: float = Field(default=3600.0, gt=0)
    batch_fates: tuple[str, ...] = ()
    # The next N batch creates (OpenAI `POST /v1/batches`, Gemini `:batchGenerateContent`) create the batch, then cut
    # the connection before answering: a create whose answer is lost (the client must find it by listing, not
    # create a second one). Counted from zero again whenever it is configured.
    batch_lost_creates: int = Field(default=0, ge=0)
    # Seconds a batch create holds its answer once the batch exists (a slow answer: a client killed meanwhile has
    # created a batch it never recorded).
    batch_create_hold: float = Field(default=0.0, ge=0)

    @field_validator("faults")
    @classmethod
    def _known_faults(cls, value: dict[str, float]) -> dict[str, float]:
        for name, p in value.items():
            if name not in FAULTS and name not in MODIFIERS:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS + MODIFIERS)}")
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"fault {name!r} probability {p} is not between 0 and 1")
        total = sum(p for name, p in value.items() if name in FAULTS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities add up to {total:.3f}; they must add up to at most 1")
        return value

    @field_validator("batch_fates")
    @classmethod
    def _known_fates(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for fate in value:
            if fate not in BATCH_FATES:
                raise ValueError(f"unknown batch fate {fate!r}; known: {', '.join(BATCH_FATES)}")
        return value

    @field_validator("fail_with")
    @classmethod
    def _known_fail_with(cls, value: str) -> str:
        if value not in FAULTS:
            raise ValueError(f"unknown fault {value!r} for fail_with; known: {', '.join(FAULTS)}")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset({value})
        if isinstance(value, list | set | tuple):
            return frozenset(value)
        return value

    @model_validator(mode="after")
    def _no_empty_key(self) -> EmulatorConfig:
        if self.api_keys is not None and any(not k for k in self.api_keys):
            raise ValueError("api_keys must not contain an empty key")
        return self
