"""Replicate's predictions API: both create routes, get, cancel, list; outputs on a delivery path.

    POST /v1/models/{owner}/{name}/predictions   {input}            -> 201 prediction
    POST /v1/predictions                         {version, input}   -> 201 prediction
    GET  /v1/predictions/{id}                                       -> prediction
    POST /v1/predictions/{id}/cancel                                -> prediction (canceled)
    GET  /v1/predictions[?cursor=]               -> {next, previous, results} (newest first, 100 a page)
    GET  /replicate-delivery/{name}              -> the output's bytes, no key needed (replicate.delivery)

The key is `Authorization: Bearer <token>` (or the older `Token <token>`). `Prefer: wait[=N]` (N 1-60, bare:
60) holds the create until the prediction ends or N seconds pass, and then answers the prediction as it is,
finished or not. `Cancel-After: <duration>` (`30s`, `10m`, `1h30m`, `500ms`) is the deadline: reached while
`starting` the prediction becomes `aborted`, while `processing` it becomes `canceled`. Statuses: `starting`
(queued), `processing`, `succeeded`, `failed`, `canceled`, `aborted`. `retention_scale` x 1 h after completion
the data goes: `data_removed: true`, `output: null`, `input: {}`, and the output URLs answer 404.
flux-schnell/dev answer an array of URIs, flux-1.1-pro one URI. A refusal marker (`moderation`, `image_safety`,
`prompt_blocked`) or `job_failed` ends the prediction `failed` with `error` set (a model failure is not an HTTP
error). API errors are problem details `{type, title, status, detail}`; the 429 is a bare
`{"detail": "Request was throttled. ..."}`.
UNCONFIRMED and chosen here: the 201, the 422 `invalid_fields`, the removal of `input`, and the page size.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import math
import re
import secrets
import time
from typing import Any

import orjson
from aiohttp import web

from pixelmill.testing import wire_errors as we
from pixelmill.testing.exchange import EMULATOR_HEADER, STATUS_OF_FAULT, admit, exchange, media_response, send, tag
from pixelmill.testing.faults import NO_MARKERS, Decision, read_markers
from pixelmill.testing.images import colour_for
from pixelmill.testing.jobs import Job
from pixelmill.testing.state import EmulatorState
from pixelmill.testing.validation.replicate import ReplicateJob, build_job, resolve

RETENTION = 3600.0
PAGE_SIZE = 100
MAX_WAIT = 60
REFUSALS = frozenset({"moderation", "image_safety", "prompt_blocked"})
NSFW_ERROR = "All generated images contained NSFW content. Try running it again with a different prompt."
FAILED_ERROR = "Prediction interrupted; please retry (code: PA)"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_FORMAT = {"webp": ("webp", "image/webp"), "jpg": ("jpeg", "image/jpeg"), "png": ("png", "image/png")}


def register(app: web.Application, state: EmulatorState) -> ReplicateRoutes:
    routes = ReplicateRoutes(state)
    state.jobs["replicate"].finish = routes.finish
    app.router.add_post("/v1/models/{owner}/{name}/predictions", routes.create_for_model)
    app.router.add_post("/v1/predictions", routes.create)
    app.router.add_get("/v1/predictions", routes.list)
    app.router.add_get("/v1/predictions/{id}", routes.get)
    app.router.add_post("/v1/predictions/{id}/cancel", routes.cancel)
    app.router.add_get("/replicate-delivery/{name}", routes.media)
    return routes


def token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() in ("bearer", "token") else None


class ReplicateRoutes:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def _auth(self, request: web.Request) -> None:
        record = exchange(request).record
        key = token(request)
        if self.state.check_key(key):
            record.auth = "valid"
            return
        record.auth = "invalid" if key else "missing"
        detail = "You did not pass a valid authentication token" if key else "You did not pass an authentication token"
        raise we.replicate_problem(401, "Unauthenticated", detail)

    # ------------------------------------------------------------ create

    async def create_for_model(self, request: web.Request) -> web.StreamResponse:
        return await self._create(request, f"{request.match_info['owner']}/{request.match_info['name']}")

    async def create(self, request: web.Request) -> web.StreamResponse:
        return await self._create(request, None)

    async def _create(self, request: web.Request, owner_name: str | None) -> web.StreamResponse:
        state = self.state
        record = tag(request, "replicate", "submit")
        self._auth(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise we.replicate_problem(400, "Invalid JSON", "The request body is not valid JSON.") from None
        given = body.get("input") if isinstance(body, dict) else None
        if isinstance(given, dict) and isinstance(given.get("prompt"), str):
            record.prompt = given["prompt"][:1000]
        model, version = resolve(owner_name, body.get("version") if isinstance(body, dict) else None)
        record.model = model.name
        job_input = build_job(model, version, body)
        record.n, record.output_format = job_input.n, job_input.format
        record.size = f"{job_input.width}x{job_input.height}"
        record.input_images = int(model.edit_field is not None)
        wait = _prefer_wait(request.headers.get("Prefer"))
        deadline = _cancel_after(request.headers.get("Cancel-After"))
        markers = read_markers(job_input.prompt)
        decision = await admit(state, request, images=job_input.n, markers=dataclasses.replace(markers, latency=None),
                               fault_error=_fault_error, rate_limited=_rate_limited)
        job = self._new_job(request, job_input, state.job_latency(markers), decision.fault, deadline)
        record.job = job.id
        if wait:
            until = time.monotonic() + wait
            while not job.done and time.monotonic() < until:
                await _sleep_towards(job, until)
                job = state.jobs["replicate"].get(job.id) or job
        return self._answer(request, job, 201, fault=decision.fault)

    def _new_job(self, request: web.Request, job_input: ReplicateJob, latency: float, fault: str | None,
                 deadline: float | None) -> Job:
        now = time.monotonic()
        job_id = _prediction_id()
        origin = str(request.url.origin())
        job = Job(id=job_id, family="replicate", model=job_input.model.name, prompt=job_input.prompt,
                  input=job_input.input, submitted=now, created_wall=time.time(), latency=latency,
                  queue_time=self.state.config.job_queue_time,
                  deadline=None if deadline is None else now + deadline)
        if fault in REFUSALS:
            job.outcome, job.error = "failed", NSFW_ERROR
        elif fault == "job_failed":
            job.outcome, job.error = "failed", FAILED_ERROR
        job.data.update(origin=origin, spec=job_input)
        return self.state.jobs["replicate"].add(job, now)

    def finish(self, job: Job) -> None:
        config = self.state.config
        end = job.finished or time.monotonic()
        job.result_expires = end + RETENTION * config.retention_scale
        if job.phase != "succeeded":
            return
        spec: ReplicateJob = job.data["spec"]
        fmt, _ = _FORMAT[spec.format]
        urls = []
        for index in range(spec.n):
            image = self.state.images.get(spec.width, spec.height, fmt, colour_for(f"{spec.prompt}#{index}"),
                                          pad_to=config.image_bytes)
            name = self.state.media.put(image.data, image.mime, spec.format, job.result_expires)
            urls.append(f"{job.data['origin']}/replicate-delivery/{name}")
        job.result = {"output": urls if spec.model.max_outputs else urls[0]}

    # ------------------------------------------------------------ get, cancel, list

    async def _job(self, request: web.Request, endpoint: str) -> Job:
        record = tag(request, "replicate", endpoint)
        job_id = request.match_info["id"]
        record.job = job_id
        self._auth(request)
        await admit(self.state, request, images=0, markers=NO_MARKERS, fault_error=_fault_error,
                    rate_limited=_rate_limited)
        job = self.state.jobs["replicate"].get(job_id)
        if job is None:
            raise we.replicate_problem(404, "Not found", "The requested resource could not be found.")
        record.model, record.prompt = job.model, job.prompt[:1000]
        return job

    async def get(self, request: web.Request) -> web.StreamResponse:
        return self._answer(request, await self._job(request, "status"), 200)

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        job = await self._job(request, "cancel")
        if not job.done:
            job = self.state.jobs["replicate"].cancel(job.id) or job
        return self._answer(request, job, 200)

    async def list(self, request: web.Request) -> web.StreamResponse:
        tag(request, "replicate", "list")
        self._auth(request)
        await admit(self.state, request, images=0, markers=NO_MARKERS, fault_error=_fault_error,
                    rate_limited=_rate_limited)
        jobs = self.state.jobs["replicate"].jobs()[::-1]  # newest first
        start = _offset(request.query.get("cursor"))
        page = jobs[start:start + PAGE_SIZE]
        origin = str(request.url.origin())
        more = start + PAGE_SIZE < len(jobs)
        body = {"next": f"{origin}/v1/predictions?cursor={_cursor(start + PAGE_SIZE)}" if more else None,
                "previous": f"{origin}/v1/predictions?cursor={_cursor(max(0, start - PAGE_SIZE))}" if start else None,
                "results": [self._prediction(j) for j in page]}
        return _json(request, body, 200)

    async def media(self, request: web.Request) -> web.StreamResponse:
        return media_response(self.state, request, "replicate")

    # ------------------------------------------------------------ the prediction object

    def _answer(self, request: web.Request, job: Job, status: int, *, fault: str | None = None) -> web.StreamResponse:
        prediction = self._prediction(job)
        if isinstance(prediction["output"], list):
            exchange(request).record.images = len(prediction["output"])
        elif prediction["output"]:
            exchange(request).record.images = 1
        if fault in ("reset", "truncated", "malformed"):  # the create happened; its answer is lost or damaged
            return send(request, prediction, Decision(fault, False, 0.0))
        return _json(request, prediction, status)

    def _prediction(self, job: Job) -> dict[str, Any]:
        spec: ReplicateJob = job.data["spec"]
        origin = job.data["origin"]
        phase = {"queued": "starting", "running": "processing"}.get(job.phase, job.phase)
        removed = job.done and job.expired(time.monotonic())
        output = None if removed or job.result is None else job.result["output"]
        body: dict[str, Any] = {
            "id": job.id, "model": job.model, "version": spec.version,
            "input": {} if removed else job.input, "logs": "" if removed or job.phase == "queued" else "Generating\n",
            "output": output, "data_removed": removed, "error": job.error if job.phase == "failed" else None,
            "status": phase, "source": "api",
            "created_at": _rfc3339(job.created_wall),
            "started_at": _rfc3339(job.wall(job.started)),
            "completed_at": _rfc3339(job.wall(job.finished)) if job.done else None,
            "urls": {"get": f"{origin}/v1/predictions/{job.id}", "cancel": f"{origin}/v1/predictions/{job.id}/cancel",
                     "web": f"https://replicate.com/p/{job.id}"},
        }
        if job.deadline is not None:
            body["deadline"] = _rfc3339(job.wall(job.deadline))
        if job.phase == "succeeded":
            body["metrics"] = {"predict_time": round(job.latency, 3),
                               "total_time": round((job.finished or 0) - job.submitted, 3)}
        return body


# ---------------------------------------------------------------- helpers


async def _sleep_towards(job: Job, until: float) -> None:
    step = 0.05
    if job.started is not None:  # running: its end is known
        step = max(0.001, min(job.started + job.latency - time.monotonic(), step * 4))
    await asyncio.sleep(max(0.001, min(step, until - time.monotonic())))


def _prediction_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(26))


def _rfc3339(wall: float | None) -> str | None:
    if wall is None:
        return None
    return dt.datetime.fromtimestamp(wall, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _prefer_wait(header: str | None) -> float:
    """`Prefer: wait` -> 60; `wait=N` -> N (1-60); absent -> 0."""
    if not header:
        return 0.0
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "wait":
            if not value:
                return float(MAX_WAIT)
            try:
                seconds = int(value.strip())
            except ValueError:
                raise we.replicate_problem(400, "Invalid Prefer header",
                                           "Prefer: wait=N takes a whole number of seconds from 1 to 60") from None
            if not 1 <= seconds <= MAX_WAIT:
                raise we.replicate_problem(400, "Invalid Prefer header",
                                           "Prefer: wait=N takes a whole number of seconds from 1 to 60")
            return float(seconds)
    return 0.0


def _cancel_after(header: str | None) -> float | None:
    """`Cancel-After: 1h30m` -> 5400.0 (Go-style durations; the full grammar is UNCONFIRMED)."""
    if header is None:
        return None
    text = header.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise we.replicate_problem(400, "Invalid Cancel-After header",
                                   f"Cancel-After must be a duration such as 30s, 10m or 1h30m, not {text!r}")
    return sum(float(n) * _UNIT[u] for n, u in parts)


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o{offset}".encode()).decode().rstrip("=")


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return max(0, int(text[1:])) if text.startswith("o") else 0
    except (ValueError, UnicodeDecodeError):
        return 0


def _json(request: web.Request, body: dict[str, Any], status: int) -> web.Response:
    record = exchange(request).record
    data = orjson.dumps(body)
    record.bytes_out = len(data)
    record.status = status
    return web.Response(body=data, status=status, content_type="application/json",
                        headers={EMULATOR_HEADER: "1", **exchange(request).rate_headers})


def _fault_error(fault: str, _hint: float | None) -> we.WireError | None:
    if fault == "auth":
        return we.replicate_problem(401, "Unauthenticated", "You did not pass a valid authentication token")
    if fault == "quota":
        return we.replicate_problem(402, "Insufficient credit", "You have insufficient credit to run this model. Go "
                                    "to https://replicate.com/account/billing#billing to purchase credit.")
    if fault in STATUS_OF_FAULT:
        status = STATUS_OF_FAULT[fault]
        return we.replicate_problem(status, "Internal server error" if status == 500 else "Service unavailable",
                                    "The server had an error processing your request.")
    return None


def _rate_limited(retry_after: float | None, _what: str) -> we.WireError:
    return we.replicate_rate_limit(math.ceil(retry_after) if retry_after is not None else None)
