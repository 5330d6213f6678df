"""fal's queue API: submit a job, poll its status, collect its result (reference async-apis.md section 3).

Reads top to bottom: credentials and base URL, submit, poll (status, then the result and its media), cancel.

- Key: `--api-key` > `FAL_KEY` > `DF_API_KEY`, sent as `Authorization: Key <key>` (a `key_id:key_secret` pair
  works the same). Base URL: `--base-url` > `https://$FAL_QUEUE_RUN_HOST` (fal-client's variable) >
  `https://queue.fal.run`. `--model` is fal's endpoint id (`fal-ai/flux/dev`); the submit goes to
  `{base}/{model}`.
- The status, result and cancel URLs are those the submit answered, followed exactly as given (they live under
  owner/app, not under the full id) and journaled in the `JobHandle`. They carry the key only when they are
  fal's API by the rule of `providers/jobwire.py` (the base URL's host or site); a handle naming another host is
  not followed. Media URLs (`images[].url`, on fal's CDN) are fetched without the key, under the download policy
  of `providers/http.py` (size cap, public addresses or the base URL's own server).
- Submit headers. `X-Fal-Object-Lifecycle-Preference: {"expiration_duration_seconds": 172800}` keeps the media
  two days (a crash at night and a resume the next day still collect them), and `X-Fal-Store-IO: 1` asks fal to
  keep the result payload for its storage period (the queue otherwise drops a result 1 h after completion;
  UNCONFIRMED how long storage keeps it). `x-fal-no-retry` is NOT sent: fal's queue retries a job's failed
  runner attempts (503, 504, disconnects) itself, under the same request id and without billing the failed
  attempts (fal bills outputs; 5xx are not billed), so its retries cost nothing and never pay twice; turning
  them off would only turn fal's free retries into row failures and paid resubmits of ours.
- `sync_mode` is never sent: its data URIs are not kept by the queue.
- Status 202 IN_QUEUE / IN_PROGRESS is pending; COMPLETED with `error` failed (`job_error`), else the result is
  fetched at once. `has_nsfw_concepts[i]` true drops image i (fal sends a black image in its place); a job whose
  every image was dropped is `Refused(reason="nsfw_concepts")`; dropped images are counted in
  `extra["nsfw_dropped"]`. FAILED / CANCELED (seen in third-party schemas only) and unknown statuses end the job.
- A 404 or 410 on the status or result URL (fal no longer knows the job, or its result expired), or media URLs
  that answer 403/404/410 (their lifetime ran out): `ResultLost`.
- Transport failures of a submit whose request was sent are `UnknownOutcome` (fal lists no requests, so such a
  submit cannot be recovered, only recorded as possibly billed); those of polls are plain `TransientError`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from pixelmill.errors import (
    FatalError,
    InputError,
    ProviderError,
    Refused,
    Rejected,
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
from pixelmill.providers.boundary import field, malformed, number, obj, scrub_error, scrub_result, seq, text
from pixelmill.providers.fal.errors import error_from_reply, job_error, request_id_of
from pixelmill.providers.fal.params import model_inputs, plan_fal
from pixelmill.providers.http import EMULATOR_HEADER
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

__all__ = ["DEFAULT_BASE_URL", "MEDIA_RETENTION_S", "FalProvider"]

DEFAULT_BASE_URL = "https://queue.fal.run"
MEDIA_RETENTION_S = 2 * 24 * 3600  # two days: a crash at night, a resume the next day
_SMALL_ANSWER = 1 << 20  # submit, status and cancel answers: JSON of a few hundred bytes
_PENDING = ("IN_QUEUE", "IN_PROGRESS")
_CANCEL_WORDS = {"OK": "cancelled", "CANCELLATION_REQUESTED": "requested", "ALREADY_COMPLETED": "already_completed",
                 "NOT_FOUND": "not_found"}


class FalProvider(KeyedJobProvider):
    """fal's queue (`https://queue.fal.run`), or a server given with --base-url that speaks it."""

    name: ClassVar[str] = "fal"
    family = "fal"
    key_variables = ("FAL_KEY", "DF_API_KEY")
    key_where = "keys are made at https://fal.ai/dashboard/keys"
    display = "fal"
    other_model = "give fal's endpoint id"

    def base_url_of(self, settings: ProviderSettings, env: Mapping[str, str]) -> str:
        host = first(env.get("FAL_QUEUE_RUN_HOST"))
        return job_base_url(first(settings.base_url) or (f"https://{host}" if host else DEFAULT_BASE_URL),
                            provider="fal", example=DEFAULT_BASE_URL)

    def key_parts(self) -> tuple[str, ...]:
        return tuple(self._key.split(":")) if ":" in self._key else ()

    def plan(self, spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
        return plan_fal(spec, params, task)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Key {self._key}"}

    # ------------------------------------------------------------ submit

    async def submit(self, request: ImageRequest, spec: ModelSpec) -> JobHandle:
        try:
            return await self._submit(request, spec)
        except ProviderError as exc:
            raise scrub_error(exc, self.secrets()) from exc.__cause__

    async def _submit(self, request: ImageRequest, spec: ModelSpec) -> JobHandle:
        label = self._label(request.model)
        body = self.request_body(request, spec)
        headers = {
            **self._headers(), "Content-Type": "application/json",
            "X-Fal-Object-Lifecycle-Preference": orjson.dumps(
                {"expiration_duration_seconds": MEDIA_RETENTION_S}).decode(),
            "X-Fal-Store-IO": "1",
        }
        reply = await self._http.send("POST", f"{self.base_url}/{quote(request.model, safe='/')}",
                                      data=orjson.dumps(body), headers=headers, time_limit=request.timeout,
                                      max_bytes=_SMALL_ANSWER, label=label)
        if not 200 <= reply.status < 300:
            raise error_from_reply(reply, label=label, model=request.model, secrets=self.secrets())
        request_id = request_id_of(reply.headers)
        answer = submit_answer(reply, label=label, request_id=request_id)
        job_id = text(answer.get("request_id"))
        if job_id is None:
            raise UnknownOutcome(f"{label}: the submit was accepted (HTTP {reply.status}) but its answer names no "
                                 "request_id, so the job cannot be polled: it may have been billed",
                                 http_status=reply.status, request_id=request_id)
        urls = {name: url for name in ("status", "response", "cancel")
                if (url := text(answer.get(f"{name}_url"))) is not None}
        if "status" not in urls or "response" not in urls:
            urls = {**_built_urls(self.base_url, request.model, job_id), **urls}
        data: dict[str, Any] = {"model": request.model, "images": _asked(request)}
        if reply.headers.get(EMULATOR_HEADER):
            data["emulated"] = strip_userinfo(self.base_url)
        return JobHandle(job_id, urls, time.time(), data)

    def request_body(self, request: ImageRequest, spec: ModelSpec) -> dict[str, Any]:
        """The job's input: the prompt, the planned parameters and, for an edit, the input image (its URL when
        the row gave one and it was sent as read, else a data URI)."""
        check_prompt(spec, request.prompt)
        body: dict[str, Any] = {"prompt": request.prompt, **request.params}
        if request.task == "generate":
            return body
        image_field = model_inputs(spec).image_field
        if image_field is None:
            raise InputError(f"{spec.name} takes no input image", field="images")
        if not request.images:
            raise InputError(f"{request.task} needs an input image: the row has none", field="images")
        if len(request.images) > max(1, spec.max_input_images):
            raise InputError(f"{spec.name} takes {max(1, spec.max_input_images)} input image(s); the row has "
                             f"{len(request.images)}", field="images")
        image = request.images[0]
        body[image_field] = image.url if image.url and image.url.startswith("https://") else data_uri(image)
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

    async def _get(self, handle: JobHandle, which: str, label: str, max_bytes: int,
                   time_limit: float = 60.0) -> Any:
        """GET one of the job's URLs with the key; `ResultLost` (as a status) when it is not fal's."""
        url = handle.urls.get(which)
        if url is None or not provider_url(url, self.base_url):
            return JobStatus("failed", error=ResultLost(
                f"{label}: the job's {which} URL is missing or names a host that is not fal's API (the base URL "
                f"{strip_userinfo(self.base_url)}): pixelmill does not send the key there, so job {handle.id} "
                "(paid) cannot be collected; --retry-failed pays again", request_id=handle.id))
        try:
            return await self._http.send("GET", url, headers=self._headers(), time_limit=time_limit,
                                         max_bytes=max_bytes, label=label)
        except TransientError as exc:
            raise quiet_poll(exc) from exc

    async def _poll(self, handle: JobHandle, spec: ModelSpec) -> JobStatus:
        model = str(handle.data.get("model") or spec.name)
        label = self._label(model)
        reply = await self._get(handle, "status", label, _SMALL_ANSWER)
        if isinstance(reply, JobStatus):
            return reply
        if reply.status in (404, 410):
            return JobStatus("failed", error=_lost(label, handle, reply.status, "fal no longer knows the job"))
        if not 200 <= reply.status < 300:
            raise self._poll_error(reply, label, model)
        answer = poll_answer(reply, label=label, request_id=handle.id)
        state = text(answer.get("status")) or "?"
        if state in _PENDING:
            position = number(answer.get("queue_position"))
            return JobStatus("pending", detail=state + (f" position {position:g}" if position is not None else ""))
        if state != "COMPLETED":
            if state in ("CANCELED", "CANCELLED"):
                return JobStatus("failed", detail=state, error=Rejected(
                    f"{label}: job {handle.id} was cancelled", request_id=handle.id, code="cancelled"))
            return JobStatus("failed", detail=state, error=TransientError(
                f"{label}: job {handle.id} ended in status {state[:40]!r}", request_id=handle.id, code=state[:40]))
        error = answer.get("error")
        if error:
            said = text(error) or orjson.dumps(error).decode()[:400]
            return JobStatus("failed", detail=state,
                             error=job_error(said, text(answer.get("error_type")), label=label, request_id=handle.id))
        return await self._collect(handle, spec, label, model)

    def _poll_error(self, reply: Any, label: str, model: str) -> ProviderError:
        """A status or result answer that is an error: a key problem stops the run; the rest is polled again."""
        error = error_from_reply(reply, label=label, model=model, secrets=self.secrets(), submit=False)
        if isinstance(error, FatalError):
            return error
        return TransientError(f"{label}: polling answered HTTP {reply.status}; polling again ({error})",
                              http_status=reply.status, request_id=error.request_id)

    async def _collect(self, handle: JobHandle, spec: ModelSpec, label: str, model: str) -> JobStatus:
        asked = int(handle.data.get("images") or 1)
        limit = max(1, asked) * (self.settings.max_download_bytes // 64 + 65536)  # URLs, or data URIs at most
        reply = await self._get(handle, "response", label, max(limit, _SMALL_ANSWER))
        if isinstance(reply, JobStatus):
            return reply
        if reply.status in (404, 410):
            return JobStatus("failed", error=_lost(label, handle, reply.status, "its result has expired"))
        if reply.status >= 500 or reply.status == 429:
            raise self._poll_error(reply, label, model)
        if not 200 <= reply.status < 300:
            error = error_from_reply(reply, label=label, model=model, secrets=self.secrets(), submit=False)
            if isinstance(error, FatalError):
                raise error
            return JobStatus("failed", detail="COMPLETED", error=error)  # the model's own error, repeated
        answer = poll_answer(reply, label=label, request_id=handle.id)
        try:
            result = await self._result(answer, handle, asked, label)
        except Refused as exc:  # the job ended: no image to give (a broken answer raises, and is polled again)
            return JobStatus("failed", detail="COMPLETED", error=exc)
        except MediaGone as exc:
            return JobStatus("failed", detail="COMPLETED", error=_lost(label, handle, exc.http_status or 404,
                                                                       "its images' URLs have expired"))
        if reply.headers.get(EMULATOR_HEADER) or handle.data.get("emulated"):
            result.extra["emulated"] = strip_userinfo(self.base_url)
        return JobStatus("done", result=result, detail="COMPLETED")

    async def _result(self, answer: dict[str, Any], handle: JobHandle, asked: int, label: str) -> ImageResult:
        items = field(answer, "images", list, label=label, request_id=handle.id)
        if items is None:
            image = obj(answer.get("image"))  # a few endpoints answer one `image`
            items = [image] if image else None
        if not items:
            raise Refused(f"{label}: job {handle.id} completed with no image (no reason given); not retried",
                          reason="no_image", request_id=handle.id)
        flags = seq(answer.get("has_nsfw_concepts"))
        images: list[GeneratedImage] = []
        dropped = 0
        for index, item in enumerate(items[:asked]):
            if index < len(flags) and flags[index] is True:
                dropped += 1
                continue
            url = text(obj(item).get("url"))
            if url is None:
                raise malformed(label, "an image has no `url`", handle.id)
            data, mime = await fetch_media(self._http, url, time_limit=120.0,
                                           max_bytes=self.settings.max_download_bytes,
                                           trusted_origin=self.base_url, label=label, request_id=handle.id)
            images.append(GeneratedImage(data, mime))
        if not images:
            raise Refused(f"{label}: fal's safety checker flagged every image of job {handle.id} "
                          "(has_nsfw_concepts); not retried. Rephrase the prompt, or pass --param "
                          "enable_safety_checker=false / a higher safety_tolerance where the model takes it",
                          reason="nsfw_concepts", request_id=handle.id)
        extra: dict[str, Any] = {"request_id": handle.id}
        seed = number(answer.get("seed"))
        if seed is not None:
            extra["seed"] = int(seed)
        if dropped:
            extra["nsfw_dropped"] = dropped
        if len(items) > asked:
            extra["surplus_images"] = len(items) - asked
        return ImageResult(images=images, request_id=handle.id, extra=extra)

    # ------------------------------------------------------------ cancel

    async def cancel(self, handle: JobHandle, spec: ModelSpec) -> str:
        label = self._label(str(handle.data.get("model") or spec.name))
        url = handle.urls.get("cancel")
        if url is None or not provider_url(url, self.base_url):
            return "not_found"
        try:
            reply = await self._http.send("PUT", url, headers=self._headers(), time_limit=60.0,
                                          max_bytes=_SMALL_ANSWER, label=label)
        except TransientError as exc:
            raise scrub_error(quiet_poll(exc), self.secrets()) from exc
        if reply.status in (404, 410):
            return "not_found"
        if reply.status in (401, 403) or reply.status >= 500:
            raise scrub_error(error_from_reply(reply, label=label, model=label, secrets=self.secrets(),
                                               submit=False), self.secrets())
        try:
            word = text(obj(orjson.loads(reply.body)).get("status")) or ""
        except orjson.JSONDecodeError:
            word = ""
        return _CANCEL_WORDS.get(word, "requested" if reply.status < 300 else "not_found")


def _asked(request: ImageRequest) -> int:
    value = request.params.get("num_images")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _built_urls(base: str, model: str, job_id: str) -> dict[str, str]:
    """The URLs fal documents, for an answer that left them out: under owner/app, not the full model id."""
    parts = model.split("/")
    app = "/".join(parts[:3] if parts[0] in ("workflows", "comfy") else parts[:2])
    root = f"{base}/{quote(app, safe='/')}/requests/{quote(job_id, safe='')}"
    return {"status": f"{root}/status", "response": root, "cancel": f"{root}/cancel"}


def _lost(label: str, handle: JobHandle, status: int, why: str) -> ResultLost:
    return ResultLost(f"{label}: job {handle.id} was submitted and paid, but {why} (HTTP {status}): its result is "
                      "lost; --retry-failed pays for a new one", http_status=status, request_id=handle.id)
