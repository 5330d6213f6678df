"""OpenAI Files and Batch API routes for images: `POST/GET /v1/files`, `GET/DELETE /v1/files/{id}`,
`GET /v1/files/{id}/content`, `POST/GET /v1/batches`, `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`.

Uploads stream to disk (`batches.BatchStore`); a batch runs on the accelerated clock of `batches` and answers
each line exactly as the synchronous route would answer its body (`validation.openai.build_job`, then
`answers.openai`): a body that would be a 400 synchronously is an error-file line with that 400's body, a
`[[fault:moderation]]` prompt is a `moderation_blocked` 400 line, `[[fault:server_error]]` (and the other 5xx
faults) a 5xx line; successes carry the `ImagesResponse` with its usage and are billed by `custom_id`. Output
lines come in a shuffled order. An expired batch keeps its answered lines (billed) and lists the rest in the
error file with `error.code = "batch_expired"`; a cancelled batch keeps its answered lines and lists nothing
for the rest (the code for cancelled leftovers is UNCONFIRMED, so a client must treat an absent line as not
done and not billed). The `reset` fate (testing/config.py) creates the batch, then closes the create's
connection with no answer: the client must find it by listing, not create it again.

Choices where the reference says UNCONFIRMED: edit lines use the JSON edits body (`images: [{image_url:
"data:…"}]` or `[{file_id: "file-…"}]`, a file id must name an uploaded file); a batch takes one model (a line
naming another fails validation, `mismatched_model`); validation error codes are `invalid_json_line`,
`missing_required_parameter`, `duplicate_custom_id`, `invalid_method`, `mismatched_endpoint`,
`mismatched_model`, `too_many_requests`, `empty_file`, with 1-based `line`; DALL·E models and streaming are
refused per line; cancelling a finished batch is a 409; output and error files exist only when not empty.
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import secrets
import time
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiohttp import web

from pixelmill.testing import wire_errors as we
from pixelmill.testing.answers import openai as answers
from pixelmill.testing.batches import (
    CANCELLED,
    EXPIRED,
    FAILED,
    VALIDATING,
    Batch,
    FileChecker,
    LineAnswerer,
    LineResult,
    StoredFile,
    iter_lines,
)
from pixelmill.testing.exchange import STATUS_OF_FAULT, cut, tag
from pixelmill.testing.faults import read_markers
from pixelmill.testing.keys import bearer
from pixelmill.testing.state import EmulatorState
from pixelmill.testing.validation.openai import build_job

ENDPOINTS = ("/v1/images/generations", "/v1/images/edits")
OTHER_ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/moderations",
                   "/v1/videos")
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_LINES = 50_000
MAX_BATCH_FILE = 200 * 1024 * 1024
MAX_ERRORS = 1000  # validation errors kept per batch
CANCEL_DELAY = 0.1  # of the batch latency: how long `cancelling` lasts


def register(app: web.Application, state: EmulatorState) -> OpenAIBatchRoutes:
    """The OpenAI-only paths. `/v1/files`, `/v1/files/{id}` and `/v1/batches[/{id}]` are Gemini paths too (its
    SDK defaults to v1): the server registers those and sends OpenAI-keyed requests to this module's handlers."""
    routes = OpenAIBatchRoutes(state)
    app.router.add_post("/v1/files", routes.create_file)
    app.router.add_get("/v1/files/{file_id}/content", routes.file_content)
    app.router.add_post("/v1/batches", routes.create_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", routes.cancel_batch)
    return routes


def _id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _no_file(file_id: str) -> we.WireError:
    return we.openai_error(404, f"No such File object: {file_id}", param="id")


def _no_batch(batch_id: str) -> we.WireError:
    return we.openai_error(404, f"No batch found with id '{batch_id}'.", param="batch_id")


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


class OpenAIBatchRoutes:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.store = state.batches

    def _auth(self, request: web.Request, endpoint: str) -> None:
        record = tag(request, "openai", endpoint)
        key = bearer(request)
        if self.state.check_key(key):
            record.auth = "valid"
            return
        record.auth = "invalid" if key else "missing"
        raise we.openai_auth(bool(key))

    def _file(self, file_id: str) -> StoredFile:
        stored = self.store.files.get(file_id)
        if stored is None or stored.api != "openai":
            raise _no_file(file_id)
        return stored

    async def _batch(self, batch_id: str) -> Batch:
        batch = self.store.batches.get(batch_id)
        if batch is None or batch.api != "openai":
            raise _no_batch(batch_id)
        await asyncio.to_thread(self.store.advance, batch)
        return batch

    # ------------------------------------------------------------ files

    async def create_file(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "files")
        if request.content_type != "multipart/form-data":
            raise we.openai_error(400, f"Invalid Content-Type header ({request.content_type or 'none'}), expected "
                                  "multipart/form-data.", code="invalid_content_type")
        fields: dict[str, str] = {}
        path: Path | None = None
        filename = ""
        size = 0
        digest = hashlib.sha256()
        reader = await request.multipart()
        try:
            while True:
                part = await reader.next()
                if part is None:
                    break
                name = getattr(part, "name", None) or ""
                if name == "file":
                    filename = getattr(part, "filename", None) or "upload"
                    path = self.store.new_path()
                    with path.open("wb") as sink:
                        while chunk := await part.read_chunk(1 << 20):  # type: ignore[union-attr]
                            sink.write(chunk)
                            digest.update(chunk)
                            size += len(chunk)
                elif name in ("purpose", "expires_after[anchor]", "expires_after[seconds]"):
                    fields[name] = await part.text()  # type: ignore[union-attr]
                else:
                    raise we.unknown_parameter(name)
            if path is None:
                raise we.missing_parameter("file")
            purpose = fields.get("purpose")
            if purpose is None:
                raise we.missing_parameter("purpose")
            if purpose not in PURPOSES:
                raise we.invalid_value("purpose", purpose, PURPOSES)
            if purpose == "batch" and not filename.endswith(".jsonl"):
                raise we.openai_error(400, "Invalid file format for Batch API. Must be .jsonl", param="file",
                                      code="invalid_file_format")
            if purpose == "batch" and size > MAX_BATCH_FILE:
                raise we.openai_error(400, f"File is {size} bytes; Batch API input files must be at most 200 MB.",
                                      param="file", code="file_too_large")
            created = time.time()
            expires = _file_expiry(fields, created, purpose)
        except BaseException:
            if path is not None:
                path.unlink(missing_ok=True)
            raise
        stored = self.store.add_file(StoredFile(
            id=_id("file-"), api="openai", path=path, size=size, created=created, filename=filename,
            purpose=purpose, expires=expires, sha256=digest.digest()))
        self.store.counters.files_uploaded["openai"] += 1
        return web.json_response(_file_object(stored), dumps=_dumps)

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "files")
        return web.json_response(_file_object(self._file(request.match_info["file_id"])), dumps=_dumps)

    async def delete_file(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "files")
        file_id = request.match_info["file_id"]
        self._file(file_id)
        self.store.delete_file(file_id)
        return web.json_response({"id": file_id, "object": "file", "deleted": True}, dumps=_dumps)

    async def list_files(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "files")
        purpose = request.query.get("purpose")
        order = request.query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise we.invalid_value("order", order, ("asc", "desc"))
        limit = _limit(request, 10_000, 10_000)
        # Snapshots (`list(...)` copies in one step): worker threads add output files while batches end.
        files = [f for f in list(self.store.files.values())
                 if f.api == "openai" and (purpose is None or f.purpose == purpose)]
        if order == "desc":
            files.reverse()
        page, more = _page(files, request.query.get("after"), limit)
        data = [_file_object(f) for f in page]
        return web.json_response({"object": "list", "data": data, "first_id": page[0].id if page else None,
                                  "last_id": page[-1].id if page else None, "has_more": more}, dumps=_dumps)

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "files")
        stored = self._file(request.match_info["file_id"])
        exchange_record = tag(request, "openai", "files")
        exchange_record.bytes_out = stored.size
        return web.FileResponse(stored.path, headers={"Content-Type": "application/octet-stream"})

    # ------------------------------------------------------------ batches

    async def create_batch(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "batches")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise we.openai_error(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise we.openai_error(400, "The request body must be a JSON object.")
        allowed = {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
        for name in body:
            if name not in allowed:
                raise we.unknown_parameter(name)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if body.get(name) is None:
                raise we.missing_parameter(name)
        endpoint = body["endpoint"]
        if endpoint not in ENDPOINTS:
            if endpoint in OTHER_ENDPOINTS:
                raise we.openai_error(400, f"The emulator serves image batches only, not {endpoint}.",
                                      param="endpoint", code="invalid_value")
            raise we.invalid_value("endpoint", endpoint, ENDPOINTS + OTHER_ENDPOINTS)
        if body["completion_window"] != "24h":
            raise we.invalid_value("completion_window", body["completion_window"], ("24h",))
        metadata = _metadata(body.get("metadata"))
        output_expiry = _output_expiry(body.get("output_expires_after"))
        file_id = body["input_file_id"]
        stored = self.store.files.get(file_id) if isinstance(file_id, str) else None
        if stored is None or stored.api != "openai":
            raise we.openai_error(400, f"Invalid 'input_file_id': no such file {file_id!r}.", param="input_file_id",
                                  code="invalid_value")
        if stored.purpose != "batch":
            raise we.openai_error(400, f"Invalid 'input_file_id': file {file_id} has purpose '{stored.purpose}', "
                                  "expected 'batch'.", param="input_file_id", code="invalid_value")
        config = self.state.config
        batch = Batch(
            id=_id("batch_"), api="openai", input_file=file_id, input_path=self.store.link_input(stored),
            answer=self._answerer(endpoint), check=_checker(endpoint), created=time.time(),
            latency=config.batch_latency, window=config.batch_window,
            cancel_delay=CANCEL_DELAY * config.batch_latency, fate=self.store.next_fate(config.batch_fates),
            endpoint=endpoint, metadata=metadata, extra={"output_expires_after": output_expiry},
            on_end=self._publish,
        )
        batch.times[VALIDATING] = batch.created
        self.store.batches[batch.id] = batch
        self.store.counters.batches_created["openai"] += 1
        if config.batch_create_hold:
            await asyncio.sleep(config.batch_create_hold)
        if batch.fate == "reset" or self.store.lose_create_answer(config.batch_lost_creates):
            cut(request)  # created, and its answer lost: the client finds it by listing (its name, input file)
            return web.Response(status=200)  # never written: the transport is gone
        return web.json_response(self._object(batch), dumps=_dumps)

    async def get_batch(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "batches")
        batch = await self._batch(request.match_info["batch_id"])
        return web.json_response(self._object(batch), dumps=_dumps)

    async def list_batches(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "batches")
        limit = _limit(request, 20, 100)
        batches = [b for b in list(self.store.batches.values()) if b.api == "openai"]
        batches.reverse()  # newest first
        page, more = _page(batches, request.query.get("after"), limit)
        for batch in page:
            await asyncio.to_thread(self.store.advance, batch)
        return web.json_response({"object": "list", "data": [self._object(b) for b in page],
                                  "first_id": page[0].id if page else None,
                                  "last_id": page[-1].id if page else None, "has_more": more}, dumps=_dumps)

    async def cancel_batch(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "batches")
        batch = await self._batch(request.match_info["batch_id"])
        if batch.cancel_requested is not None or batch.status in (FAILED, EXPIRED, CANCELLED, "completed"):
            raise we.openai_error(409, f"Cannot cancel a batch with status '{batch.status}'.", code="conflict")
        batch.cancel_requested = time.time()
        await asyncio.to_thread(self.store.advance, batch)
        return web.json_response(self._object(batch), dumps=_dumps)

    # ------------------------------------------------------------ lines

    def _answerer(self, endpoint: str) -> LineAnswerer:
        state = self.state
        kind = endpoint.rsplit("/", 1)[-1]

        def answer(raw: bytes) -> LineResult:
            line = orjson.loads(raw)  # the checker read it already
            custom_id = line["custom_id"]
            request_id = "req_" + secrets.token_hex(16)
            try:
                body = line["body"]
                self._check_file_refs(body)
                config = state.config
                job = build_job(endpoint=kind, form="json", body=body, uploads={}, table=state.table,
                                serve_retired=config.serve_retired, today=config.today)
                if job.dalle:
                    raise we.openai_error(400, f"The model {job.spec.name} is not supported by the Batch API.",
                                          param="model", code="invalid_value")
                if job.stream:
                    raise we.openai_error(400, "Streaming is not supported in the Batch API.", param="stream",
                                          code="invalid_value")
                fault = read_markers(job.prompt).fault
                if fault == "moderation":
                    raise we.openai_moderation(request_id, dalle=False)
                if fault in STATUS_OF_FAULT or fault == "timeout":
                    raise we.openai_server(STATUS_OF_FAULT.get(fault or "", 504))
            except we.WireError as err:
                out = {"id": _id("batch_req_"), "custom_id": custom_id,
                       "response": {"status_code": err.status, "request_id": request_id, "body": err.body},
                       "error": None}
                return LineResult(orjson.dumps(out) + b"\n", ok=False)
            rendered = [answers.render(state, job, i) for i in range(job.n)]
            payload = answers.gpt_answer(job, rendered)
            out = {"id": _id("batch_req_"), "custom_id": custom_id,
                   "response": {"status_code": 200, "request_id": request_id, "body": payload}, "error": None}
            usage = payload["usage"]
            return LineResult(orjson.dumps(out) + b"\n", ok=True, billed=custom_id,
                              usage={"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"],
                                     "total_tokens": usage["total_tokens"]})

        return answer

    def _check_file_refs(self, body: object) -> None:
        """Image `file_id`s in an edits line must name files uploaded here (the emulator stands them for 1024x1024
        PNGs, as the synchronous JSON edits route does)."""
        if not isinstance(body, dict):
            return
        refs = body.get("images")
        refs = list(refs) if isinstance(refs, list) else []
        if isinstance(body.get("mask"), dict):
            refs.append(body["mask"])
        for ref in refs:
            file_id = ref.get("file_id") if isinstance(ref, dict) else None
            if isinstance(file_id, str) and file_id.startswith("file-") and file_id not in self.store.files:
                raise _no_file(file_id)

    def _publish(self, batch: Batch) -> None:
        """A batch ended: list the expired leftovers, then publish the output and error files that have lines."""
        if batch.status == EXPIRED and batch.leftovers:
            error_path = batch.error_path or self.store.new_path()
            batch.error_path = error_path
            with error_path.open("ab") as sink:
                for raw in self.store.read_lines(batch, batch.leftovers):
                    custom_id = orjson.loads(raw).get("custom_id")
                    line = {"id": _id("batch_req_"), "custom_id": custom_id, "response": None,
                            "error": {"code": "batch_expired",
                                      "message": "This request could not be executed before the completion window "
                                                 "expired."}}
                    sink.write(orjson.dumps(line) + b"\n")
                    batch.failed += 1
        expiry = batch.extra.get("output_expires_after")
        for which in ("output", "error"):
            path = batch.output_path if which == "output" else batch.error_path
            if path is None or not path.exists() or path.stat().st_size == 0:
                continue
            created = time.time()
            stored = self.store.add_file(StoredFile(
                id=_id("file-"), api="openai", path=path, size=path.stat().st_size, created=created,
                filename=f"{batch.id}_{which}.jsonl", purpose="batch_output", generated=True,
                expires=created + expiry if expiry else None))
            if which == "output":
                batch.output_file = stored.id
            else:
                batch.error_file = stored.id

    def _object(self, batch: Batch) -> dict[str, Any]:
        def at(status: str) -> int | None:
            when = batch.times.get(status)
            return None if when is None else int(when)

        usage = batch.usage
        validated = batch.status != VALIDATING and batch.status != FAILED
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "model": batch.model,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file,
            "completion_window": "24h",
            "status": batch.status,
            "output_file_id": batch.output_file,
            "error_file_id": batch.error_file,
            "created_at": int(batch.created),
            "in_progress_at": at("in_progress"),
            "expires_at": int(batch.created + batch.window),
            "finalizing_at": at("finalizing"),
            "completed_at": at("completed"),
            "failed_at": at("failed"),
            "expired_at": at("expired"),
            "cancelling_at": at("cancelling"),
            "cancelled_at": at("cancelled"),
            "request_counts": {"total": batch.total if validated else 0, "completed": batch.completed,
                               "failed": batch.failed},
            "usage": {"input_tokens": usage["input_tokens"], "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": usage["output_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": usage["total_tokens"]},
            "metadata": batch.metadata,
        }


# ---------------------------------------------------------------- checks


def _checker(endpoint: str) -> FileChecker:
    def check(batch: Batch) -> tuple[array.array[int], list[dict[str, Any]]]:
        offsets: array.array[int] = array.array("q")
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        model: str | None = None

        def error(code: str, message: str, line: int | None, param: str | None = None) -> None:
            if len(errors) < MAX_ERRORS:
                errors.append({"code": code, "message": message, "param": param, "line": line})

        for number, offset, raw in iter_lines(batch.input_path):
            offsets.append(offset)
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                line = None
            if not isinstance(line, dict):
                error("invalid_json_line", "This line is not parseable as valid JSON.", number)
                continue
            for name in ("custom_id", "method", "url", "body"):
                if line.get(name) is None:
                    error("missing_required_parameter", f"Missing required parameter: '{name}'.", number, name)
            custom_id = line.get("custom_id")
            if custom_id is not None and not isinstance(custom_id, str):
                error("invalid_type", "Invalid type for 'custom_id': expected a string.", number, "custom_id")
            elif isinstance(custom_id, str):
                if custom_id in seen:
                    error("duplicate_custom_id", "The custom_id for this request is a duplicate of another request. "
                          "The custom_id parameter must be unique for each request in a batch.", number, "custom_id")
                seen.add(custom_id)
            if line.get("method") not in (None, "POST"):
                error("invalid_method", "Only POST requests are supported in a batch.", number, "method")
            if line.get("url") not in (None, endpoint):
                error("mismatched_endpoint", f"The url '{line.get('url')}' does not match the batch's endpoint "
                      f"'{endpoint}'.", number, "url")
            body = line.get("body")
            if body is not None and not isinstance(body, dict):
                error("invalid_type", "Invalid type for 'body': expected an object.", number, "body")
            elif isinstance(body, dict) and isinstance(body.get("model"), str):
                if model is None:
                    model = body["model"]
                elif body["model"] != model:
                    error("mismatched_model", f"The model '{body['model']}' does not match the model '{model}' of "
                          "the other requests: a batch may use one model only.", number, "body.model")
        if not offsets:
            error("empty_file", "The input file is empty.", None)
        if len(offsets) > MAX_LINES:
            errors.insert(0, {"code": "too_many_requests", "param": None, "line": None,
                              "message": f"The input file has {len(offsets)} requests; a batch takes at most "
                                         f"{MAX_LINES}."})
        batch.model = model
        return offsets, errors

    return check


def _file_expiry(fields: dict[str, str], created: float, purpose: str) -> float | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return created + 30 * 86400 if purpose == "batch" else None
    if anchor != "created_at":
        raise we.invalid_value("expires_after[anchor]", anchor, ("created_at",))
    try:
        value = int(seconds or "")
    except ValueError:
        raise we.invalid_type("expires_after[seconds]", "an integer", seconds) from None
    if not 3600 <= value <= 2_592_000:
        raise we.openai_error(400, "Invalid 'expires_after[seconds]': must be between 3600 and 2592000.",
                              param="expires_after[seconds]", code="invalid_value")
    return created + value


def _output_expiry(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("anchor") != "created_at" or set(value) != {"anchor", "seconds"}:
        raise we.openai_error(400, "Invalid 'output_expires_after': expected {anchor: 'created_at', seconds}.",
                              param="output_expires_after", code="invalid_value")
    seconds = value["seconds"]
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not 3600 <= seconds <= 2_592_000:
        raise we.openai_error(400, "Invalid 'output_expires_after.seconds': must be between 3600 and 2592000.",
                              param="output_expires_after.seconds", code="invalid_value")
    return seconds


def _metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise we.invalid_type("metadata", "an object", value)
    if len(value) > 16:
        raise we.openai_error(400, "Invalid 'metadata': at most 16 key-value pairs.", param="metadata",
                              code="invalid_value")
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise we.openai_error(400, f"Invalid 'metadata.{key[:64]}': keys are strings of at most 64 characters, "
                                  "values strings of at most 512.", param="metadata", code="invalid_value")
    return dict(value)


_Item = TypeVar("_Item", StoredFile, Batch)


def _limit(request: web.Request, default: int, most: int) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise we.invalid_type("limit", "an integer", raw) from None
    if not 1 <= limit <= most:
        raise we.openai_error(400, f"Invalid 'limit': must be between 1 and {most}.", param="limit",
                              code="invalid_value")
    return limit


def _page(items: list[_Item], after: str | None, limit: int) -> tuple[list[_Item], bool]:
    start = 0
    if after:
        ids = [item.id for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    page = items[start:start + limit]
    return page, start + limit < len(items)


def _file_object(stored: StoredFile) -> dict[str, Any]:
    return {
        "id": stored.id,
        "object": "file",
        "bytes": stored.size,
        "created_at": int(stored.created),
        "filename": stored.filename,
        "purpose": stored.purpose,
        "status": "processed",
        "expires_at": int(stored.expires) if stored.expires is not None else None,
        "status_details": None,
    }
