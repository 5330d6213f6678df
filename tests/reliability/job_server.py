"""A scripted submit-and-poll API on loopback and a test-local `JobProvider` that speaks it (`loopjobs`), for the
engine's remote-job tests before (and beside) the real fal, Replicate and BFL providers.

`JobServer`: `POST /jobs` creates a job (done `latency` seconds later) and answers `{id, status_url, cancel_url}`;
`GET /jobs/{id}` says `queued` / `done` (with `media_url`) / `failed` / `refused`; `GET /media/{id}.png` serves the
image without auth; `PUT /jobs/{id}/cancel`; `GET /jobs?since=EPOCH` lists jobs (for `recover`). Per-prompt
behaviour (`script[prompt]`): `fail_once` (the first job fails on the server's side), `refuse`, `drop_answer`
(the job is created, then the connection is closed before the answer: an unknown outcome), `hang` (never done).
`ttl`: seconds a finished job's result is kept (then 404: expired); `forget()` loses every job (a restart).
It counts submits per prompt, polls, and the Authorization header of every media request.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
from aiohttp import web

from pixelmill.errors import AuthError, RateLimited, Refused, Rejected, ResultLost, TransientError, UnknownOutcome
from pixelmill.models.table import ModelSpec, Price, permissive_spec
from pixelmill.params import ImageParams, WirePlan
from pixelmill.providers.base import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    JobHandle,
    JobProvider,
    JobStatus,
    ProviderSettings,
    Task,
)
from tests.reliability.hostile_servers import LocalServer, png_bytes

PNG = png_bytes((8, 8))
PRICE = 0.05  # per image


@dataclass
class Job:
    id: str
    prompt: str
    created: float
    ready: float
    state: str = "queued"  # queued | done | failed | refused | cancelled
    finished: float | None = None


@dataclass
class JobServer(LocalServer):
    latency: float = 0.2
    ttl: float | None = None
    script: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    submits: Counter[str] = field(default_factory=Counter)
    polls: int = 0
    polls_fail: bool = False
    media_auth: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    seen_keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        LocalServer.__init__(self)
        self._ids = itertools.count(1)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/jobs", self.submit)
        app.router.add_get("/jobs", self.listing)
        app.router.add_get("/jobs/{id}", self.status)
        app.router.add_put("/jobs/{id}/cancel", self.cancel)
        app.router.add_get("/media/{id}.png", self.media)

    def forget(self) -> None:
        self.jobs.clear()

    def _job(self, request: web.Request) -> Job:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            raise web.HTTPNotFound(text='{"detail": "no such job"}', content_type="application/json")
        now = time.time()
        if job.state == "queued" and now >= job.ready and self.script.get(job.prompt) != "hang":
            behaviour = self.script.get(job.prompt)
            if behaviour == "fail_once" and self.submits[job.prompt] == 1:
                job.state = "failed"
            elif behaviour == "refuse":
                job.state = "refused"
            else:
                job.state = "done"
            job.finished = now
        if job.finished is not None and self.ttl is not None and now > job.finished + self.ttl:
            raise web.HTTPGone(text='{"detail": "result expired"}', content_type="application/json")
        return job

    def _urls(self, request: web.Request, job: Job) -> dict[str, str]:
        base = f"http://{request.host}"
        return {"status_url": f"{base}/jobs/{job.id}", "cancel_url": f"{base}/jobs/{job.id}/cancel"}

    async def submit(self, request: web.Request) -> web.StreamResponse:
        self.seen_keys.append(request.headers.get("Authorization", ""))
        body = await request.json()
        prompt = str(body.get("prompt", ""))
        self.submits[prompt] += 1
        now = time.time()
        job = Job(f"job-{next(self._ids)}", prompt, now, now + self.latency)
        self.jobs[job.id] = job
        if self.script.get(prompt) == "drop_answer" and self.submits[prompt] == 1:
            assert request.transport is not None
            request.transport.close()  # the job exists; its answer never arrives
            await asyncio.sleep(0.05)
            raise web.HTTPInternalServerError()
        return web.json_response({"id": job.id, **self._urls(request, job)})

    async def listing(self, request: web.Request) -> web.Response:
        since = float(request.query.get("since", 0))
        found = [{"id": j.id, "prompt": j.prompt, "created": j.created, **self._urls(request, j)}
                 for j in self.jobs.values() if j.created >= since]
        return web.json_response({"jobs": found})

    async def status(self, request: web.Request) -> web.Response:
        self.polls += 1
        if self.polls_fail:  # an outage of the status endpoint: every poll answers 503
            return web.json_response({"detail": "service unavailable"}, status=503)
        job = self._job(request)
        answer: dict[str, Any] = {"id": job.id, "status": job.state}
        if job.state == "done":
            answer["media_url"] = f"http://{request.host}/media/{job.id}.png"
        return web.json_response(answer)

    async def cancel(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.state != "queued":
            return web.json_response({"status": "ALREADY_COMPLETED"})
        job.state = "cancelled"
        self.cancelled.append(job.id)
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)

    async def media(self, request: web.Request) -> web.Response:
        self.media_auth.append(request.headers.get("Authorization", ""))
        self._job(request)
        return web.Response(body=PNG, content_type="image/png")


class LoopJobs(JobProvider):
    """A JobProvider for `JobServer`: `--provider loopjobs --base-url <server>`; key from LOOP_KEY."""

    name: ClassVar[str] = "loopjobs"
    family: ClassVar[str] = "fal"

    def __init__(self, settings: ProviderSettings, env: Mapping[str, str]) -> None:
        super().__init__(settings, env)
        self.base_url = (settings.base_url or "").rstrip("/")
        self.key = settings.api_key or env.get("LOOP_KEY", "")
        self._session: aiohttp.ClientSession | None = None

    def spec_for(self, model: str) -> ModelSpec:
        return permissive_spec(model, "fal").model_copy(update={
            "price": Price(per_image={"standard:1024x1024": PRICE}), "known": True})

    def plan(self, spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
        return WirePlan(calls=[{"n": 1}])

    def secrets(self) -> tuple[str, ...]:
        return (self.key,) if self.key else ()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _json(self, method: str, url: str, *, auth: bool = True, **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Key {self.key}"} if auth else {}
        async with self.session.request(method, url, headers=headers, **kw) as response:
            body = await response.json(content_type=None)
            return response.status, body

    async def submit(self, request: ImageRequest, spec: ModelSpec) -> JobHandle:
        try:
            status, body = await self._json("POST", f"{self.base_url}/jobs", json={"prompt": request.prompt})
        except aiohttp.ClientConnectorError as exc:
            raise TransientError(f"cannot connect: {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UnknownOutcome(f"the submit's answer was lost: {type(exc).__name__}") from None
        if status == 401:
            raise AuthError("bad key", http_status=401)
        if status == 429:
            raise RateLimited("slow down", retry_after=1.0, http_status=429)
        if status >= 500:
            raise TransientError(f"server error {status}", http_status=status)
        if status >= 400:
            raise Rejected(f"rejected: {body}", http_status=status)
        return JobHandle(body["id"], {"status": body["status_url"], "cancel": body["cancel_url"]}, time.time())

    async def poll(self, handle: JobHandle, spec: ModelSpec) -> JobStatus:
        try:
            status, body = await self._json("GET", handle.urls["status"])
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"poll failed: {type(exc).__name__}") from None
        if status in (404, 410):
            return JobStatus("failed", error=ResultLost(str(body.get("detail")), http_status=status))
        if status >= 400:
            raise TransientError(f"poll answered {status}", http_status=status)
        state = body["status"]
        if state == "queued":
            return JobStatus("pending", detail=state)
        if state == "failed":
            return JobStatus("failed", error=TransientError(f"job {handle.id} failed on the server"))
        if state == "refused":
            return JobStatus("failed", error=Refused("moderated", reason="moderated"))
        if state == "cancelled":
            return JobStatus("failed", error=Rejected(f"job {handle.id} was cancelled"))
        async with self.session.get(body["media_url"]) as media:  # media URLs never carry the key
            if media.status in (404, 410):
                return JobStatus("failed", error=ResultLost("the media expired", http_status=media.status))
            data = await media.read()
        return JobStatus("done", ImageResult([GeneratedImage(data, "image/png")], request_id=handle.id,
                                             extra={"cost_usd": PRICE}))

    async def cancel(self, handle: JobHandle, spec: ModelSpec) -> str:
        status, body = await self._json("PUT", handle.urls["cancel"])
        return str(body.get("status", status)).lower()

    async def recover(self, request: ImageRequest, spec: ModelSpec, since: float) -> JobHandle | None:
        _, body = await self._json("GET", f"{self.base_url}/jobs", params={"since": str(since)})
        for job in body.get("jobs", []):
            if job["prompt"] == request.prompt:
                return JobHandle(job["id"], {"status": job["status_url"], "cancel": job["cancel_url"]}, time.time())
        return None
