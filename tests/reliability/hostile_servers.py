"""Small loopback servers that misbehave on purpose, served from a thread (pixelmill.testing.ThreadRunner):

- `LeakyGateway`: an OpenAI/Gemini-shaped endpoint that echoes the caller's API key into its error messages and
  broken bodies (some real gateways and proxies do), to prove that pixelmill never writes or shows a key it is
  handed back;
- `ImageHost`: serves input images by URL, well and badly: stalls, drips, lies about its size, redirects;
- `BillingGateway`: an OpenAI/Gemini-shaped endpoint that keeps its own bill, bills more than the model table
  predicts when told, reports Gemini usage without a per-modality split, and loses answers after billing
  (resets, hangs), to prove that the budget holds against what a provider actually bills.
- `Throttler`: an OpenAI/Gemini-shaped endpoint that answers 429 with a chosen Retry-After (zero, negative, in
  the past, absurd or garbage; Gemini: a chosen `RetryInfo.retryDelay`) to the first `refusals` requests of
  each prompt (None: to every request), then an image.
"""

from __future__ import annotations

import asyncio
import io
import math
import threading
from typing import Any

import orjson
import pybase64
from aiohttp import web
from PIL import Image


def rebind_dns(monkeypatch: Any, name: str = "images.rebind.example") -> None:
    """DNS rebinding: `name` resolves to a public address the first time, to loopback after (monkeypatched
    `socket.getaddrinfo`); other names resolve as usual."""
    import socket

    real = socket.getaddrinfo
    asked: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == name:
            asked.append(host)
            return real("93.184.216.34" if len(asked) == 1 else "127.0.0.1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)


def png_bytes(size: tuple[int, int] = (64, 64), colour: tuple[int, int, int] = (20, 120, 220)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


class LocalServer:
    """An aiohttp app on a free loopback port; `start`/`stop` as ThreadRunner expects. `hits` lists the paths
    asked for."""

    def __init__(self) -> None:
        self.port = 0
        self.hits: list[str] = []
        self._runner: web.AppRunner | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.hits.append(request.path)
        response: web.StreamResponse = await handler(request)
        return response

    async def start(self) -> LocalServer:
        app = web.Application(middlewares=[self._count])
        self.routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class LeakyGateway(LocalServer):
    """Prompt markers choose the answer: `[echo:400]`, `[echo:500]`, `[echo:401]`, `[echo:malformed]`; anything
    else gets an image. Every failure repeats the key it was sent, in full."""

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/generations", self.openai)
        app.router.add_post("/v1beta/models/{target}", self.gemini)

    async def openai(self, request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        prompt = str((await request.json()).get("prompt", ""))
        if "[echo:400]" in prompt:
            return _json(400, {"error": {"message": f"Invalid prompt for key {key}", "type": "invalid_request_error",
                                         "param": "prompt", "code": "invalid_value"}})
        if "[echo:500]" in prompt:
            return web.Response(status=500, text=f"upstream crashed; Authorization: Bearer {key}")
        if "[echo:401]" in prompt:
            return _json(401, {"error": {"message": f"Incorrect API key provided: {key}.", "code": "invalid_api_key",
                                         "type": "invalid_request_error", "param": None}})
        if "[echo:malformed]" in prompt:
            return web.Response(status=200, text=f"<html>proxy error for {key}</html>", content_type="text/html")
        image = pybase64.b64encode(png_bytes()).decode()
        return _json(200, {"created": 1, "data": [{"b64_json": image, "revised_prompt": None}]})

    async def gemini(self, request: web.Request) -> web.Response:
        key = request.headers.get("x-goog-api-key", "")
        body = await request.json()
        prompt = " ".join(str(p.get("text", "")) for c in body.get("contents", []) for p in c.get("parts", []))
        if "[echo:400]" in prompt:
            return _json(400, {"error": {"code": 400, "message": f"Bad request from key {key}",
                                         "status": "INVALID_ARGUMENT"}})
        if "[echo:500]" in prompt:
            return _json(500, {"error": {"code": 500, "message": f"Internal error for key {key}",
                                         "status": "INTERNAL"}})
        if "[echo:401]" in prompt:
            return _json(403, {"error": {"code": 403, "message": f"Key {key} is not allowed",
                                         "status": "PERMISSION_DENIED"}})
        if "[echo:malformed]" in prompt:
            return web.Response(status=200, text=f"<html>proxy error for {key}</html>", content_type="text/html")
        image = pybase64.b64encode(png_bytes()).decode()
        return _json(200, {"candidates": [{"content": {"role": "model", "parts": [
            {"inlineData": {"mimeType": "image/png", "data": image}}]}, "finishReason": "STOP", "index": 0}],
            "modelVersion": "gemini-3.1-flash-image"})


class Throttler(LocalServer):
    def __init__(self, *, headers: dict[str, str] | None = None, retry_delay: Any = None,
                 refusals: int | None = None) -> None:
        super().__init__()
        self.headers = headers or {}
        self.retry_delay = retry_delay
        self.refusals = refusals
        self.seen: dict[str, int] = {}
        self.statuses: list[int] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/generations", self.openai)
        app.router.add_post("/v1beta/models/{target}", self.gemini)

    def _refuse(self, prompt: str) -> bool:
        self.seen[prompt] = self.seen.get(prompt, 0) + 1
        refuse = self.refusals is None or self.seen[prompt] <= self.refusals
        self.statuses.append(429 if refuse else 200)
        return refuse

    async def openai(self, request: web.Request) -> web.Response:
        if self._refuse(str((await request.json()).get("prompt", ""))):
            return _json(429, {"error": {"message": "Rate limit reached for images per min", "type": "requests",
                                         "param": None, "code": "rate_limit_exceeded"}}, self.headers)
        image = pybase64.b64encode(png_bytes()).decode()
        return _json(200, {"created": 1, "data": [{"b64_json": image}]})

    async def gemini(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = " ".join(str(p.get("text", "")) for c in body.get("contents", []) for p in c.get("parts", []))
        if self._refuse(prompt):
            details: list[dict[str, Any]] = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                {"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                 "quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]}]
            if self.retry_delay is not None:
                details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": self.retry_delay})
            return _json(429, {"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                                         "status": "RESOURCE_EXHAUSTED", "details": details}}, self.headers)
        image = pybase64.b64encode(png_bytes()).decode()
        return _json(200, {"candidates": [{"content": {"role": "model", "parts": [
            {"inlineData": {"mimeType": "image/png", "data": image}}]}, "finishReason": "STOP", "index": 0}],
            "modelVersion": "gemini-3.1-flash-image"})


class ImageHost(LocalServer):
    """Input images by URL: `/good.png`; `/stall.png` (no answer for 5 s); `/drip.png` (one byte every 50 ms);
    `/big-declared.png` (declares 100 MB); `/big-chunked.png` (streams 4 MB without a length);
    `/redirect.png` (302 to /good.png)."""

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/good.png", self.good)
        app.router.add_get("/stall.png", self.stall)
        app.router.add_get("/drip.png", self.drip)
        app.router.add_get("/big-declared.png", self.big_declared)
        app.router.add_get("/big-chunked.png", self.big_chunked)
        app.router.add_get("/redirect.png", self.redirect)

    async def good(self, request: web.Request) -> web.Response:
        return web.Response(body=png_bytes(), content_type="image/png")

    async def stall(self, request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(body=png_bytes(), content_type="image/png")

    async def drip(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        for byte in png_bytes():
            await response.write(bytes([byte]))
            await asyncio.sleep(0.05)
        return response

    async def big_declared(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 100 * 1024 * 1024
        await response.prepare(request)
        for _ in range(1600):  # 100 MB in 64 kB writes, if the client kept reading
            await response.write(b"\0" * 65536)
        return response

    async def big_chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        data = png_bytes()
        await response.write(data)
        for _ in range(64):
            await response.write(b"\0" * 65536)
        return response

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/good.png")


class BillingGateway(LocalServer):
    """Bills every request it receives in full (`billed`, USD, at the model table's prices), before it answers:
    the work is paid whether or not the answer reaches the client. `factor` scales the output tokens over what
    the table says a call yields (a provider billing more than predicted). Gemini usage comes without a
    per-modality split (`candidatesTokenCount` holding the image, two thinking drafts and some text).

    Prompt markers: `[lose]` bills, then closes the connection without an answer (a reset); `[hang]` bills and
    never answers; `[refuse]` answers 400 (an error answer: not billed). `in_flight` / `max_in_flight` count the
    requests being answered; `first_answer_in_flight` is how many were in flight when the first answer left."""

    def __init__(self, *, factor: float = 1.0, latency: float = 0.2) -> None:
        super().__init__()
        self.factor = factor
        self.latency = latency
        self.billed = 0.0
        self.bills = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.first_answer_in_flight: int | None = None
        self.requests: list[str] = []
        self._lock = threading.Lock()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/generations", self.openai)
        app.router.add_post("/v1beta/models/{target}", self.gemini)

    def _bill(self, usd: float) -> None:
        with self._lock:
            self.billed += usd
            self.bills += 1

    async def _serve(self, request: web.Request, prompt: str, usd: float, answer: dict[str, Any]) -> web.Response:
        self.requests.append(prompt)
        if "[refuse]" in prompt:
            return _json(400, {"error": {"message": "Invalid prompt", "type": "invalid_request_error",
                                         "param": "prompt", "code": "invalid_value"}})
        self._bill(usd)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if "[hang]" in prompt:
                await asyncio.sleep(3600)
            await asyncio.sleep(self.latency)
            if "[lose]" in prompt:
                assert request.transport is not None
                request.transport.abort()
                return web.Response(status=200)  # never written: the connection is gone
            if self.first_answer_in_flight is None:
                self.first_answer_in_flight = self.in_flight
            return _json(200, answer)
        finally:
            self.in_flight -= 1

    async def openai(self, request: web.Request) -> web.Response:
        from pixelmill.models.cost import output_tokens
        from pixelmill.models.table import builtin_table

        body = await request.json()
        prompt = str(body.get("prompt", ""))
        spec = builtin_table().get(str(body.get("model")))
        assert spec is not None
        tokens = output_tokens(spec, str(body.get("quality", "high")), str(body.get("size", "1024x1024")))
        out = math.ceil((tokens or 0) * self.factor)
        text_in = math.ceil(len(prompt) / 4)
        price = spec.price
        usd = (text_in * (price.text_in or 0.0) + out * (price.image_out or 0.0)) / 1e6
        usage = {"input_tokens": text_in, "output_tokens": out, "total_tokens": text_in + out,
                 "input_tokens_details": {"text_tokens": text_in, "image_tokens": 0}}
        image = pybase64.b64encode(png_bytes()).decode()
        return await self._serve(request, prompt, usd, {"created": 1, "data": [{"b64_json": image}],
                                                        "usage": usage})

    async def gemini(self, request: web.Request) -> web.Response:
        from pixelmill.models.cost import gemini_image_tokens
        from pixelmill.models.table import builtin_table

        body = await request.json()
        model = request.match_info["target"].split(":", 1)[0]
        spec = builtin_table().get(model)
        assert spec is not None
        prompt = " ".join(str(p.get("text", "")) for c in body.get("contents", []) for p in c.get("parts", []))
        image_tokens = gemini_image_tokens(spec, body.get("generationConfig") or {}) or 0
        candidates = math.ceil((3 * image_tokens + 300) * self.factor)  # the image, two drafts, some text
        prompt_tokens = math.ceil(len(prompt) / 4)
        price = spec.price
        # Without a split the provider's bill is at most every token at the dearer rate: what it charges here.
        usd = (prompt_tokens * max(price.text_in or 0.0, price.image_in or 0.0)
               + candidates * max(price.image_out or 0.0, price.text_out or 0.0)) / 1e6
        image = pybase64.b64encode(png_bytes()).decode()
        answer = {"candidates": [{"content": {"role": "model", "parts": [
            {"inlineData": {"mimeType": "image/png", "data": image}}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": candidates,
                              "totalTokenCount": prompt_tokens + candidates},
            "modelVersion": model}
        return await self._serve(request, prompt, usd, answer)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)
