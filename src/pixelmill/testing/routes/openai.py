"""OpenAI and Azure OpenAI image routes: generations, edits (multipart and JSON), variations, models, files.

Azure differs only at the edges: the deployment in the path (or `model` on the v1 routes) names the model,
`api-version` is required on deployment routes, the key comes in `api-key`, errors for auth, rate limits and
content filtering have Azure's shapes, and webp output is refused. Azure deployments serve models that
OpenAI has retired (their retirement dates are Azure's own). `GET /v1/models` is also a Gemini path: the server
routes it here or to the Gemini routes by the request's key (`keys.wants_gemini`).
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from pixelmill.testing import wire_errors as we
from pixelmill.testing.answers import openai as answers
from pixelmill.testing.exchange import STATUS_OF_FAULT, admit, exchange, send, tag
from pixelmill.testing.faults import read_markers
from pixelmill.testing.images import Rendered
from pixelmill.testing.keys import bearer
from pixelmill.testing.log import RequestRecord
from pixelmill.testing.state import EmulatorState
from pixelmill.testing.validation.openai import ImageJob, Upload, build_job, read_upload

_API_VERSION = re.compile(r"^(\d{4}-\d{2}-\d{2}(-preview)?|preview|latest|v1)$")


def register(app: web.Application, state: EmulatorState) -> OpenAIRoutes:
    """Add the OpenAI and Azure routes but `GET /v1/models[/{target}]`, which the server shares with Gemini."""
    routes = OpenAIRoutes(state)
    for endpoint in ("generations", "edits", "variations"):
        app.router.add_post(f"/v1/images/{endpoint}", routes.openai(endpoint))
    for endpoint in ("generations", "edits"):
        app.router.add_post(f"/openai/deployments/{{deployment}}/images/{endpoint}", routes.azure(endpoint))
        app.router.add_post(f"/openai/v1/images/{endpoint}", routes.azure_v1(endpoint))
    app.router.add_get("/files/{name}", routes.file)
    return routes


class OpenAIRoutes:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    # ------------------------------------------------------------ route factories

    def openai(self, endpoint: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            record = tag(request, "openai", endpoint)
            key = bearer(request)
            self._auth(record, key, azure=False)
            return await self._serve(request, endpoint, azure=False, model_override=None)

        return handler

    def azure(self, endpoint: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            record = tag(request, "azure", endpoint)
            deployment = request.match_info["deployment"]
            record.deployment = deployment
            version = request.query.get("api-version")
            record.api_version = version
            self._auth(record, request.headers.get("api-key") or bearer(request), azure=True)
            if not version:
                raise we.azure_missing_api_version()
            if not _API_VERSION.match(version):
                raise we.azure_bad_api_version(version)
            model = self._deployment_model(deployment)
            return await self._serve(request, endpoint, azure=True, model_override=model)

        return handler

    def azure_v1(self, endpoint: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            record = tag(request, "azure", endpoint)
            record.api_version = request.query.get("api-version")
            self._auth(record, request.headers.get("api-key") or bearer(request), azure=True)
            return await self._serve(request, endpoint, azure=True, model_override=None, v1_azure=True)

        return handler

    # ------------------------------------------------------------ shared

    def _auth(self, record: RequestRecord, key: str | None, *, azure: bool) -> None:
        if self.state.check_key(key):
            record.auth = "valid"
            return
        record.auth = "invalid" if key else "missing"
        raise we.azure_auth() if azure else we.openai_auth(bool(key))

    def _deployment_model(self, deployment: str) -> str:
        mapped = self.state.config.deployments.get(deployment)
        if mapped is not None:
            return mapped
        spec = self.state.table.get(deployment)
        if spec is None or spec.family != "openai":
            raise we.azure_deployment_not_found(deployment)
        return deployment

    async def _serve(
        self,
        request: web.Request,
        endpoint: str,
        *,
        azure: bool,
        model_override: str | None,
        v1_azure: bool = False,
    ) -> web.StreamResponse:
        state = self.state
        record: RequestRecord = exchange(request).record
        form, body, uploads = await _read_body(request, endpoint)
        if v1_azure:
            asked = body.get("model")
            if isinstance(asked, str):
                record.deployment = asked
                model_override = self._deployment_model(asked)
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            record.prompt = prompt[:1000]
        config = state.config
        job = build_job(
            endpoint=endpoint,
            form=form,
            body=body,
            uploads=uploads,
            table=state.table,
            serve_retired=config.serve_retired,
            today=config.today,
            azure=azure,
            model_override=model_override,
        )
        record.model = job.spec.name
        record.n = job.n
        record.size = job.size_asked
        record.quality = job.quality
        record.output_format = None if job.dalle else job.output_format
        record.input_images = len(job.images)
        record.mask = job.mask is not None

        def fault_error(fault: str, _hint: float | None) -> we.WireError | None:
            if fault == "auth":
                return we.azure_auth() if azure else we.openai_auth(True)
            if fault == "quota":
                return we.openai_quota()
            if fault in STATUS_OF_FAULT:
                return we.openai_server(STATUS_OF_FAULT[fault])
            if fault == "moderation":
                return we.azure_content_filter(job.prompt) if azure else we.openai_moderation(record.id,
                                                                                             dalle=job.dalle)
            return None

        def rate_limited(retry_after: float | None, what: str) -> we.WireError:
            if azure:
                return _azure_rate_limit(retry_after)
            return we.openai_rate_limit(retry_after, what=what)

        decision = await admit(
            state,
            request,
            images=job.n,
            markers=read_markers(job.prompt),
            fault_error=fault_error,
            rate_limited=rate_limited,
        )
        rendered = [answers.render(state, job, i) for i in range(job.n)]
        record.images = len(rendered)
        if job.stream:
            return self._stream(request, job, rendered)
        payload = self._answer(request, job, rendered)
        return send(request, payload, decision, corrupt=_corrupt)

    def _answer(self, request: web.Request, job: ImageJob, rendered: list[Rendered]) -> dict[str, Any]:
        created = int(time.time())
        if job.dalle:
            data: list[dict[str, Any]] = []
            for image in rendered:
                item: dict[str, Any]
                if job.response_format == "b64_json":
                    item = {"b64_json": image.b64}
                else:
                    item = {"url": self._file_url(request, image)}
                if job.spec.styles:  # dall-e-3 rewrites the prompt and says so
                    item["revised_prompt"] = _revised(job.prompt)
                data.append(item)
            return {"created": created, "data": data}
        return answers.gpt_answer(job, rendered)

    def _stream(self, request: web.Request, job: ImageJob, rendered: list[Rendered]) -> web.StreamResponse:
        """SSE: `partial_images` partial events, then one completed event per image."""
        record: RequestRecord = exchange(request).record
        kind = "image_generation" if job.endpoint == "generations" else "image_edit"
        common = {"size": f"{job.width}x{job.height}", "quality": job.quality, "background": job.background,
                  "output_format": job.output_format}
        chunks: list[bytes] = []
        for image in rendered:
            for index in range(job.partial_images):
                event = {"type": f"{kind}.partial_image", "b64_json": image.b64, "created_at": int(time.time()),
                         "partial_image_index": index, **common}
                chunks.append(b"event: %s.partial_image\ndata: %s\n\n" % (kind.encode(), orjson.dumps(event)))
            done = {"type": f"{kind}.completed", "b64_json": image.b64, "created_at": int(time.time()),
                    **common, "usage": answers.usage(job, images=1)}
            chunks.append(b"event: %s.completed\ndata: %s\n\n" % (kind.encode(), orjson.dumps(done)))
        body = b"".join(chunks)
        record.bytes_out = len(body)
        return web.Response(body=body, content_type="text/event-stream",
                            headers={"x-request-id": record.id, **exchange(request).rate_headers})

    def _file_url(self, request: web.Request, image: Rendered) -> str:
        name = f"img-{secrets.token_hex(12)}.png"
        self.state.keep_file(name, image.data, image.mime)
        return f"{request.url.origin()}/files/{name}"

    # ------------------------------------------------------------ other routes

    async def models(self, request: web.Request) -> web.StreamResponse:
        record = tag(request, "openai", "models")
        self._auth(record, bearer(request), azure=False)
        config = self.state.config
        data = []
        for spec in self.state.table.family("openai"):
            if spec.retired(config.today) and not config.serve_retired:
                continue
            for name in (spec.name, *spec.aliases):
                data.append(_model_object(name, spec.shutdown.isoformat() if spec.shutdown else None))
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    async def model(self, request: web.Request) -> web.StreamResponse:
        record = tag(request, "openai", "models")
        self._auth(record, bearer(request), azure=False)
        name = request.match_info["target"]
        config = self.state.config
        spec = self.state.table.get(name)
        if spec is None or spec.family != "openai" or (spec.retired(config.today) and not config.serve_retired):
            raise we.openai_model_not_found(name)
        return web.json_response(_model_object(name, spec.shutdown.isoformat() if spec.shutdown else None),
                                 dumps=_dumps)

    async def file(self, request: web.Request) -> web.StreamResponse:
        tag(request, "files", "files")
        found = self.state.files.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text="BlobNotFound: the image URL has expired or never existed")
        data, mime = found
        return web.Response(body=data, content_type=mime)


# ---------------------------------------------------------------- helpers


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _model_object(name: str, shutdown: str | None) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "system",
            "shutdown_date": shutdown}


def _revised(prompt: str) -> str:
    return f"A detailed, high-quality image: {prompt[:900]}"


def _azure_rate_limit(retry_after: float | None) -> we.WireError:
    seconds = max(1, math.ceil(retry_after)) if retry_after is not None else None
    message = "Requests to the Images_Generations operation have exceeded the call rate limit of your current tier."
    if seconds is not None:
        message += f" Please retry after {seconds} second{'s' if seconds != 1 else ''}."
    headers = {"retry-after": str(seconds), "retry-after-ms": str(max(1, round((retry_after or 0) * 1000)))} \
        if seconds is not None else {}
    return we.WireError(429, {"error": {"code": "429", "message": message}}, code="429", headers=headers)


def _corrupt(payload: dict[str, Any]) -> dict[str, Any]:
    """The `invalid_base64` fault: image data that no base64 decoder accepts."""
    data = []
    for item in payload.get("data", []):
        item = dict(item)
        if "b64_json" in item:
            item["b64_json"] = "!!not*base64%%" + item["b64_json"][14:]
        data.append(item)
    return {**payload, "data": data}


async def _read_body(request: web.Request, endpoint: str) -> tuple[str, dict[str, Any], dict[str, list[Upload]]]:
    """(form, fields, uploads). JSON for generations and JSON edits; multipart for edits and variations."""
    ctype = request.content_type
    if ctype == "application/json" and endpoint in ("generations", "edits"):
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise we.openai_error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
                "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid "
                "JSON.)",
            ) from None
        if not isinstance(body, dict):
            raise we.openai_error(400, "The request body must be a JSON object.")
        return "json", body, {}
    if ctype == "multipart/form-data" and endpoint in ("edits", "variations"):
        fields: dict[str, Any] = {}
        uploads: dict[str, list[Upload]] = {}
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            name = getattr(part, "name", None) or ""
            filename = getattr(part, "filename", None)
            if name in ("image", "image[]", "mask") or filename is not None:
                data = await part.read()  # type: ignore[union-attr]
                field = "image" if name in ("image", "image[]") else name
                part_type = part.headers.get("Content-Type")
                uploads.setdefault(field, []).append(read_upload(bytes(data), field, part_type))
            else:
                fields[name] = await part.text()  # type: ignore[union-attr]
        return "multipart", fields, uploads
    expected = "multipart/form-data" if endpoint == "variations" else (
        "application/json" if endpoint == "generations" else "multipart/form-data or application/json")
    raise we.openai_error(
        400,
        f"Invalid Content-Type header ({ctype or 'none'}), expected {expected}.",
        code="invalid_content_type" if ctype else None,
    )
