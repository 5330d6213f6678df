"""Black Forest Labs' API: submit a task, poll its `polling_url`, collect the sample (reference async-apis.md 5).

Reads top to bottom: credentials and base URL, submit, poll (status, then the sample).

- Key: `--api-key` > `BFL_API_KEY` > `DF_API_KEY`, sent as the `x-key` header. Base URL: `--base-url` >
  `https://api.bfl.ai`, with or without `/v1` (`/v1` is added when missing). `--model` is the path after
  `/v1/` (`flux-pro-1.1`, `flux-2-pro`); the submit goes to `{base}/{model}`.
- The `polling_url` the submit answered is followed exactly as given, and journaled in the `JobHandle`. It may
  name a sibling host (`api.us1.bfl.ai`): it carries the key when it is BFL's API by the rule of
  `providers/jobwire.py` (the base URL's host or site: `*.bfl.ai` for `api.bfl.ai`, like the AI SDK's); a
  polling URL elsewhere is not followed (the task is reported paid and out of reach). The sample URL (a signed
  blob-storage URL that expires 10 minutes after generation) is fetched at once, without the key, under the
  download policy of `providers/http.py`.
- Inputs for edits: `input_image` (Kontext), `input_image` .. `input_image_8` (FLUX.2), base64 without a
  data-URI prefix.
- Statuses: Pending (and any "queued"/"processing" word) is pending; Ready is collected; `Request Moderated` /
  `Content Moderated` are `Refused` (reason `request_moderated` / `content_moderated`); `Error` / `Failed` fail
  the task (`TransientError`); `Task not found` is `ResultLost` (BFL forgot the task or it expired), except in
  the first seconds after the submit, when a sibling cluster may not know the task yet (pending). A `state` key
  is read when `status` is absent (the AI SDK accepts both).
- Cost: the submit's `cost` (credits, 1 credit = 1 cent) is kept in the handle and reported as
  `usage["cost_usd"]`, which `models/cost.py` prefers to the table.
- A sample URL that answers 403/404/410 has expired: `ResultLost`.
- No cancel call exists (none documented): `cancel` says so. A submit whose answer is lost is an
  `UnknownOutcome` (BFL lists no tasks, so it can only be recorded as possibly billed).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import orjson
import pybase64

from pixelmill.errors import (
    FatalError,
    InputError,
    ProviderError,
    Refused,
    ResultLost,
    TransientError,
    UnknownOutcome,
)
from pixelmill.models.table import ModelSpec
from pixelmill.netpolicy import strip_userinfo
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
from pixelmill.providers.bfl.errors import error_from_reply, request_id_of
from pixelmill.providers.bfl.params import model_inputs, plan_bfl
from pixelmill.providers.boundary import malformed, number, obj, scrub_error, scrub_result, text
from pixelmill.providers.http import EMULATOR_HEADER
from pixelmill.providers.jobwire import (
    KeyedJobProvider,
    MediaGone,
    fetch_media,
    first,
    job_base_url,
    poll_answer,
    provider_url,
    quiet_poll,
    submit_answer,
)
from pixelmill.providers.openai.params import check_prompt

__all__ = ["DEFAULT_BASE_URL", "NOT_FOUND_GRACE_S", "BflProvider"]

DEFAULT_BASE_URL = "https://api.bfl.ai"
# Seconds after the submit during which "Task not found" means "not visible yet" (UNCONFIRMED: BFL documents no
# replication delay; a sibling cluster answering for a task created a moment ago is the case this covers).
NOT_FOUND_GRACE_S = 10.0
_SMALL_ANSWER = 1 << 20
_PENDING = frozenset({"pending", "queued", "processing", "running", "in_progress"})
_MODERATED = {"request moderated": "request_moderated", "content moderated": "content_moderated"}


class BflProvider(KeyedJobProvider):
    """api.bfl.ai (or a regional host, or a server given with --base-url that speaks the same API)."""

    name: ClassVar[str] = "bfl"
    family = "bfl"
    key_variables = ("BFL_API_KEY", "DF_API_KEY")
    key_where = "keys are made at https://dashboard.bfl.ai"
    display = "BFL"
    other_model = "a BFL model"

    def base_url_of(self, settings: ProviderSettings, env: Mapping[str, str]) -> str:
        return job_base_url(first(settings.base_url) or DEFAULT_BASE_URL, provider="bfl",
                            example="https://api.bfl.ai/v1", version="v1")

    def plan(self, spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
        return plan_bfl(spec, params, task)

    # ------------------------------------------------------------ submit

    async def submit(self, request: ImageRequest, spec: ModelSpec) -> JobHandle:
        try:
            return await self._submit(request, spec)
        except ProviderError as exc:
            raise scrub_error(exc, self.secrets()) from exc.__cause__

    async def _submit(self, request: ImageRequest, spec: ModelSpec) -> JobHandle:
        label = self._label(request.model)
        body = self.request_body(request, spec)
        reply = await self._http.send("POST", f"{self.base_url}/{quote(request.model, safe='/')}",
                                      data=orjson.dumps(body),
                                      headers={"x-key": self._key, "Content-Type": "application/json"},
                                      time_limit=request.timeout, max_bytes=_SMALL_ANSWER, label=label)
        if not 200 <= reply.status < 300:
            raise error_from_reply(reply, label=label, model=request.model, secrets=self.secrets())
        answer = submit_answer(reply, label=label, request_id=request_id_of(reply.headers))
        task_id = text(answer.get("id"))
        if task_id is None:
            raise UnknownOutcome(f"{label}: the submit was accepted (HTTP {reply.status}) but its answer names no "
                                 "task id, so the task cannot be polled: it may have been billed",
                                 http_status=reply.status)
        polling = text(answer.get("polling_url")) or f"{self.base_url}/get_result?id={quote(task_id, safe='')}"
        data: dict[str, Any] = {"model": request.model}
        cost = number(answer.get("cost"))
        if cost is not None and cost >= 0:
            data["cost_usd"] = cost / 100.0  # credits; 1 credit = $0.01
        if reply.headers.get(EMULATOR_HEADER):
            data["emulated"] = strip_userinfo(self.base_url)
        return JobHandle(task_id, {"polling": polling}, time.time(), data)

    def request_body(self, request: ImageRequest, spec: ModelSpec) -> dict[str, Any]:
        check_prompt(spec, request.prompt)
        body: dict[str, Any] = {"prompt": request.prompt, **request.params}
        if request.task == "generate":
            return body
        fields = model_inputs(spec).input_images
        if not request.images:
            raise InputError(f"{request.task} needs an input image: the row has none", field="images")
        limit = min(len(fields), spec.max_input_images or len(fields))
        if not fields or len(request.images) > limit:
            raise InputError(f"{spec.name} takes at most {limit} input image(s); the row has "
                             f"{len(request.images)}", field="images")
        for name, image in zip(fields, request.images, strict=False):
            body[name] = pybase64.b64encode(image.data).decode()
        return body

    # ------------------------------------------------------------ poll

    async def poll(self, handle: JobHandle, spec: ModelSpec) -> JobStatus:
        secrets = self.secrets()
        try:
            status = await self._poll(handle, spec)
        except ProviderError as exc:
            raise scrub_error(exc, secrets) from exc.__cause__
        if status.error is not None:
            scrub_error(status.error, secrets)
        if status.result is not None:
            scrub_result(status.result, secrets)
        return status

    async def _poll(self, handle: JobHandle, spec: ModelSpec) -> JobStatus:
        model = str(handle.data.get("model") or spec.name)
        label = self._label(model)
        url = handle.urls.get("polling")
        if url is None or not provider_url(url, self.base_url):
            return JobStatus("failed", error=ResultLost(
                f"{label}: the task's polling URL is missing or names a host that is not BFL's API (the base URL "
                f"{strip_userinfo(self.base_url)}): pixelmill does not send the key there, so task {handle.id} "
                "(paid) cannot be collected; --retry-failed pays again", request_id=handle.id))
        try:
            reply = await self._http.send("GET", url, headers={"x-key": self._key}, time_limit=60.0,
                                          max_bytes=_SMALL_ANSWER, label=label)
        except TransientError as exc:
            raise quiet_poll(exc) from exc
        if reply.status in (404, 410):
            return self._not_found(handle, label, f"HTTP {reply.status}")
        if not 200 <= reply.status < 300:
            error = error_from_reply(reply, label=label, model=model, secrets=self.secrets())
            if isinstance(error, FatalError) and reply.status != 404:
                raise error
            raise TransientError(f"{label}: polling answered HTTP {reply.status}; polling again ({error})",
                                 http_status=reply.status)
        answer = poll_answer(reply, label=label, request_id=handle.id)
        state = text(answer.get("status")) or text(answer.get("state")) or "?"
        word = state.strip().lower()
        if word in _PENDING:
            progress = number(answer.get("progress"))
            return JobStatus("pending", detail=state + (f" {progress:.0%}" if progress is not None else ""))
        if word in _MODERATED:
            reason = _MODERATED[word]
            reasons = _moderation_reasons(answer)
            what = "the prompt or input image" if reason == "request_moderated" else "the generated image"
            return JobStatus("failed", detail=state, error=Refused(
                f"{label}: BFL's moderation refused {what} ({state}{reasons}); not retried. Rephrase the prompt "
                "or change the input image, or raise --param safety_tolerance where the model allows",
                reason=reason, request_id=handle.id))
        if word == "task not found":
            return self._not_found(handle, label, "Task not found")
        if word == "ready":
            return await self._collect(answer, handle, label)
        message = text(answer.get("message")) or text(answer.get("error")) or text(answer.get("details"))
        return JobStatus("failed", detail=state, error=TransientError(
            f"{label}: task {handle.id} ended in status {state[:40]!r}" + (f": {message[:400]}" if message else ""),
            request_id=handle.id, code=state[:40]))

    def _not_found(self, handle: JobHandle, label: str, said: str) -> JobStatus:
        if handle.submitted and time.time() - handle.submitted < NOT_FOUND_GRACE_S:
            return JobStatus("pending", detail="not visible yet")
        return JobStatus("failed", detail="Task not found", error=ResultLost(
            f"{label}: task {handle.id} was submitted and paid, but BFL no longer knows it ({said}; results are "
            "kept about 10 minutes): its result is lost; --retry-failed pays for a new one", request_id=handle.id))

    async def _collect(self, answer: dict[str, Any], handle: JobHandle, label: str) -> JobStatus:
        result = obj(answer.get("result"))
        sample = text(result.get("sample"))
        if sample is None:
            raise malformed(label, "a Ready task without `result.sample`", handle.id)
        try:
            data, mime = await fetch_media(self._http, sample, time_limit=120.0,
                                           max_bytes=self.settings.max_download_bytes,
                                           trusted_origin=self.base_url, label=label, request_id=handle.id)
        except MediaGone as exc:
            return JobStatus("failed", detail="Ready", error=ResultLost(
                f"{label}: task {handle.id} was paid, but its sample URL has expired (HTTP {exc.http_status}; BFL "
                "keeps samples 10 minutes): its result is lost; --retry-failed pays for a new one",
                http_status=exc.http_status, request_id=handle.id))
        extra: dict[str, Any] = {"request_id": handle.id}
        seed = number(result.get("seed"))
        if seed is not None:
            extra["seed"] = int(seed)
        if handle.data.get("emulated"):
            extra["emulated"] = strip_userinfo(self.base_url)
        cost = handle.data.get("cost_usd")
        usage = {"cost_usd": float(cost)} if isinstance(cost, int | float) else None
        return JobStatus("done", detail="Ready", result=ImageResult(
            images=[GeneratedImage(data, mime)], usage=usage, request_id=handle.id, extra=extra))


def _moderation_reasons(answer: dict[str, Any]) -> str:
    details = obj(answer.get("details"))
    reasons = details.get("Moderation Reasons") or details.get("moderation_reasons")
    if isinstance(reasons, list):
        names = [str(r)[:60] for r in reasons[:8] if isinstance(r, str)]
        return f": {', '.join(names)}" if names else ""
    return ""
