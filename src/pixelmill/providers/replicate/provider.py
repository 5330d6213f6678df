"""Replicate predictions as remote jobs (reference async-apis.md 4): submit, poll, cancel, and recovery of a
lost submit by listing.

- Models: the official `owner/name` models (`POST /v1/models/{owner}/{name}/predictions`, `{input}`), any
  version as `owner/name:<64 hex>` or a bare `<64 hex>` (`POST /v1/predictions`, `{version, input}`).
  The table's FLUX models are mapped input by input (params.py); other models take `--param` as given.
- Key: `--api-key` > REPLICATE_API_TOKEN > DF_API_KEY, sent as `Authorization: Bearer`. Base URL: `--base-url`
  > REPLICATE_BASE_URL > DF_BASE_URL > https://api.replicate.com, with or without `/v1`.
- `Prefer: wait=5` (the `prefer_wait` option changes it): a fast model (flux-schnell answers in about a
  second) finishes inside the create call and needs no poll; a slower one comes back `starting`/`processing`
  after 5 s and is polled. The wait stays short because a create whose answer is lost is found again only by
  listing (`recover`): the window is small.
- The create's answer is the handle either way, returned at once so that the engine journals it before
  anything else happens. A prediction that was already finished is carried in the handle (`data["done"]`),
  so the first `poll` fetches its media without asking again; if those fetches fail, it asks the API.
- `Cancel-After: 15m` bounds a prediction nobody collects (a crash between create and journal, a run
  abandoned): FLUX runs take seconds and a cold start minutes, so 15 minutes leaves room for both, and an
  orphan stops well inside the hour Replicate keeps outputs, instead of running (and, on time-billed models,
  billing) on. A prediction not started by then ends `aborted` (not charged), one running ends `canceled`.
- Statuses: `starting`/`processing` pending; `succeeded` done (an output array, or one URI for
  flux-1.1-pro); `succeeded` with `data_removed` or a null output, or media that answer 403/404/410
  (`jobwire.MediaGone`), is `ResultLost` (outputs are deleted an hour after the run); `failed` is `Refused`
  when the model's error says NSFW, else a `TransientError` (billed for its run time on time-billed models,
  not on per-image ones); `canceled` and `aborted` are `TransientError`s that say whether they may have been billed.
- Media are fetched WITHOUT the key, as every provider's are (the issue's rule), although Replicate's API
  docstring says to send it to `replicate.delivery`: its files are served from signed paths that work
  without it, and a key must never reach a host that is not the API. Poll, cancel and list URLs from the
  answers (`urls.get`, `urls.cancel`, `next`) carry the key, so they are followed as given only when
  `jobwire.provider_url` says they are the provider's own API; otherwise the same resource is asked at the
  base URL. Polls, cancels and lists create nothing: a lost answer there is a plain `TransientError`.
- A 2xx create whose body cannot be read is an `UnknownOutcome` (the prediction exists): the engine then calls
  `recover`, which lists `GET /v1/predictions` newest first and takes the prediction of the same model or
  version and the same input created since the submit (a minute of clock skew allowed).
Errors: `pixelmill.providers.replicate.errors`.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from pixelmill.errors import ConfigError, ProviderError, Refused, ResultLost, TransientError, UnknownOutcome
from pixelmill.models.table import ModelSpec, builtin_table, permissive_spec
from pixelmill.netpolicy import strip_userinfo, userinfo_secrets
from pixelmill.params import ImageParams, WirePlan
from pixelmill.providers.base import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    JobHandle,
    JobStatus,
    ProviderSettings,
    Task,
)
from pixelmill.providers.boundary import number, obj, scrub_error, scrub_result, seq, text
from pixelmill.providers.http import EMULATOR_HEADER, Reply
from pixelmill.providers.jobwire import (
    KeyedJobProvider,
    MediaGone,
    data_uri,
    fetch_media,
    first,
    job_base_url,
    poll_answer,
    provider_url,
    quiet_poll,
    submit_answer,
)
from pixelmill.providers.openai.params import check_prompt
from pixelmill.providers.replicate.errors import ErrorContext, Stage, error_from_reply
from pixelmill.providers.replicate.params import check_inputs, image_field, plan_replicate

__all__ = ["CANCEL_AFTER", "WAIT_SECONDS", "ReplicateProvider", "normalize_base_url", "route"]

DEFAULT_BASE_URL = "https://api.replicate.com/v1"
WAIT_SECONDS = 5
CANCEL_AFTER = "15m"
_VERSION = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_PENDING = frozenset({"starting", "processing"})
_TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
_EXPIRED = "output_expired"
_NSFW = re.compile(r"nsfw|safety|sensitive", re.IGNORECASE)
# Bounds: a prediction's JSON (logs included), a page of the list, seconds for a poll and a media download.
_PREDICTION_BYTES = 4 << 20
_PAGE_BYTES = 16 << 20
_POLL_TIMEOUT = 60.0
_MEDIA_TIMEOUT = 300.0
# Recovery: how far back a lost create is looked for, and how many pages of the list at most.
_CLOCK_SKEW = 60.0
_MAX_PAGES = 20


def normalize_base_url(url: str) -> str:
    """`https://api.replicate.com`, `.../v1` and `.../v1/` all become `https://api.replicate.com/v1`; a gateway
    prefix (`https://router.huggingface.co/replicate`) gets `/v1` too."""
    return job_base_url(url, provider="replicate", example="https://api.replicate.com", version="v1")


def route(model: str) -> tuple[str, str | None, str | None]:
    """Where a model's predictions are created: (path under /v1, `owner/name` or None, version or None)."""
    name, _, version = model.partition(":")
    if _VERSION.fullmatch(model):
        return "/predictions", None, model
    if not _NAME.fullmatch(name) or (version and not _VERSION.fullmatch(version)):
        raise ConfigError(f"{model!r} is not a Replicate model: give owner/name (an official model such as "
                          "black-forest-labs/flux-schnell), owner/name:<64-hex version>, or a version id")
    if version:
        return "/predictions", name, version
    owner, _, short = name.partition("/")
    return f"/models/{quote(owner, safe='')}/{quote(short, safe='')}/predictions", name, None


