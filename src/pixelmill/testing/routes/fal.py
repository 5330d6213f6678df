"""fal's queue API: submit at the full model id, status, result and cancel under `owner/app`, media on a CDN path.

    POST /{model_id}                         -> 200 {status: IN_QUEUE, request_id, response_url, status_url,
                                                     cancel_url, queue_position}
    GET  /{owner/app}/requests/{id}/status   -> 202 IN_QUEUE (queue_position) | IN_PROGRESS; 200 COMPLETED
                                                (metrics; error/error_type when the request failed)
    GET  /{owner/app}/requests/{id}          -> the model's answer: 200 {images[], seed, has_nsfw_concepts, prompt,
                                                timings}, or its error; 400 before completion; 404 once expired
    PUT  /{owner/app}/requests/{id}/cancel   -> 200 OK (queued) | 202 CANCELLATION_REQUESTED (running) |
                                                400 ALREADY_COMPLETED | 404 NOT_FOUND
    GET  /fal-cdn/files/{name}               -> the image bytes, no key needed (fal's v3.fal.media)

The key is `Authorization: Key <key>`. The server routes a POST to an unknown path here when it carries a `Key`
scheme or names a fal namespace (`fal-ai/...`), so submits share the port with the other APIs.
Running requests count toward `fal_concurrency`; the rest wait IN_QUEUE (fal queues instead of refusing).
Results are kept `1 h` after completion, `6 min` when the result is 10 KB or more (sync_mode data URIs), both
times `retention_scale`; media live for `X-Fal-Object-Lifecycle-Preference: {"expiration_duration_seconds": N}`
when the submit asks, else 7 days (UNCONFIRMED default), times `retention_scale`.
Prompt markers: refusals (`moderation`, `image_safety`, `prompt_blocked`) give a black image with
`has_nsfw_concepts: [true]`; `job_failed` ends COMPLETED with `error`/`error_type`; the other faults hit the
submit's answer (a `reset`, `truncated` or `malformed` submit still creates the request: its answer was lost).
UNCONFIRMED and chosen here: the submit's 200, the 400/404 result answers, the cancel status codes, a cancelled
request's COMPLETED with `error_type: request_cancelled`, and that status stays answerable after the result
expired.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from pixelmill.testing import wire_errors as we
from pixelmill.testing.exchange import EMULATOR_HEADER, STATUS_OF_FAULT, admit, exchange, media_response, send, tag
from pixelmill.testing.faults import NO_MARKERS, read_markers
from pixelmill.testing.images import colour_for
from pixelmill.testing.jobs import Job
from pixelmill.testing.state import EmulatorState
from pixelmill.testing.validation.fal import FalJob, app_base, build_job

NAMESPACES = ("fal-ai", "workflows", "comfy")  # first path segments that are fal's without a `Key` header
REFUSALS = frozenset({"moderation", "image_safety", "prompt_blocked"})
RESULT_RETENTION = 3600.0
LARGE_RESULT_RETENTION = 360.0
LARGE_RESULT = 10 * 1024
MEDIA_LIFETIME = 7 * 24 * 3600.0  # UNCONFIRMED default; signed URLs last up to 7 days
LIFECYCLE_HEADER = "X-Fal-Object-Lifecycle-Preference"


def register(app: web.Application, state: EmulatorState) -> FalRoutes:
    """Add status, result, cancel and media. Submits come through the server's POST catch-all (`wants`)."""
    routes = FalRoutes(state)
    state.jobs["fal"].finish = routes.finish
    app.router.add_get("/fal-cdn/files/{name}", routes.media)
    app.router.add_get("/{base:.+}/requests/{id}/status", routes.status)
    app.router.add_put("/{base:.+}/requests/{id}/cancel", routes.cancel)
    app.router.add_get("/{base:.+}/requests/{id}", routes.result)
    return routes


def wants(request: web.Request) -> bool:
    """Whether a POST to a path no other API owns is a fal submit."""
    scheme = request.headers.get("Authorization", "")[:4].lower()
    return scheme == "key " or request.path.lstrip("/").split("/", 1)[0] in NAMESPACES


def key_of(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:4].lower() == "key ":
        return header[4:].strip() or None
    return None


