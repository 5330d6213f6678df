"""Black Forest Labs' API: submit per model, poll the `polling_url` it returns, fetch the signed sample.

    POST /v1/{model}              (x-key)  -> 200 {id, polling_url, cost, input_mp, output_mp}
    GET  /v1/get_result?id=       (x-key)  -> 200 {id, status, result, progress, details, preview}
    GET  /bfl-delivery/{name}?se=&sig=     -> the sample's bytes, no key needed; 403 once expired

Model paths all start with `flux-`, which is how they share `/v1/` with OpenAI and Replicate on one port.
The `polling_url` names a sibling host of the submit's, as `api.us1.bfl.ai` is of `api.bfl.ai`: `localhost` for a
submit to `127.0.0.1` and the reverse (or `bfl_polling_host`), so a client that rebuilds the URL from its base
instead of following it, or that drops the key on a sibling host, is caught.
Statuses: `Pending` (queued or running, with `progress`), `Ready` (`result.sample`, `seed`, `prompt`,
`start_time`, `end_time`, `duration`), `Error`, `Request Moderated` (marker `prompt_blocked`),
`Content Moderated` (markers `moderation`, `image_safety`), `Task not found` (unknown id). `job_failed` ends
in `Error`. The sample URL stops working `retention_scale` x 10 min after the task ends.
Limits: `bfl_active_limit` (24) active tasks, 6 for `flux-kontext-max`, then 429; `bfl_credits` (None:
unlimited) spent by each task's `cost`, then 402.
UNCONFIRMED and chosen here: the 401/402/429 bodies (the 429 is the reference's skill example), `Task not
found` as a 200, tasks answerable for the emulator's lifetime, and that moderated tasks are charged.
"""

from __future__ import annotations

import dataclasses
import secrets
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
from pixelmill.testing.validation.bfl import BflJob, build_job

SAMPLE_LIFETIME = 600.0
MODERATED = {"prompt_blocked": "Request Moderated", "moderation": "Content Moderated",
             "image_safety": "Content Moderated"}


def register(app: web.Application, state: EmulatorState) -> BflRoutes:
    routes = BflRoutes(state)
    state.jobs["bfl"].finish = routes.finish
    app.router.add_get("/v1/get_result", routes.get_result)
    app.router.add_post(r"/v1/{model:flux-[A-Za-z0-9.\-]+}", routes.submit)
    app.router.add_get("/bfl-delivery/{name}", routes.media)
    return routes


def sibling(host: str, configured: str | None) -> str:
    """The host a polling URL names: `configured`, else 127.0.0.1 <-> localhost (port kept)."""
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    if configured:
        other = configured
    elif name == "127.0.0.1":
        other = "localhost"
    elif name == "localhost":
        other = "127.0.0.1"
    else:
        other = name
    return f"{other}:{port}" if port and ":" not in other else other


