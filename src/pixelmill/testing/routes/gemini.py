"""Gemini routes: `POST /v1beta/models/{model}:generateContent` (and `:streamGenerateContent?alt=sse`),
`GET /v1beta/models[/{model}]` (and `GET /v1/models[/{model}]` when the server sees a Gemini key there).

Answers follow `GenerateContentResponse`: optional thought parts (`"thought": true`, with draft images) before
the final parts, a text part and the image part, `thoughtSignature` on the final parts of thinking models,
`finishReason`, `usageMetadata`, `modelVersion`, `responseId`. Refusals are 200 answers, as on the real API:
`promptFeedback.blockReason` with no candidate, or a candidate without an image (`IMAGE_SAFETY`, `NO_IMAGE`,
or `STOP` with words only).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from pixelmill.testing import wire_errors as we
from pixelmill.testing.answers import gemini as answers
from pixelmill.testing.exchange import STATUS_OF_FAULT, admit, exchange, send, tag
from pixelmill.testing.faults import Decision, read_markers
from pixelmill.testing.keys import gemini_key
from pixelmill.testing.state import EmulatorState
from pixelmill.testing.validation.gemini import build_gemini_job, resolve_gemini_model


def register(app: web.Application, state: EmulatorState) -> GeminiRoutes:
    """Gemini's routes under v1beta, v1alpha and v1 (google-genai 3.x defaults to v1). `GET /v1/models[/{m}]` is
    shared with OpenAI: the server registers it and sends Gemini-keyed requests to `list_models` / `get_model`."""
    routes = GeminiRoutes(state)
    for version in ("v1beta", "v1alpha", "v1"):
        app.router.add_post(f"/{version}/models/{{target}}", routes.generate)
        if version != "v1":
            app.router.add_get(f"/{version}/models", routes.list_models)
            app.router.add_get(f"/{version}/models/{{target}}", routes.get_model)
    return routes


class GeminiRoutes:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def _auth(self, request: web.Request) -> None:
        record = exchange(request).record
        key = gemini_key(request)
        if self.state.check_key(key):
            record.auth = "valid"
            return
        record.auth = "invalid" if key else "missing"
        raise we.gemini_auth(bool(key))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        model, _, method = request.match_info["target"].partition(":")
        record = tag(request, "gemini", method or "unknown")
        record.model = model
        self._auth(request)
        if method not in ("generateContent", "streamGenerateContent"):
            raise we.gemini_error(404, "NOT_FOUND", f"Method {method or '(none)'} is not found for models/{model}.")
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise we.gemini_invalid("Invalid JSON payload received. Unexpected token.") from None
        config = state.config
        job = build_gemini_job(body, model, table=state.table, serve_retired=config.serve_retired,
                               today=config.today, secret=state.secret)
        record.model = job.spec.name
        record.prompt = job.prompt[:1000]
        record.n = 1
        record.input_images = job.input_images
        record.size = f"{job.aspect_ratio or 'auto'}/{job.image_size or 'default'}"
        answers.resolve_size(job)

        def fault_error(fault: str, _hint: float | None) -> we.WireError | None:
            if fault == "auth":
                return we.gemini_auth(True)
            if fault == "quota":
                return we.gemini_quota(job.spec.name)
            if fault in STATUS_OF_FAULT:
                return we.gemini_server(STATUS_OF_FAULT[fault])
            return None

        def rate_limited(retry_after: float | None, _what: str) -> we.WireError:
            return we.gemini_rate_limit(job.spec.name, retry_after)

        wants_image = "IMAGE" in job.modalities
        decision = await admit(state, request, images=1 if wants_image else 0, markers=read_markers(job.prompt),
                                   fault_error=fault_error, rate_limited=rate_limited, rate_headers=False)
        fault = decision.fault
        if fault == "moderation":
            fault = state.dice.choice(("prompt_blocked", "image_safety"))  # the log keeps "moderation"
        payload = answers.answer(state, job, thoughts=decision.thoughts, fault=fault)
        record.images = answers.count_images(payload)
        record.thoughts = sum(1 for c in payload.get("candidates") or []
                              for p in (c.get("content") or {}).get("parts", []) if p.get("thought"))
        if method == "streamGenerateContent":
            return self._stream(request, payload, decision)
        return send(request, payload, decision, corrupt=_corrupt)

    def _stream(self, request: web.Request, payload: dict[str, Any], decision: Decision) -> web.StreamResponse:
        """`alt=sse`: thought parts (if any) in a first event, the rest in a second."""
        ex = exchange(request)
        candidates = payload.get("candidates") or []
        events = [payload]
        if candidates and "content" in candidates[0]:
            parts = candidates[0]["content"]["parts"]
            thoughts = [p for p in parts if p.get("thought")]
            if thoughts:
                rest = [p for p in parts if not p.get("thought")]
                first = {**payload, "candidates": [{"content": {"role": "model", "parts": thoughts}, "index": 0}]}
                last = {**payload, "candidates": [{**candidates[0], "content": {"role": "model", "parts": rest}}]}
                events = [first, last]
        body = b"".join(b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events)
        ex.record.images = answers.count_images(payload)
        ex.record.bytes_out = len(body)
        return web.Response(body=body, content_type="text/event-stream",
                            headers={"x-request-id": ex.record.id, **ex.rate_headers})

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        tag(request, "gemini", "models")
        self._auth(request)
        config = self.state.config
        models = [
            _model_object(spec.name, spec.max_prompt_chars)
            for spec in self.state.table.family("gemini")
            if not spec.retired(config.today) or config.serve_retired
        ]
        return web.Response(body=orjson.dumps({"models": models}), content_type="application/json")

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        tag(request, "gemini", "models")
        self._auth(request)
        config = self.state.config
        name = request.match_info["target"]
        spec = resolve_gemini_model(self.state.table, name, serve_retired=config.serve_retired, today=config.today)
        return web.Response(body=orjson.dumps(_model_object(spec.name, spec.max_prompt_chars)),
                            content_type="application/json")


def _corrupt(payload: dict[str, Any]) -> dict[str, Any]:
    """The `invalid_base64` fault: the final image's data is not base64."""
    out = orjson.loads(orjson.dumps(payload))
    for candidate in out.get("candidates") or []:
        for part in (candidate.get("content") or {}).get("parts", []):
            if "inlineData" in part and not part.get("thought"):
                part["inlineData"]["data"] = "!!not*base64%%" + part["inlineData"]["data"][14:]
    return dict(out)


def _model_object(name: str, max_chars: int) -> dict[str, Any]:
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": name,
        "inputTokenLimit": max_chars // 4,
        "outputTokenLimit": 32768,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
    }
