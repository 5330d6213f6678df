"""The provider contract: one async call that takes a typed request and returns a typed result, or raises one
of the errors in `pixelmill.errors`. Providers handle no policy: the engine owns concurrency, limits,
retries, journaling and cost (the provider only reports what the wire said).

A provider module reads top to bottom: build the request, send it, map the answer, map the errors.
Built-in providers register through the `pixelmill.providers` entry-point group, like third-party ones.

Two shapes of call:
- a request whose answer is the image (`Provider.call`): OpenAI, Azure, Gemini, OpenAI-compatible, diffusers;
- a remote job (`JobProvider`: fal, Replicate, Black Forest Labs): `submit` answers a `JobHandle` at once,
  `poll` says pending / done (with the `ImageResult`, media already fetched) / failed, `cancel` is optional.
  The engine journals the handle the moment `submit` returns, before any poll, so that a crash or a Ctrl-C
  never submits (and pays for) the same row twice: a re-run polls the journaled handle instead
  (engine/call.py). `call` (submit, then poll until done) serves callers that need no journal.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from pixelmill.errors import ProviderError, RateLimits
    from pixelmill.models.table import ModelSpec
    from pixelmill.params import ImageParams, WirePlan

Task = Literal["generate", "edit", "variation"]


@dataclass(frozen=True, slots=True)
class InputImage:
    """An image sent to a provider. `mime` is sniffed from the bytes, never trusted from a file name."""

    data: bytes
    mime: str
    name: str  # where it came from, for error messages and multipart file names ("photo.png", "images[1]")
    width: int = 0
    height: int = 0
    # The https URL the row gave, when these bytes are exactly what it served: providers that fetch inputs
    # themselves (fal) may send the URL instead of the bytes.
    url: str | None = None


@dataclass(slots=True)
class ChatTurn:
    """One earlier exchange of a multi-turn conversation, for providers with chat (Gemini).

    `model_content` is the model's turn exactly as it arrived (raw JSON), so that thought signatures and
    every other field go back byte for byte."""

    prompt: str
    images: list[InputImage]
    model_content: Any


@dataclass(slots=True)
class ImageRequest:
    """One call to a provider. `params` are wire-level values, already mapped and validated for the model
    (see `pixelmill.params`); they are what the row's `pixelmill.parameters` records."""

    task: Task
    model: str  # the name sent on the wire (a deployment name on Azure)
    prompt: str
    params: dict[str, Any] = field(default_factory=dict)
    images: list[InputImage] = field(default_factory=list)
    mask: InputImage | None = None
    history: list[ChatTurn] = field(default_factory=list)
    row: int = -1  # for logs only
    timeout: float = 300.0


@dataclass(slots=True)
class GeneratedImage:
    data: bytes
    mime: str | None = None  # as the provider labelled it; the store sniffs the real format
    revised_prompt: str | None = None


@dataclass(slots=True)
class ImageResult:
    images: list[GeneratedImage]
    usage: dict[str, Any] | None = None
    text: str | None = None
    finish_reason: str | None = None
    request_id: str | None = None
    model_content: Any = None  # the raw model turn, for chat providers' history
    extra: dict[str, Any] = field(default_factory=dict)  # response metadata worth keeping (size, quality, ...)
    rate_limits: RateLimits | None = None  # what the answer's headers said about the limits (engine/limiter.py)


@dataclass(slots=True)
class JobHandle:
    """What a remote job's submit answered: everything needed to poll, collect and cancel it later, from another
    process. Journaled as JSON (`as_json` / `from_json`) before the first poll.

    `urls` are the provider's own, followed exactly as given (fal's status/response/cancel URLs, Replicate's
    `urls.get`/`urls.cancel`, BFL's `polling_url`, which may name a sibling host); `data` holds what else the
    provider needs (the model, a cost the submit reported, ...). `submitted` is the epoch second of the answer."""

    id: str
    urls: dict[str, str] = field(default_factory=dict)
    submitted: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "urls": dict(self.urls), "submitted": self.submitted, "data": dict(self.data)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> JobHandle:
        return cls(str(value["id"]), dict(value.get("urls") or {}), float(value.get("submitted") or 0.0),
                   dict(value.get("data") or {}))


JobState = Literal["pending", "done", "failed"]


@dataclass(slots=True)
class JobStatus:
    """One poll's answer. `done` carries the result with its images fetched; `failed` carries the error the job
    ended in (a `ProviderError`: `Refused` for moderation, `ResultLost` when the result expired or the provider
    no longer knows the job, `TransientError` for a job that failed on the provider's side and may be sent
    again). `detail` is a short word for displays ("IN_QUEUE", "processing", "position 3")."""

    state: JobState
    result: ImageResult | None = None
    error: ProviderError | None = None
    detail: str | None = None


