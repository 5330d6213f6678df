"""Hugging Face: the router's `hf-inference` text-to-image route and dedicated Inference Endpoints.

    POST /hf-inference/models/{owner/name}   {"inputs": prompt, "parameters": {...}}   -> image bytes
    POST /hf-endpoint/{name}                 the same payload, one URL per endpoint     -> image bytes

The first is `https://router.huggingface.co/hf-inference/models/{model}`; the second stands for a dedicated
endpoint's own URL (`https://xyz.endpoints.huggingface.cloud`), so `hf-endpoint`'s `--base-url` is
`http://127.0.0.1:PORT/hf-endpoint/NAME`. The key is `Authorization: Bearer hf_...`. The answer's format follows
`Accept` (`image/png` as huggingface_hub sends, `image/jpeg`, `image/webp`; anything else: png).
Synchronous: no handle; the answer comes after the usual latency (`latency`, or `[[latency:S]]`).
Cold start: for `hf_cold_start` seconds after a model's (or endpoint's) first call, and on the `unavailable`
fault, the answer is 503 `{"error": "Model X is currently loading", "estimated_time": N}` (the serverless API's
shape; the router's and the endpoints' bodies are UNCONFIRMED). Other errors: `{"error": "..."}`.
Parameters: `width`, `height` (multiples of 8, 256-2048, UNCONFIRMED limits), `num_inference_steps` (1-100),
`guidance_scale`, `negative_prompt`, `seed`, `scheduler`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from pixelmill.testing import wire_errors as we
from pixelmill.testing.exchange import EMULATOR_HEADER, STATUS_OF_FAULT, admit, exchange, tag
from pixelmill.testing.faults import read_markers
from pixelmill.testing.images import colour_for
from pixelmill.testing.keys import bearer
from pixelmill.testing.state import EmulatorState

_ACCEPT = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}


def register(app: web.Application, state: EmulatorState) -> HfRoutes:
    routes = HfRoutes(state)
    app.router.add_post("/hf-inference/models/{model:.+}", routes.router)
    app.router.add_post("/hf-endpoint/{name}", routes.endpoint)
    return routes


class HfRoutes:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def router(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        if model.count("/") != 1:
            raise we.hf_error(404, f"Model {model} does not exist")
        return await self._serve(request, "router", model)

    async def endpoint(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "endpoint", f"endpoint:{request.match_info['name']}")

    async def _serve(self, request: web.Request, endpoint: str, model: str) -> web.StreamResponse:
        state = self.state
        record = tag(request, "hf", endpoint)
        record.model = model
        key = bearer(request)
        if not state.check_key(key):
            record.auth = "invalid" if key else "missing"
            raise we.hf_error(401, "Invalid credentials in Authorization header")
        record.auth = "valid"
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise we.hf_error(400, "Could not parse the request body as JSON") from None
        prompt, width, height = _validate(body)
        record.prompt, record.n, record.size = prompt[:1000], 1, f"{width}x{height}"
        fmt = _ACCEPT.get(request.headers.get("Accept", "").split(",")[0].strip().lower(), "png")
        record.output_format = fmt
        now = time.monotonic()
        first = state.hf_first_call.setdefault(model, now)
        loading = state.config.hf_cold_start - (now - first)
        if loading > 0:
            raise _loading(model, loading)

        def fault_error(fault: str, _hint: float | None) -> we.WireError | None:
            if fault == "unavailable":
                return _loading(model, state.config.retry_after)
            if fault == "auth":
                return we.hf_error(401, "Invalid credentials in Authorization header")
            if fault == "quota":
                return we.hf_error(402, "You have exceeded your monthly included credits for Inference Providers.")
            if fault in STATUS_OF_FAULT:
                return we.hf_error(STATUS_OF_FAULT[fault], "Internal Server Error")
            return None

        def rate_limited(retry_after: float | None, _what: str) -> we.WireError:
            err = we.hf_error(429, "Rate limit reached. You reached the rate limit of requests per minute.")
            if retry_after is not None:
                err.headers["Retry-After"] = str(max(1, round(retry_after)))
            return err

        decision = await admit(state, request, images=1, markers=read_markers(prompt), fault_error=fault_error,
                               rate_limited=rate_limited)
        image = state.images.get(width, height, fmt, colour_for(f"{prompt}#0"), pad_to=state.config.image_bytes)
        record.images = 1
        ex = exchange(request)
        if ex.cut:
            return web.Response(status=200)
        data = image.data
        if decision.fault in ("truncated", "malformed", "invalid_base64"):
            data = data[: len(data) // 2]  # image bytes cut short: what a broken proxy delivers
        record.bytes_out = len(data)
        return web.Response(body=data, content_type=image.mime, headers={EMULATOR_HEADER: "1", **ex.rate_headers})


def _loading(model: str, seconds: float) -> we.WireError:
    name = model.removeprefix("endpoint:")
    err = we.hf_error(503, f"Model {name} is currently loading", estimated_time=round(max(0.1, seconds), 1))
    err.code = "model_loading"
    return err


def _validate(body: Any) -> tuple[str, int, int]:
    if not isinstance(body, dict):
        raise we.hf_error(400, "The request body must be a JSON object")
    prompt = body.get("inputs")
    if not isinstance(prompt, str) or not prompt:
        raise we.hf_error(400, "`inputs` must be a non-empty string (the prompt)")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise we.hf_error(400, "`parameters` must be an object")
    sizes = []
    for name in ("width", "height"):
        value = params.get(name, 1024)
        if not isinstance(value, int) or isinstance(value, bool) or not 256 <= value <= 2048 or value % 8:
            raise we.hf_error(400, f"`{name}` must be an integer multiple of 8 between 256 and 2048, got {value!r}")
        sizes.append(value)
    steps = params.get("num_inference_steps")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 100):
        raise we.hf_error(400, f"`num_inference_steps` must be an integer between 1 and 100, got {steps!r}")
    guidance = params.get("guidance_scale")
    if guidance is not None and (not isinstance(guidance, int | float) or isinstance(guidance, bool)):
        raise we.hf_error(400, f"`guidance_scale` must be a number, got {guidance!r}")
    return prompt, sizes[0], sizes[1]
