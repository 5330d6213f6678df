"""A loopback server whose answers the test writes: odd shapes, gzip bombs, surplus images, URLs that point
elsewhere, keys reflected back. Served from a thread (pixelmill.testing.ThreadRunner), like hostile_servers.

`ScriptedServer.script[prompt]` is a `Canned` answer, or a function of the key the caller sent that returns one;
prompts not in the script get `default`. `passwords` lists the basic-auth password of each request (from a
base URL with credentials), for answers that reflect it. It speaks OpenAI (`POST /v1/images/generations`) and Gemini
(`POST /v1beta/models/{model}:generateContent`), and serves `GET /files/{name}` (from `files`) and
`GET /redirect?to=URL` (a 302 there).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pybase64
from aiohttp import web

from tests.reliability.hostile_servers import LocalServer, png_bytes

PNG = png_bytes((8, 8))
PNG_B64 = pybase64.b64encode(PNG).decode()


@dataclass
class Canned:
    status: int = 200
    body: Any = None  # bytes as they are; anything else as JSON
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> web.Response:
        body = self.body if isinstance(self.body, bytes) else orjson.dumps(self.body)
        headers = {"Content-Type": "application/json", **self.headers}
        return web.Response(status=self.status, body=body, headers=headers)


Answer = Canned | Callable[[str], Canned]


def openai_image(**extra: Any) -> dict[str, Any]:
    return {"created": 1, "data": [{"b64_json": PNG_B64}], **extra}


def gemini_image(**extra: Any) -> dict[str, Any]:
    return {"candidates": [{"content": {"role": "model", "parts": [
        {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}]}, "finishReason": "STOP"}], **extra}


def gzip_bomb(inflated: int, member: int = 8 << 20) -> bytes:
    """A gzip body of `inflated` zero bytes (about 1/1000 of that on the wire): one member of `member` zeros,
    repeated (gzip readers inflate concatenated members as one stream), so that it is quick to build."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    one = packer.compress(b"\0" * member) + packer.flush()
    return one * (inflated // member)


class ScriptedServer(LocalServer):
    def __init__(self) -> None:
        super().__init__()
        self.script: dict[str, Answer] = {}
        self.default: Answer = Canned(body=openai_image())
        self.files: dict[str, bytes] = {}
        self.passwords: list[str] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/generations", self.openai)
        app.router.add_post("/v1beta/models/{target}", self.gemini)
        app.router.add_get("/files/{name}", self.file)
        app.router.add_get("/redirect", self.redirect)

    def _answer(self, request: web.Request, prompt: str, key: str) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            self.passwords.append(pybase64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")[2])
        answer = self.script.get(prompt, self.default)
        return (answer if isinstance(answer, Canned) else answer(key)).response()

    async def openai(self, request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return self._answer(request, str((await request.json()).get("prompt", "")), key)

    async def gemini(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = " ".join(str(p.get("text", "")) for p in body["contents"][-1]["parts"] if "text" in p)
        return self._answer(request, prompt, request.headers.get("x-goog-api-key", ""))

    async def file(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["name"])
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="image/png")

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])
