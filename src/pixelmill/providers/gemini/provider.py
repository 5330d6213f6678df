"""Gemini image generation and editing over `POST /v1beta/models/{model}:generateContent` ("Nano Banana").

Reads top to bottom: credentials and base URL, build the request (`request_body`), send it, map the answer
(`parse_answer`), map the errors (`error_from_answer`). Wire facts: shared/reference/image-apis.md section 3.

Choices that are ours, not the API's:
- Key: `--api-key` > `GEMINI_API_KEY` > `GOOGLE_API_KEY` > `DF_API_KEY`, sent as the `x-goog-api-key` header,
  never in the URL. Base URL: `--base-url` > `GOOGLE_GEMINI_BASE_URL` (the variable google-genai reads) >
  `DF_BASE_URL` > Google's host; with or without a trailing `/v1beta` (or `/v1`, `/v1alpha`), never doubled.
- Model turns of a conversation are sent back exactly as they arrived (the raw `content` dict, thought
  signatures included); the current turn's images follow its text in the order given.
- Final images come only from parts without `thought: true` (thinking models may send draft images first).
- Refusals arrive as HTTP 200. No candidate -> `Refused(reason=<blockReason>)`; a candidate without a final
  image -> `Refused(reason=<finishReason>)`; a text-only answer that finished normally (STOP) ->
  `Refused(reason="text_only")` (our own label: lower case, unlike the wire's enums), the model's words
  quoted; an empty one that finished normally -> `Refused(reason="NO_IMAGE")`.
- 400 FAILED_PRECONDITION (billing not enabled, region not served) aborts as `AuthError`: the key's project
  cannot use the model, and every further request would fail the same way. A 429 whose QuotaFailure names a
  per-day quota or a spend cap aborts as `QuotaExhausted`: it resets at midnight Pacific (or next month), far
  beyond a row's deadline. Other 429s are `RateLimited`, after `RetryInfo.retryDelay` or `Retry-After`.
- The answer boundary (`pixelmill.providers.boundary`): every field is read with its type checked (an odd
  `candidates`, `parts` or image data is a `TransientError`, odd metadata reads as absent; an error body of
  any shape maps by its status); an answer is bounded by a final image and two thinking drafts at the
  model's largest size; one image per call is kept (Gemini sends one per call), the rest only counted
  (`extra["surplus_images"]`); everything the server said is redacted with `secrets()` (the key, and a
  password in the base URL) before it is cut or returned.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
import pybase64

from pixelmill.errors import (
    AuthError,
    ConfigError,
    InputError,
    ModelUnavailable,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    Refused,
    Rejected,
    TransientError,
    redact_clip,
)
from pixelmill.netpolicy import strip_userinfo, userinfo_secrets
from pixelmill.providers.base import (
    ChatTurn,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    InputImage,
    Provider,
    ProviderSettings,
    Task,
)
from pixelmill.providers.boundary import (
    answer_limit,
    code,
    field,
    malformed,
    number,
    obj,
    scrub_error,
    scrub_result,
    seq,
    text,
)
from pixelmill.providers.gemini.params import REQUEST_LEVEL_KEYS, check_inputs, plan_gemini
from pixelmill.providers.http import (
    EMULATOR_HEADER,
    HttpClient,
    decode_base64,
    parse_json,
    parse_retry_after,
)

if TYPE_CHECKING:
    from pixelmill.models.table import ModelSpec
    from pixelmill.params import ImageParams, WirePlan

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "DF_API_KEY")
BASE_URL_VARIABLES = ("GOOGLE_GEMINI_BASE_URL", "DF_BASE_URL")
# A call's answer holds one final image, and up to two draft images of a thinking model; plus text and thought
# signatures in the envelope. Anything larger is not an answer (`boundary.answer_limit`).
IMAGES_PER_ANSWER = 3
ENVELOPE_BYTES = 1 << 20
# How much of the model's own words a refusal message quotes, and of an error's message.
QUOTE_CHARS = 300
MESSAGE_CHARS = 400

_VERSION_SUFFIX = re.compile(r"/v1(?:alpha|beta)?\d*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)s\s*$")
_SAFETY = frozenset({"SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "IMAGE_PROHIBITED_CONTENT", "BLOCKLIST",
                     "SPII", "MODEL_ARMOR", "JAILBREAK"})
_RECITATION = frozenset({"RECITATION", "IMAGE_RECITATION"})
_NORMAL_FINISH = frozenset({None, "", "STOP", "FINISH_REASON_UNSPECIFIED"})
_TRANSIENT_STATUS = frozenset({499, 500, 502, 503, 504})


class GeminiProvider(Provider):
    """The Gemini API's image models (gemini-3-pro-image, gemini-3.1-flash-image, ...), with chat."""

    name = "gemini"
    family = "gemini"
    chat = True

    def __init__(self, settings: ProviderSettings, env: Mapping[str, str]) -> None:
        super().__init__(settings, env)
        self._key = resolve_key(settings, env)
        self.base_url = api_base(settings.base_url or _first(env, BASE_URL_VARIABLES) or DEFAULT_BASE_URL)
        self._http = HttpClient("Gemini", connect_timeout=settings.connect_timeout)

    def plan(self, spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
        return plan_gemini(spec, params, task)

    async def call(self, request: ImageRequest, spec: ModelSpec) -> ImageResult:
        secrets = self.secrets()
        try:
            result = await self._call(request, spec, secrets)
        except ProviderError as exc:
            raise scrub_error(exc, secrets) from exc.__cause__
        return scrub_result(result, secrets)

    def check(self, request: ImageRequest, spec: ModelSpec) -> None:
        check_inputs(spec, request.images, mask=request.mask)

    async def _call(self, request: ImageRequest, spec: ModelSpec, secrets: tuple[str, ...]) -> ImageResult:
        self.check(request, spec)
        model = request.model.removeprefix("models/")
        reply = await self._http.send(
            "POST",
            f"{self.base_url}/models/{quote(model, safe='.-_')}:generateContent",
            data=orjson.dumps(request_body(request)),
            headers={"x-goog-api-key": self._key, "Content-Type": "application/json"},
            time_limit=request.timeout,
            max_bytes=answer_limit(spec, IMAGES_PER_ANSWER, per_image_cap=self.settings.max_download_bytes,
                                   envelope=ENVELOPE_BYTES),
            label=f"Gemini {model}",
        )
        if reply.status != 200:
            raise error_from_answer(reply.status, reply.body, reply.headers, spec, model, secrets=secrets)
        result = parse_answer(reply.body, model, secrets=secrets)
        if reply.headers.get(EMULATOR_HEADER):  # a rehearsal's image: never a real run's (engine/runner.py)
            result.extra["emulated"] = strip_userinfo(self.base_url)  # done again only for this same emulator
        return result

    async def aclose(self) -> None:
        await self._http.aclose()

    def secrets(self) -> tuple[str, ...]:
        return (self._key, *userinfo_secrets(self.base_url))


# ------------------------------------------------------------------------------ credentials and base URL


def resolve_key(settings: ProviderSettings, env: Mapping[str, str]) -> str:
    key = settings.api_key or _first(env, KEY_VARIABLES)
    if not key:
        raise ConfigError("no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY, or DF_API_KEY), or pass "
                          "--api-key; keys are made at https://aistudio.google.com/apikey")
    return key


def api_base(base_url: str) -> str:
    """`https://host[/prefix]` -> `https://host[/prefix]/v1beta`; a URL that already ends in an API version
    keeps it."""
    base = base_url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ConfigError(f"Gemini base URL {base_url!r} must start with http:// or https:// "
                          "(for example https://generativelanguage.googleapis.com)")
    return base if _VERSION_SUFFIX.search(base) else f"{base}/v1beta"


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if env.get(name):
            return env[name]
    return None


# ------------------------------------------------------------------------------------- build the request


def request_body(request: ImageRequest) -> dict[str, Any]:
    """The `generateContent` body: earlier turns (user, then the model's turn as received), the current user
    turn, and `request.params` as `generationConfig` (request-level keys lifted to the top)."""
    contents: list[Any] = []
    for index, turn in enumerate(request.history):
        contents.append(_user_turn(turn.prompt, turn.images))
        contents.append(_model_turn(turn, index))
    contents.append(_user_turn(request.prompt, request.images))
    config = dict(request.params)
    body: dict[str, Any] = {"contents": contents}
    for key in sorted(REQUEST_LEVEL_KEYS & config.keys()):
        body[key] = config.pop(key)
    body["generationConfig"] = config
    return body


def _user_turn(prompt: str, images: list[InputImage]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": prompt}] if prompt else []
    parts += [
        {"inlineData": {"mimeType": image.mime, "data": pybase64.b64encode(image.data).decode("ascii")}}
        for image in images
    ]
    return {"role": "user", "parts": parts}


def _model_turn(turn: ChatTurn, index: int) -> Any:
    content = turn.model_content
    if isinstance(content, dict):
        # Exactly as received: thought signatures are validated by some models.
        return content if "role" in content else {"role": "model", **content}
    if isinstance(content, str):  # an assistant turn from a dataset, not from Gemini: plain text
        return {"role": "model", "parts": [{"text": content}]}
    raise InputError(f"turn {index + 1} of the conversation has no model answer to send back; each earlier "
                     "turn needs the model's reply (run the turns in order)", field="conversation")


# ------------------------------------------------------------------------------------------ map the answer


def parse_answer(raw: bytes, model: str, *, secrets: tuple[str, ...] = ()) -> ImageResult:
    """A 200 answer -> the final image and metadata, or `Refused` when it holds no image. Quotes of the
    server's words are redacted with `secrets` before they are cut."""
    label = f"Gemini {model}"
    return read_answer(parse_json(raw, label=label, http_status=200), model, secrets=secrets)


def read_answer(answer: Any, model: str, *, secrets: tuple[str, ...] = ()) -> ImageResult:
    """`parse_answer` of a `GenerateContentResponse` already parsed (a batch's answer line carries one)."""
    label = f"Gemini {model}"
    body = _unwrap(answer, label)
    request_id = text(body.get("responseId"))
    candidates = field(body, "candidates", list, label=label, request_id=request_id)
    if not candidates:
        raise _blocked_prompt(body, model, request_id, secrets)
    candidate = candidates[0]
    if not isinstance(candidate, dict):
        raise malformed(label, "the first candidate is not an object", request_id)
    content = field(candidate, "content", dict, label=label, request_id=request_id) or {}
    finish = code(candidate.get("finishReason"))
    images: list[tuple[str, str]] = []  # (base64, mime): decoded below, only the one kept
    texts: list[str] = []
    drafts = 0
    for part in field(content, "parts", list, label=label, request_id=request_id) or []:
        if not isinstance(part, dict):
            raise malformed(label, "a part of the content is not an object", request_id)
        inline = field(part, "inlineData", dict, label=label, request_id=request_id) or \
            field(part, "inline_data", dict, label=label, request_id=request_id)
        if part.get("thought"):  # thinking: its text and draft images are not the answer
            drafts += 1 if inline else 0
            continue
        mime = text(inline.get("mimeType") or inline.get("mime_type")) if inline else None
        if inline and mime and mime.startswith("image/"):
            data = field(inline, "data", str, label=label, request_id=request_id) or ""
            images.append((data, mime))
        elif part_text := text(part.get("text")):
            texts.append(part_text)
    joined = "\n".join(texts) or None
    if not images:
        raise _no_image(model, finish, joined, text(candidate.get("finishMessage")), request_id, secrets)
    extra: dict[str, Any] = {"model_version": version} if (version := text(body.get("modelVersion"))) else {}
    if drafts:
        extra["draft_images_ignored"] = drafts
    if len(images) > 1:  # one image per call was asked for: the rest is neither decoded nor written
        extra["surplus_images"] = len(images) - 1
    data, mime = images[0]
    kept = GeneratedImage(data=decode_base64(data, label=label, request_id=request_id), mime=mime)
    usage = body.get("usageMetadata")
    return ImageResult(images=[kept], usage=usage if isinstance(usage, dict) else None, text=joined,
                       finish_reason=finish, request_id=request_id, model_content=content, extra=extra)


def _blocked_prompt(body: dict[str, Any], model: str, request_id: str | None,
                    secrets: tuple[str, ...]) -> ProviderError:
    feedback = obj(body.get("promptFeedback"))
    reason = code(feedback.get("blockReason"))
    if not reason:
        return TransientError(f"Gemini answered {model} with neither a candidate nor a block reason; the row "
                              "will be retried", maybe_billed=True, http_status=200, request_id=request_id)
    said = text(feedback.get("blockReasonMessage"))
    detail = f": {_quote(said, secrets)}" if said else ""
    return Refused(f"{model} blocked the prompt ({reason}){detail}; {_advice(reason)}",
                   reason=reason, http_status=200, request_id=request_id, code=reason)


def _no_image(model: str, finish: str | None, said_text: str | None, message: str | None,
              request_id: str | None, secrets: tuple[str, ...]) -> Refused:
    reason = finish if finish and finish not in _NORMAL_FINISH else ("text_only" if said_text else "NO_IMAGE")
    said = "; ".join(_quote(s, secrets) for s in (message, said_text) if s)
    return Refused(f"{model} returned no image ({reason})" + (f", saying {said}" if said else "")
                   + f"; {_advice(reason)}",
                   reason=reason, http_status=200, request_id=request_id, code=finish)


def _advice(reason: str) -> str:
    if reason in _SAFETY:
        return "Gemini's safety filters blocked it: rephrase the prompt or change the input images"
    if reason in _RECITATION:
        return "it was too close to existing material: rephrase the prompt to ask for something original"
    if reason == "MAX_TOKENS":
        return "it ran out of output tokens: lower --param thinking_level, or drop maxOutputTokens"
    return ("the model answered without an image: ask for the image explicitly in the prompt (\"generate an "
            "image of ...\"), then re-run with --retry-failed")


def _quote(said: str, secrets: tuple[str, ...] = ()) -> str:
    return repr(redact_clip(said, QUOTE_CHARS, secrets, ellipsis="…"))


def _unwrap(body: Any, label: str) -> dict[str, Any]:
    # Some Google front ends wrap the object in a one-element list.
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if not isinstance(body, dict):
        raise malformed(label, "not a JSON object")
    return body


# ------------------------------------------------------------------------------------------ map the errors


def error_from_answer(status: int, raw: bytes, headers: Mapping[str, str], spec: ModelSpec, model: str,
                      *, secrets: tuple[str, ...] = ()) -> ProviderError:
    """A non-200 answer -> the taxonomy's error, with the server's words (keys scrubbed, then cut) and what to
    do. A body of any shape maps by the status: odd fields read as absent."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    error = obj(body).get("error")
    if not isinstance(error, dict):  # a proxy's HTML page, an empty body: the status alone decides
        error = {"message": raw[: 1 << 16].decode("utf-8", "replace").strip() or "(empty body)"}
    rpc = code(error.get("status")) or ""
    details = [d for d in seq(error.get("details")) if isinstance(d, dict)]
    message = error.get("message")
    said = redact_clip(message if isinstance(message, str) and message.strip() else
                       orjson.dumps(message).decode() if message else "(no message)", MESSAGE_CHARS, secrets)
    where = f"Gemini {status}{' ' + rpc if rpc else ''} for {model}: {said}"
    kw: dict[str, Any] = {"http_status": status, "code": rpc or None}

    if status == 429:
        if _daily_or_spend_cap(details, said):
            return QuotaExhausted(f"{where}. This is a daily quota or spend cap: it will not clear within "
                                  "the run. Raise it in AI Studio, or resume the run after the reset "
                                  "(midnight Pacific); done rows are not requested again", **kw)
        delay = _retry_delay(details)
        return RateLimited(f"{where}; lower --rpm/--ipm to match the project's limits",
                           retry_after=delay if delay is not None else parse_retry_after(headers),
                           **kw)
    if status in _TRANSIENT_STATUS or status >= 500:
        return TransientError(f"{where}; the server is struggling, the row will be retried", **kw)
    if status in (401, 403) or _bad_key(details, said):
        return AuthError(f"{where}. Check the key (GEMINI_API_KEY) and that its project may use {model}",
                         **kw)
    if rpc == "FAILED_PRECONDITION":
        return AuthError(f"{where}. The key's project cannot use {model} here: enable billing on it (image "
                         "models have no free tier) or use a project in a supported region", **kw)
    if status == 404:
        return ModelUnavailable(f"{where}. {_model_advice(spec)}", **kw)
    return Rejected(f"{where}; fix the request for this row (the run goes on)", **kw)


def _model_advice(spec: ModelSpec) -> str:
    if spec.shutdown is not None and spec.retired():
        instead = f"; use {spec.replacement} instead" if spec.replacement else ""
        return f"{spec.name} was shut down on {spec.shutdown.isoformat()}{instead}"
    return "Check the model name (`pixelmill models --provider gemini` lists the known ones) and its access"


def _bad_key(details: list[dict[str, Any]], message: str) -> bool:
    """A 400 that is really about the key (Google answers an unknown key with INVALID_ARGUMENT)."""
    reasons = {code(d.get("reason")) for d in details if _is_type(d, "rpc.ErrorInfo")}
    return bool(reasons & {"API_KEY_INVALID", "API_KEY_EXPIRED"}) or "api key not valid" in message.lower()


def _daily_or_spend_cap(details: list[dict[str, Any]], message: str) -> bool:
    for detail in details:
        if not _is_type(detail, "google.rpc.QuotaFailure"):
            continue
        for violation in seq(detail.get("violations")):
            violation = obj(violation)
            ids = f"{code(violation.get('quotaId')) or ''} {code(violation.get('quotaMetric')) or ''}".lower()
            if "perday" in ids or "per_day" in ids or "spend" in ids:
                return True
    return "spend cap" in message.lower() or "spending cap" in message.lower()


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    """`google.rpc.RetryInfo.retryDelay`: a proto Duration, "37s" / "1.5s" (or {seconds, nanos}). Anything
    else (a negative or garbled delay, a list, an overflow) counts as no hint: the retry policy's own backoff
    decides, never a crash or a zero wait."""
    for detail in details:
        if not _is_type(detail, "google.rpc.RetryInfo"):
            continue
        delay = detail.get("retryDelay")
        seconds: float | None = None
        if isinstance(delay, str) and (match := _DURATION.match(delay)):
            seconds = float(match.group(1))
        elif isinstance(delay, dict):
            whole, nanos = number(delay.get("seconds") or 0), number(delay.get("nanos") or 0)
            if whole is not None and nanos is not None:
                try:
                    seconds = float(whole) + float(nanos) / 1e9
                except OverflowError:  # an integer of hundreds of digits
                    seconds = None
        if seconds is not None and math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _is_type(detail: dict[str, Any], suffix: str) -> bool:
    kind = detail.get("@type")
    return isinstance(kind, str) and kind.endswith(suffix)
