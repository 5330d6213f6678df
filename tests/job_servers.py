"""Scripted loopback servers for the remote-job providers' tests (fal's queue, BFL): each test writes the answers
(`Canned`, from the reliability suite) route by route, and reads back every request the server saw, headers
included (to check where the key went). Run in the test's own event loop (`async with FalServer() as s`).

- `FalServer`: `POST /{model id}` (submit), `GET /{owner}/{app}/requests/{id}/status`, `GET .../requests/{id}`
  (result), `PUT .../requests/{id}/cancel`, `GET /media/{name}` (the image, no key needed).
- `BflServer`: `POST /v1/{model}` (submit), `GET /v1/get_result?id=` (poll), `GET /media/{name}`.
Status answers are taken in order from `statuses` (the last one repeats).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.reliability.hostile_answers import Canned
from tests.reliability.hostile_servers import LocalServer, png_bytes

PNG = png_bytes((16, 12))
READY = Canned(200, "READY")  # BflServer: a Ready answer with this server's sample URL


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    host: str


@dataclass
class Script:
    submit: Canned | None = None  # None: a good answer built from the server's URL
    statuses: list[Canned] = field(default_factory=list)
    result: Canned | None = None
    cancel: Canned = field(default_factory=lambda: Canned(202, {"status": "CANCELLATION_REQUESTED"}))


class JobServer(LocalServer):
    def __init__(self) -> None:
        super().__init__()
        self.script = Script()
        self.seen: list[Seen] = []
        self.media: dict[str, bytes] = {"a.png": PNG, "b.png": png_bytes((8, 8), (200, 10, 10))}

    async def __aenter__(self) -> JobServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._any)

    async def _any(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, request.query_string, dict(request.headers), body,
                              request.host))
        if request.path.startswith("/media/"):
            data = self.media.get(request.path.removeprefix("/media/"))
            if data is None:
                raise web.HTTPNotFound()
            return web.Response(body=data, content_type="image/png")
        return self.answer(request).response()

    def answer(self, request: web.Request) -> Canned:
        raise NotImplementedError

    def next_status(self) -> Canned:
        statuses = self.script.statuses
        return statuses.pop(0) if len(statuses) > 1 else statuses[0]

    def api(self, path: str = "") -> list[Seen]:
        return [s for s in self.seen if not s.path.startswith("/media/") and s.path.startswith(path)]

    def media_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith("/media/")]


class FalServer(JobServer):
    request_id = "6c0c7f6e-2a4b-4a5e-9d8e-0a1b2c3d4e5f"

    def __init__(self) -> None:
        super().__init__()
        self.script.statuses = [Canned(202, {"status": "IN_QUEUE", "queue_position": 2}),
                                Canned(202, {"status": "IN_PROGRESS"}),
                                Canned(200, {"status": "COMPLETED", "metrics": {"inference_time": 0.1}})]

    def urls(self, app: str = "fal-ai/flux", host: str | None = None) -> dict[str, str]:
        root = f"{host or self.url}/{app}/requests/{self.request_id}"
        return {"status_url": f"{root}/status", "response_url": root, "cancel_url": f"{root}/cancel"}

    def result_body(self, *names: str, nsfw: list[bool] | None = None) -> dict[str, Any]:
        names = names or ("a.png",)
        return {"images": [{"url": f"{self.url}/media/{n}", "width": 16, "height": 12, "content_type": "image/png"}
                           for n in names],
                "seed": 7, "has_nsfw_concepts": nsfw if nsfw is not None else [False] * len(names),
                "prompt": "p", "timings": {"inference": 0.1}}

    def answer(self, request: web.Request) -> Canned:
        path = request.path
        if request.method == "POST":
            app = "/".join(path.strip("/").split("/")[:2])
            return self.script.submit or Canned(200, {"status": "IN_QUEUE", "request_id": self.request_id,
                                                      "queue_position": 0, **self.urls(app)})
        if request.method == "PUT":
            return self.script.cancel
        if path.endswith("/status"):
            return self.next_status()
        return self.script.result or Canned(200, self.result_body())


class BflServer(JobServer):
    task_id = "5b7e0c1e-8c43-4e7a-b2a1-2f3c9d0e1a44"

    def __init__(self) -> None:
        super().__init__()
        self.polling_host: str | None = None  # another host name for this server, in polling URLs
        self.script.statuses = [Canned(200, {"id": self.task_id, "status": "Pending", "progress": 0.4}),
                                READY]

    def ready(self, name: str = "a.png") -> dict[str, Any]:
        return {"id": self.task_id, "status": "Ready", "result": {"sample": f"{self.url}/media/{name}", "seed": 7}}

    def answer(self, request: web.Request) -> Canned:
        if request.method == "POST":
            host = self.polling_host or self.url
            return self.script.submit or Canned(200, {"id": self.task_id, "cost": 4.0,
                                                      "polling_url": f"{host}/v1/get_result?id={self.task_id}"})
        status = self.next_status()
        return Canned(200, self.ready()) if status is READY else status