class FalRoutes:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def _auth(self, request: web.Request) -> None:
        record = exchange(request).record
        key = key_of(request)
        if self.state.check_key(key):
            record.auth = "valid"
            return
        record.auth = "invalid" if key else "missing"
        raise we.fal_auth(bool(key))

    # ------------------------------------------------------------ submit

    async def submit(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        record = tag(request, "fal", "submit")
        model_id = request.path.strip("/")
        record.model = model_id
        self._auth(request)
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise we.fal_validation([], "JSON decode error", "json_invalid") from None
        if isinstance(body, dict) and isinstance(body.get("prompt"), str):
            record.prompt = body["prompt"][:1000]
        job_input = build_job(model_id, body)
        record.n, record.size, record.output_format = job_input.n, job_input.size_asked, job_input.format
        record.input_images = int(job_input.input_image)
        markers = read_markers(job_input.prompt)
        decision = await admit(state, request, images=job_input.n, markers=dataclasses.replace(markers, latency=None),
                               fault_error=_fault_error, rate_limited=_rate_limited)
        job = self._new_job(request, model_id, job_input, body, state.job_latency(markers), decision.fault)
        record.job = job.id
        return send(request, {"status": "IN_QUEUE", "request_id": job.id, **job.data["urls"],
                              "queue_position": state.jobs["fal"].position(job)}, decision)

    def _new_job(self, request: web.Request, model_id: str, job_input: FalJob, body: dict[str, Any],
                 latency: float, fault: str | None) -> Job:
        config = self.state.config
        job_id = str(uuid.uuid4())
        origin = str(request.url.origin())
        base = f"{origin}/{app_base(model_id)}/requests/{job_id}"
        job = Job(id=job_id, family="fal", model=model_id, prompt=job_input.prompt, input=body,
                  submitted=time.monotonic(), created_wall=time.time(), latency=latency,
                  queue_time=config.job_queue_time)
        if fault in REFUSALS:
            job.refusal = fault
        elif fault == "job_failed":
            job.outcome = "failed"
            job.error, job.error_type = "The runner disconnected while processing the request", "runner_disconnected"
        job.data.update(urls={"response_url": base, "status_url": base + "/status", "cancel_url": base + "/cancel"},
                        base=app_base(model_id), origin=origin, spec=job_input,
                        media_lifetime=_lifecycle(request.headers.get(LIFECYCLE_HEADER)))
        return self.state.jobs["fal"].add(job)

    def finish(self, job: Job) -> None:
        """Build a finished request's result (called once, when the job ends)."""
        config = self.state.config
        end = job.finished or time.monotonic()
        if job.phase in ("canceled", "aborted"):
            job.error, job.error_type = "Request was cancelled", "request_cancelled"
        if job.phase != "succeeded":
            job.result_expires = end + RESULT_RETENTION * config.retention_scale
            return
        spec: FalJob = job.data["spec"]
        lifetime = job.data["media_lifetime"] or MEDIA_LIFETIME
        images = []
        for index in range(spec.n):
            colour = (0, 0, 0) if job.refusal else colour_for(f"{spec.prompt}#{index}")
            image = self.state.images.get(spec.width, spec.height, spec.format, colour, pad_to=config.image_bytes)
            if spec.sync_mode:
                url = f"data:{image.mime};base64,{image.b64}"
            else:
                name = self.state.media.put(image.data, image.mime, spec.format,
                                            end + lifetime * config.retention_scale)
                url = f"{job.data['origin']}/fal-cdn/files/{name}"
                job.data.setdefault("media", []).append(name)
            images.append({"url": url, "width": spec.width, "height": spec.height, "content_type": image.mime})
        job.result = {"images": images, "seed": spec.seed if spec.seed is not None else 42,
                      "has_nsfw_concepts": [job.refusal is not None] * spec.n, "prompt": spec.prompt,
                      "timings": {"inference": round(job.latency, 3)}}
        size = len(orjson.dumps(job.result))
        keep = LARGE_RESULT_RETENTION if size >= LARGE_RESULT else RESULT_RETENTION
        job.result_expires = end + keep * config.retention_scale

    # ------------------------------------------------------------ status, result, cancel

    def _job(self, request: web.Request, endpoint: str) -> Job | None:
        record = tag(request, "fal", endpoint)
        job_id = request.match_info["id"]
        record.job = job_id
        self._auth(request)
        job = self.state.jobs["fal"].get(job_id)
        if job is None or job.data["base"] != request.match_info["base"]:
            return None
        record.model, record.prompt = job.model, job.prompt[:1000]
        return job

    async def _admit(self, request: web.Request) -> None:
        await admit(self.state, request, images=0, markers=NO_MARKERS, fault_error=_fault_error,
                    rate_limited=_rate_limited)

    async def status(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request, "status")
        await self._admit(request)
        if job is None:
            raise we.fal_request_error(404, "Request not found", "request_not_found")
        job = self.state.jobs["fal"].get(job.id) or job  # advanced to after the admit's wait
        logs: list[dict[str, Any]] | None = [] if request.query.get("logs") in ("1", "true", "True") else None
        body: dict[str, Any] = {"request_id": job.id, **job.data["urls"], "logs": logs}
        if job.phase == "queued":
            body.update(status="IN_QUEUE", queue_position=self.state.jobs["fal"].position(job))
        elif job.phase == "running":
            body["status"] = "IN_PROGRESS"
        else:
            body.update(status="COMPLETED", metrics={"inference_time": round(job.latency, 3)})
            if job.error is not None:
                body.update(error=job.error, error_type=job.error_type)
        return _json(request, body, 202 if job.phase in ("queued", "running") else 200)

    async def result(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request, "result")
        await self._admit(request)
        if job is None:
            raise we.fal_request_error(404, "Request not found", "request_not_found")
        job = self.state.jobs["fal"].get(job.id) or job
        if not job.done:
            raise we.fal_request_error(400, "Request is still in progress", "request_in_progress")
        if job.expired(time.monotonic()):
            raise we.fal_request_error(404, "Request result has expired: results are kept 1 hour after completion "
                                       "(6 minutes when 10 KB or more)", "result_expired")
        if job.result is None:
            status = 400 if job.error_type == "request_cancelled" else 503
            raise we.fal_request_error(status, job.error or "Request failed", job.error_type or "internal_error")
        exchange(request).record.images = len(job.result["images"])
        return _json(request, job.result, 200)

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request, "cancel")
        await self._admit(request)
        if job is None:
            return _json(request, {"status": "NOT_FOUND"}, 404)
        if job.done:
            return _json(request, {"status": "ALREADY_COMPLETED"}, 400)
        was = job.phase
        self.state.jobs["fal"].cancel(job.id)
        # A queued request leaves the queue; a running one gets the signal, and the emulated app stops at once.
        return _json(request, {"status": "OK"} if was == "queued" else {"status": "CANCELLATION_REQUESTED"},
                     200 if was == "queued" else 202)

    async def media(self, request: web.Request) -> web.StreamResponse:
        return media_response(self.state, request, "fal")