class Provider(abc.ABC):
    """Base class of every provider.

    `family` names the wire family whose rules `pixelmill.params` applies ("openai", "gemini", "diffusers").
    `chat` says whether multi-turn rows can be sent as one conversation; without it the engine chains edits.
    """

    name: ClassVar[str]
    family: ClassVar[str]
    chat: ClassVar[bool] = False

    def __init__(self, settings: ProviderSettings, env: Mapping[str, str]) -> None:
        """Resolve credentials and base URL from `settings` and `env`; raise `ConfigError` naming the
        variable to set when a key is missing. Open no connection here: `call` opens lazily."""
        self.settings = settings

    def spec_for(self, model: str) -> ModelSpec:
        """The rules for `model`: the table's entry (by name or alias), else the family's permissive rules
        with a notice (providers that must know every model raise `ConfigError` instead)."""
        from pixelmill.models.table import builtin_table, permissive_spec

        return builtin_table().get(model) or permissive_spec(model, self.family)  # type: ignore[arg-type]

    def for_model(self, spec: ModelSpec) -> Provider:
        """The provider that sends `spec`'s calls: this one, unless a provider hands models to the wire that
        serves them (the emulator: Gemini's wire for Gemini models, OpenAI's for the rest). The planner asks
        once per model, before checking the model against `family`."""
        return self

    @abc.abstractmethod
    def plan(self, spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
        """Map neutral parameters to this wire family's values for `spec`; raise `ConfigError` for what the
        model cannot do. Called once per step before anything is sent (and per row when the task varies)."""

    @abc.abstractmethod
    async def call(self, request: ImageRequest, spec: ModelSpec) -> ImageResult:
        """Send one request. Raise only `pixelmill.errors` types; map third-party exceptions at the boundary."""

    def check(self, request: ImageRequest, spec: ModelSpec) -> None:  # noqa: B027 - optional hook
        """The checks `call` makes before it sends anything (prompt length, input images, mask), raising
        `InputError`: a request sent another way (a batch line) is checked the same."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Called once at the end of a run."""

    def secrets(self) -> tuple[str, ...]:
        """The credentials this provider holds, so that they can be scrubbed from anything written."""
        return ()


class JobProvider(Provider):
    """A provider whose calls are remote jobs: submit, poll, collect (see the module docstring).

    The engine owns the policy here too: it journals the handle, bounds jobs in flight by `--concurrency`,
    spaces the polls (`poll_delay`), decides retries and charges. The provider maps the wire: what to send, what
    each state means, where the media are (fetched without the API key)."""

    jobs: ClassVar[bool] = True

    @abc.abstractmethod
    async def submit(self, request: ImageRequest, spec: ModelSpec) -> JobHandle:
        """Send the job once (never retried here: a lost answer may be a paid job). Raise `pixelmill.errors`
        types; a sent request whose answer is lost or broken is an `UnknownOutcome`."""

    @abc.abstractmethod
    async def poll(self, handle: JobHandle, spec: ModelSpec) -> JobStatus:
        """Ask how the job stands; when it is done, fetch its result and media at once (results expire).
        A poll that cannot reach the provider raises `TransientError` (polls are free: the engine polls again)."""

    async def cancel(self, handle: JobHandle, spec: ModelSpec) -> str:
        """Ask the provider to cancel the job; returns what it said ("cancelled", "already_completed",
        "not_found", "requested"). Providers without a cancel call raise `ConfigError` saying so."""
        from pixelmill.errors import ConfigError

        raise ConfigError(f"{self.name} has no call to cancel a job: job {handle.id} runs to its end")

    async def recover(self, request: ImageRequest, spec: ModelSpec, since: float) -> JobHandle | None:
        """Find the job a submit created when its answer was lost (sent at epoch `since` or later), by listing the
        provider's jobs where the API can list them (Replicate). None when it cannot be found or listed."""
        return None

    def poll_delay(self, polls: int) -> float:
        """Seconds before poll number `polls + 1` of one job: 0.5 s growing by half each time to 5 s, so that
        polls per image stay small at any latency (about 4 at 2 s, about 8 at 20 s)."""
        return min(5.0, 0.5 * 1.5 ** polls)

    async def call(self, request: ImageRequest, spec: ModelSpec) -> ImageResult:
        """Submit, then poll until the job ends: for callers that keep no journal."""
        import asyncio

        handle = await self.submit(request, spec)
        polls = 0
        while True:
            await asyncio.sleep(self.poll_delay(polls))
            polls += 1
            status = await self.poll(handle, spec)
            if status.state == "done":
                assert status.result is not None
                return status.result
            if status.state == "failed":
                assert status.error is not None
                raise status.error


def is_job_provider(provider: Provider) -> bool:
    return isinstance(provider, JobProvider)


def provider_class(name: str) -> type[Provider]:
    """Look up a provider by its entry-point name."""
    from pixelmill.errors import ConfigError

    found = entry_points(group="pixelmill.providers")
    for ep in found:
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Provider)):
                raise ConfigError(f"entry point {ep.value!r} for provider {name!r} is not a Provider class")
            return cls
    known = ", ".join(sorted(ep.name for ep in found)) or "none installed"
    raise ConfigError(f"unknown provider {name!r}: known providers are {known}")


@dataclass(slots=True)
class ProviderSettings:
    """What a provider is constructed from. Keys resolve in each provider: a flag (here `api_key`) beats the
    provider's own environment variable, which beats `DF_API_KEY`; `base_url` likewise beats `DF_BASE_URL`."""

    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never in a repr, a log line or a traceback
    api_version: str | None = None
    connect_timeout: float = 30.0
    # Download limits for images a provider answers with as URLs (dall-e), in bytes and seconds.
    max_download_bytes: int = 64 * 1024 * 1024
    options: dict[str, Any] = field(default_factory=dict)