class BflRoutes:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def _auth(self, request: web.Request) -> None:
        record = exchange(request).record
        key = request.headers.get("x-key")
        if self.state.check_key(key):
            record.auth = "valid"
            return
        record.auth = "invalid" if key else "missing"
        raise we.bfl_error(401, "Not authenticated - Invalid Authentication", "unauthorized")

    async def submit(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        record = tag(request, "bfl", "submit")
        name = request.match_info["model"]
        record.model = name
        self._auth(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise we.bfl_validation([], "JSON decode error", "json_invalid") from None
        if isinstance(body, dict) and isinstance(body.get("prompt"), str):
            record.prompt = body["prompt"][:1000]
        job_input = build_job(name, body)
        record.size, record.output_format = f"{job_input.width}x{job_input.height}", job_input.format
        record.input_images, record.n = job_input.input_images, 1
        queue = state.jobs["bfl"]
        config = state.config
        model = job_input.model
        if queue.active() >= config.bfl_active_limit or (
                model.active_limit is not None and queue.active(model=name) >= model.active_limit):
            raise we.WireError(429, {"error": "rate_limit_exceeded", "message": "Too many concurrent requests",
                                     "retry_after": 5}, code="rate_limit_exceeded", headers={"Retry-After": "5"})
        if config.bfl_credits is not None and state.bfl_spent + job_input.cost > config.bfl_credits + 1e-9:
            raise we.bfl_error(402, "Insufficient credits. Please add credits at https://dashboard.bfl.ai/.",
                               "insufficient_credits")
        markers = read_markers(job_input.prompt)
        decision = await admit(state, request, images=1, markers=dataclasses.replace(markers, latency=None),
                               fault_error=_fault_error, rate_limited=_rate_limited)
        job = self._new_job(request, job_input, body, state.job_latency(markers), decision.fault)
        record.job = job.id
        state.bfl_spent += job_input.cost
        polling = f"{request.scheme}://{sibling(request.host, config.bfl_polling_host)}/v1/get_result?id={job.id}"
        return send(request, {"id": job.id, "polling_url": polling, "cost": job_input.cost,
                              "input_mp": round(job_input.input_mp, 4), "output_mp": round(job_input.output_mp, 4)},
                    decision)

    def _new_job(self, request: web.Request, job_input: BflJob, body: dict[str, Any], latency: float,
                 fault: str | None) -> Job:
        job = Job(id=str(uuid.uuid4()), family="bfl", model=job_input.model.name, prompt=job_input.prompt,
                  input=body, submitted=time.monotonic(), created_wall=time.time(), latency=latency,
                  queue_time=self.state.config.job_queue_time)
        if fault in MODERATED:
            job.outcome, job.error_type = "failed", MODERATED[fault]
        elif fault == "job_failed":
            job.outcome, job.error_type, job.error = "failed", "Error", "internal_error"
        job.data.update(origin=f"{request.scheme}://{request.host}", spec=job_input)
        return self.state.jobs["bfl"].add(job)

    def finish(self, job: Job) -> None:
        if job.phase != "succeeded":
            return
        config = self.state.config
        spec: BflJob = job.data["spec"]
        end = job.finished or time.monotonic()
        job.result_expires = end + SAMPLE_LIFETIME * config.retention_scale
        image = self.state.images.get(spec.width, spec.height, spec.format, colour_for(f"{spec.prompt}#0"),
                                      pad_to=config.image_bytes)
        name = self.state.media.put(image.data, image.mime, spec.format, job.result_expires)
        signature = f"se={int(job.created_wall + (job.result_expires - job.submitted))}&sig={secrets.token_hex(8)}"
        start, stop = job.wall(job.started), job.wall(job.finished)
        job.result = {"sample": f"{job.data['origin']}/bfl-delivery/{name}?{signature}",
                      "seed": spec.seed if spec.seed is not None else 42, "prompt": spec.prompt,
                      "start_time": start, "end_time": stop,
                      "duration": None if start is None or stop is None else round(stop - start, 3)}

    async def get_result(self, request: web.Request) -> web.StreamResponse:
        record = tag(request, "bfl", "status")
        job_id = request.query.get("id", "")
        record.job = job_id
        self._auth(request)
        if not job_id:
            raise we.WireError(422, {"detail": [{"loc": ["query", "id"], "msg": "Field required", "type": "missing"}]},
                               code="missing")
        await admit(self.state, request, images=0, markers=NO_MARKERS, fault_error=_fault_error,
                    rate_limited=_rate_limited)
        job = self.state.jobs["bfl"].get(job_id)
        body: dict[str, Any] = {"id": job_id, "status": "Task not found", "result": None, "progress": None,
                                "details": None, "preview": None}
        if job is not None:
            record.model, record.prompt = job.model, job.prompt[:1000]
            if not job.done:
                elapsed = 0.0 if job.started is None else time.monotonic() - job.started
                body.update(status="Pending",
                            progress=round(min(0.99, elapsed / job.latency), 2) if job.latency > 0 else 0.0)
            elif job.phase == "succeeded":
                body.update(status="Ready", result=job.result)
                record.images = 1
            else:
                body["status"] = job.error_type or "Error"
                if body["status"] == "Error":
                    body["details"] = {"error": job.error or "internal_error"}
        data = orjson.dumps(body)
        record.bytes_out, record.status = len(data), 200
        return web.Response(body=data, content_type="application/json",
                            headers={EMULATOR_HEADER: "1", **exchange(request).rate_headers})

    async def media(self, request: web.Request) -> web.StreamResponse:
        # Azure blob storage's answer to an expired SAS signature
        return media_response(self.state, request, "bfl", 403,
                              "AuthenticationFailed: Signed expiry time has passed")


def _fault_error(fault: str, _hint: float | None) -> we.WireError | None:
    if fault == "auth":
        return we.bfl_error(401, "Not authenticated - Invalid Authentication", "unauthorized")
    if fault == "quota":
        return we.bfl_error(402, "Insufficient credits. Please add credits at https://dashboard.bfl.ai/.",
                            "insufficient_credits")
    if fault in STATUS_OF_FAULT:
        return we.bfl_error(STATUS_OF_FAULT[fault], "Internal Server Error", str(STATUS_OF_FAULT[fault]))
    return None


def _rate_limited(retry_after: float | None, _what: str) -> we.WireError:
    seconds = max(1, round(retry_after or 5))
    return we.WireError(429, {"error": "rate_limit_exceeded", "message": "Too many requests", "retry_after": seconds},
                        code="rate_limit_exceeded", headers={"Retry-After": str(seconds)})