def _json(request: web.Request, body: dict[str, Any], status: int) -> web.Response:
    record = exchange(request).record
    data = orjson.dumps(body)
    record.bytes_out = len(data)
    record.status = status
    return web.Response(body=data, status=status, content_type="application/json",
                        headers={"x-fal-request-id": record.job or record.id, EMULATOR_HEADER: "1"})


def _lifecycle(header: str | None) -> float | None:
    """`{"expiration_duration_seconds": N}` -> N; anything else is ignored, as a CDN preference would be."""
    if not header:
        return None
    try:
        value = orjson.loads(header)
    except orjson.JSONDecodeError:
        return None
    seconds = value.get("expiration_duration_seconds") if isinstance(value, dict) else None
    return float(seconds) if isinstance(seconds, int | float) and seconds > 0 else None


def _fault_error(fault: str, _hint: float | None) -> we.WireError | None:
    if fault == "auth":
        return we.fal_auth(True)
    if fault == "quota":
        return we.WireError(403, {"detail": "User is locked. Reason: Exhausted balance. Top up your balance at "
                                            "fal.ai/dashboard/billing."}, code="exhausted_balance")
    if fault in STATUS_OF_FAULT:
        return we.fal_server(STATUS_OF_FAULT[fault])
    return None  # refusals and job_failed are the job's fate, not the answer's


def _rate_limited(retry_after: float | None, _what: str) -> we.WireError:
    err = we.fal_request_error(429, "Rate limit exceeded", "rate_limited")
    if retry_after is not None:
        err.headers["Retry-After"] = str(max(1, round(retry_after)))
    return err