def _epoch(value: Any) -> float | None:
    """An RFC 3339 time (`2026-11-29T10:00:00.123456Z`) as epoch seconds, or None."""
    raw = text(value)
    if raw is None:
        return None
    try:
        when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


class ReplicateProvider(KeyedJobProvider):
    """Replicate's predictions API (see the module docstring)."""

    name: ClassVar[str] = "replicate"
    family = "replicate"
    key_variables = ("REPLICATE_API_TOKEN", "DF_API_KEY")
    key_where = "tokens are at replicate.com/account/api-tokens"
    display = "Replicate"
    other_model = "a Replicate model"

    def __init__(self, settings: ProviderSettings, env: Mapping[str, str]) -> None:
        super().__init__(settings, env)
        # `prefer_wait` (an option of the model's entry in a pipeline file): seconds the create may wait, 1-60.
        self.wait = max(1, min(60, int(settings.options.get("prefer_wait", WAIT_SECONDS))))

    # ------------------------------------------------------------ configuration

    def base_url_of(self, settings: ProviderSettings, env: Mapping[str, str]) -> str:
        url = normalize_base_url(
            first(settings.base_url, env.get("REPLICATE_BASE_URL"), env.get("DF_BASE_URL")) or DEFAULT_BASE_URL
        )
        if userinfo_secrets(url):
            raise ConfigError("the base URL carries a user and password: Replicate takes a token; drop them")
        return url

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"}

    def spec_for(self, model: str) -> ModelSpec:
        table = builtin_table()
        spec = table.get(model) or table.get(model.partition(":")[0])  # a pinned version of a listed model
        if spec is not None and spec.family != "replicate":
            raise ConfigError(f"{model} is a {spec.family} model, not a Replicate one: use --provider {spec.family}")
        route(model)  # a name Replicate cannot have is refused before anything is sent
        return spec if spec is not None else permissive_spec(model, "replicate")

    def plan(self, spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
        return plan_replicate(spec, params, task)

    def _own(self, url: str | None, fallback: str) -> str:
        """A URL from an answer, if it is the provider's own API (it will carry the key: `jobwire.provider_url`);
        else `fallback`, the same resource at the base URL."""
        return url if url and provider_url(url, self.base_url) else fallback

    # ------------------------------------------------------------ submit

    def _input(self, request: ImageRequest, spec: ModelSpec) -> dict[str, Any]:
        wire: dict[str, Any] = {"prompt": request.prompt, **request.params}
        if request.task == "edit" and request.images:
            wire[image_field(spec)] = data_uri(request.images[0])
        return wire

    async def submit(self, request: ImageRequest, spec: ModelSpec) -> JobHandle:
        try:
            return await self._submit(request, spec)
        except ProviderError as exc:
            raise scrub_error(exc, self.secrets()) from exc.__cause__

    async def _submit(self, request: ImageRequest, spec: ModelSpec) -> JobHandle:
        check_prompt(spec, request.prompt)
        check_inputs(spec, request.task, request.images)
        path, name, version = route(request.model)
        body: dict[str, Any] = {"input": self._input(request, spec)}
        if version is not None:
            body["version"] = version
        headers = {**self._headers(), "Content-Type": "application/json", "Prefer": f"wait={self.wait}",
                   "Cancel-After": CANCEL_AFTER}
        label = f"replicate {request.model}"
        reply = await self._http.send("POST", self.base_url + path, data=orjson.dumps(body), headers=headers,
                                      time_limit=max(request.timeout, self.wait + 10.0),
                                      max_bytes=_PREDICTION_BYTES, label=label)
        if not 200 <= reply.status < 300:
            raise error_from_reply(reply, self._ctx(label, request.model, "create"))
        prediction = submit_answer(reply, label=label)
        handle = self._handle(prediction, name, version, request, reply)
        if handle is None:
            raise UnknownOutcome(f"{label}: the create answer (HTTP {reply.status}) has no prediction id: the "
                                 "prediction may exist and be billed")
        return handle

    def _handle(self, prediction: dict[str, Any], name: str | None, version: str | None, request: ImageRequest,
                reply: Reply | None) -> JobHandle | None:
        ident = text(prediction.get("id"))
        if ident is None or "/" in ident:
            return None
        urls = obj(prediction.get("urls"))
        fallback = f"{self.base_url}/predictions/{quote(ident, safe='')}"
        handle_urls = {"get": self._own(text(urls.get("get")), fallback),
                       "cancel": self._own(text(urls.get("cancel")), fallback + "/cancel")}
        data: dict[str, Any] = {"model": name, "version": version, "official": version is None,
                                "asked": _asked(request.params)}
        if reply is not None and reply.headers.get(EMULATOR_HEADER):
            data["emulated"] = True
        if text(prediction.get("status")) in _TERMINAL:
            data["done"] = {key: prediction.get(key) for key in ("status", "output", "error", "data_removed",
                                                                 "metrics")}
        return JobHandle(ident, handle_urls, time.time(), data)

    # ------------------------------------------------------------ poll

    async def poll(self, handle: JobHandle, spec: ModelSpec) -> JobStatus:
        secrets = self.secrets()
        try:
            status = await self._poll(handle, spec)
        except ProviderError as exc:
            raise scrub_error(exc, secrets) from exc.__cause__
        if status.result is not None:
            status.result = scrub_result(status.result, secrets)
        if status.error is not None:
            status.error = scrub_error(status.error, secrets)
        return status

    async def _poll(self, handle: JobHandle, spec: ModelSpec) -> JobStatus:
        label = f"replicate prediction {handle.id}"
        done = handle.data.get("done")
        if isinstance(done, dict):
            # Finished inside the create call: its media are fetched without asking the API again; if that fails
            # (expired, a broken answer), the API says how the prediction stands now.
            try:
                status = await self._status(done, handle, spec, label, bool(handle.data.get("emulated")))
            except TransientError:
                status = None
            if status is not None and not (isinstance(status.error, ResultLost) and status.error.code == _EXPIRED):
                return status
            handle.data.pop("done", None)
        reply = await self._free("GET", handle.urls.get("get") or f"{self.base_url}/predictions/{handle.id}",
                                 label)
        if reply.status != 200:
            error = error_from_reply(reply, self._ctx(label, str(handle.data.get("model") or handle.id), "poll",
                                                      handle.id))
            if isinstance(error, ResultLost):
                return JobStatus("failed", error=error, detail="unknown")
            raise error
        prediction = poll_answer(reply, label=label, request_id=handle.id)
        return await self._status(prediction, handle, spec, label, bool(reply.headers.get(EMULATOR_HEADER)))

    async def _status(self, prediction: dict[str, Any], handle: JobHandle, spec: ModelSpec, label: str,
                      emulated: bool) -> JobStatus:
        status = text(prediction.get("status"))
        if status in _PENDING:
            return JobStatus("pending", detail=status)
        if status == "succeeded":
            return await self._succeeded(prediction, handle, spec, label, emulated)
        if status == "failed":
            return JobStatus("failed", error=self._failed(prediction, handle, label), detail=status)
        if status == "aborted":
            return JobStatus("failed", detail=status, error=TransientError(
                f"{label}: aborted: its {CANCEL_AFTER} deadline passed before it started (not charged); it may be "
                "sent again", code="aborted", request_id=handle.id))
        if status == "canceled":
            billed = not handle.data.get("official", False)
            return JobStatus("failed", detail=status, error=TransientError(
                f"{label}: canceled before it finished (a cancel request, or its {CANCEL_AFTER} deadline while "
                "running)" + ("; the time it ran may be billed" if billed else "; no image, nothing charged"),
                code="canceled", request_id=handle.id, maybe_billed=billed))
        raise TransientError(f"{label}: the prediction has an unknown status ({str(status)[:40]!r}); polling again",
                             request_id=handle.id, http_status=200)

    def _failed(self, prediction: dict[str, Any], handle: JobHandle, label: str) -> ProviderError:
        raw = prediction.get("error")
        message = (text(raw) or (orjson.dumps(raw).decode() if raw is not None else "no reason given"))[:400]
        if _NSFW.search(message):
            return Refused(f"{label}: refused by the model's safety checker: {message}. Not retried; rephrase the "
                           "prompt", reason="nsfw", request_id=handle.id)
        billed = not handle.data.get("official", False)
        return TransientError(f"{label}: the model failed: {message}", request_id=handle.id, maybe_billed=billed,
                              code="failed")

    async def _succeeded(self, prediction: dict[str, Any], handle: JobHandle, spec: ModelSpec, label: str,
                         emulated: bool) -> JobStatus:
        output = prediction.get("output")
        urls = [output] if isinstance(output, str) else [u for u in seq(output) if isinstance(u, str) and u]
        if prediction.get("data_removed") is True or not urls:
            return JobStatus("failed", detail="data_removed", error=ResultLost(
                f"{label}: succeeded, but its output was removed (Replicate deletes outputs an hour after the "
                "run): the job was paid and its result is lost; --retry-failed submits it again (and pays again)",
                request_id=handle.id, code="data_removed"))
        asked = int(handle.data.get("asked") or 1)
        images: list[GeneratedImage] = []
        for url in urls[:asked]:
            try:
                data, mime = await fetch_media(self._http, url, time_limit=_MEDIA_TIMEOUT,
                                               max_bytes=self.settings.max_download_bytes,
                                               trusted_origin=self.base_url, label=label, request_id=handle.id)
            except MediaGone as exc:
                return JobStatus("failed", detail="expired", error=ResultLost(
                        f"{label}: its output answers HTTP {exc.http_status} (Replicate deletes outputs an hour "
                        "after the run): the job was paid and its result is lost; --retry-failed submits it again "
                        "(and pays again)", request_id=handle.id, code=_EXPIRED))
            images.append(GeneratedImage(data, mime))
        extra: dict[str, Any] = {"prediction": handle.id}
        metrics = obj(prediction.get("metrics"))
        for key in ("predict_time", "total_time"):
            value = number(metrics.get(key))
            if value is not None:
                extra[key] = value
        if len(urls) > asked:
            extra["surplus_images"] = len(urls) - asked
        if emulated:
            extra["emulated"] = strip_userinfo(self.base_url)
        return JobStatus("done", result=ImageResult(images=images, request_id=handle.id, extra=extra))

    # ------------------------------------------------------------ cancel and recover

    async def cancel(self, handle: JobHandle, spec: ModelSpec) -> str:
        label = f"replicate prediction {handle.id}"
        url = handle.urls.get("cancel") or f"{self.base_url}/predictions/{handle.id}/cancel"
        reply = await self._free("POST", url, label)
        if reply.status == 404:
            return "not_found"
        if reply.status != 200:
            raise scrub_error(error_from_reply(reply, self._ctx(label, handle.id, "cancel", handle.id)),
                              self.secrets())
        status = text(poll_answer(reply, label=label, request_id=handle.id).get("status"))
        if status == "canceled":
            return "cancelled"
        if status in _TERMINAL:
            return "already_completed"
        return "requested"

    async def recover(self, request: ImageRequest, spec: ModelSpec, since: float) -> JobHandle | None:
        """The prediction a lost create made: same model (or version), same input, created at `since` or later
        (less a minute of clock skew). Lists newest first and stops at the first one older than that."""
        _path, name, version = route(request.model)
        want = self._input(request, spec)
        label = f"replicate {request.model} (recovering a lost create)"
        url = f"{self.base_url}/predictions"
        for _ in range(_MAX_PAGES):
            reply = await self._free("GET", url, label, max_bytes=_PAGE_BYTES)
            if reply.status != 200:
                raise scrub_error(error_from_reply(reply, self._ctx(label, request.model, "list")), self.secrets())
            page = poll_answer(reply, label=label)
            for prediction in seq(page.get("results")):
                prediction = obj(prediction)
                created = _epoch(prediction.get("created_at"))
                if created is not None and created < since - _CLOCK_SKEW:
                    return None  # newest first: everything further is older than the lost create
                if created is not None and _same_job(prediction, name, version, want):
                    return self._handle(prediction, name, version, request, reply)
            following = text(page.get("next"))
            if following is None:
                return None
            url = self._own(following, "")
            if not url:
                return None
        return None

    async def _free(self, method: str, url: str, label: str, *, max_bytes: int = _PREDICTION_BYTES) -> Reply:
        """A call that creates nothing and costs nothing (poll, cancel, list): a lost answer is a plain
        `TransientError`, never an unknown outcome."""
        try:
            return await self._http.send(method, url, headers=self._headers(), time_limit=_POLL_TIMEOUT,
                                         max_bytes=max_bytes, label=label)
        except TransientError as exc:
            raise quiet_poll(exc) from exc

    def _ctx(self, label: str, model: str, stage: Stage, prediction: str | None = None) -> ErrorContext:
        return ErrorContext(label=label, model=model, stage=stage, secrets=self.secrets(), prediction=prediction)



def _asked(params: Mapping[str, Any]) -> int:
    try:
        return max(1, min(int(params.get("num_outputs") or 1), 16))
    except (TypeError, ValueError):
        return 1


def _same_job(prediction: dict[str, Any], name: str | None, version: str | None, want: dict[str, Any]) -> bool:
    """Whether a listed prediction is the one a create with input `want` made: the model (or the version)
    and every input value sent (inline images excepted: the server keeps them as files)."""
    if version is not None and text(prediction.get("version")) != version:
        return False
    if version is None and text(prediction.get("model")) != name:
        return False
    given = obj(prediction.get("input"))
    for key, value in want.items():
        if isinstance(value, str) and value.startswith("data:"):
            continue
        if given.get(key) != value:
            return False
    return True
