"""Gemini File API and Batch Mode routes, under v1beta, v1alpha and v1 (google-genai 3.x defaults to v1):
`POST /upload/{v}/files` (resumable: `start`, then `upload[, finalize]` chunks at the `x-goog-upload-url`),
`GET/DELETE /{v}/files/{id}`, `GET /{v}/files`, downloads at `/download/{v}/files/{id}:download?alt=media` and
`/{v}/files/{id}:download?alt=media`, `POST /{v}/models/{model}:batchGenerateContent`, `GET /{v}/batches[/{id}]`,
`POST /{v}/batches/{id}:cancel`, `DELETE /{v}/batches/{id}`. The v1 paths that OpenAI also has (`/v1/files…`,
`/v1/batches…`) are wired by the server, which tells the two apart by the key.

Batches are Operations: `name` `batches/…`, `metadata` the `GenerateContentBatch` (`BATCH_STATE_*`, `batchStats`
counts as strings, `output.responsesFile`), `done` and `response.responsesFile` once finished. Each line of the
input file (`{key, request}`) is answered exactly as `generateContent` would answer `request` (the synchronous
validation and answers): a request that would be a 400 is an `{key, error}` line, a refusal marker
(`[[fault:moderation]]`, `prompt_blocked`, `image_safety`, `no_image`, `text_only`) a 200 `response` without an
image, `[[fault:server_error]]` (and the other 5xx) an error line. Results are one file, `files/batch-<id>`, in
input order. An EXPIRED (twice `batch_window`) or FAILED batch returns no results and bills nothing. The `reset`
fate creates the batch, then closes the create's connection with no answer (found again by listing).
Downloads carry the emulator's mark (`x-pixelmill-emulator`), as its synchronous answers do.

Choices where the reference says UNCONFIRMED: an error line is `{"key", "error": {code (google.rpc code),
message, status}}`; a failed batch's error is the Operation's top-level `error`; a CANCELLED batch keeps the
results answered before the cancel (and bills them); a client-chosen file `name` that exists is a 409
ALREADY_EXISTS; an input line that is not a JSON object with a `request` fails the whole batch; inline
(`inputConfig.requests`) batches are refused with a 400 (the emulator takes file input only); uploaded files
cannot be downloaded, only generated ones.
"""

from __future__ import annotations

import array
import asyncio
import base64
import datetime as dt
import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from pixelmill.testing import wire_errors as we
from pixelmill.testing.answers import gemini as answers
from pixelmill.testing.batches import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    EXPIRED,
    FAILED,
    FINALIZING,
    IN_PROGRESS,
    TERMINAL,
    VALIDATING,
    Batch,
    LineAnswerer,
    LineResult,
    StoredFile,
    iter_lines,
)
from pixelmill.testing.exchange import EMULATOR_HEADER, STATUS_OF_FAULT, cut, exchange, tag
from pixelmill.testing.faults import read_markers
from pixelmill.testing.keys import gemini_key
from pixelmill.testing.state import EmulatorState
from pixelmill.testing.validation.gemini import build_gemini_job, resolve_gemini_model

VERSIONS = ("v1beta", "v1alpha", "v1")
FILE_LIFETIME = 48 * 3600
MAX_FILE = 2 * 1024**3
WIRE_STATE = {VALIDATING: "BATCH_STATE_PENDING", IN_PROGRESS: "BATCH_STATE_RUNNING",
              FINALIZING: "BATCH_STATE_RUNNING", CANCELLING: "BATCH_STATE_RUNNING",
              COMPLETED: "BATCH_STATE_SUCCEEDED", FAILED: "BATCH_STATE_FAILED", EXPIRED: "BATCH_STATE_EXPIRED",
              CANCELLED: "BATCH_STATE_CANCELLED"}
RPC_CODE = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 429: 8, 500: 13, 502: 14, 503: 14, 504: 4}
BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch"
OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatchOutput"
_FILE_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


@dataclass(slots=True)
class Upload:
    """A resumable upload between `start` and `finalize`."""

    path: Path
    declared: int | None
    mime: str
    name: str
    display_name: str | None
    received: int = 0


def register(app: web.Application, state: EmulatorState) -> GeminiBatchRoutes:
    """Gemini's File API and batch paths but the v1 ones OpenAI shares (the server wires those by key). Must be
    registered before the synchronous routes: `models/{m}:batchGenerateContent` would match their `{target}`."""
    routes = GeminiBatchRoutes(state)
    for version in VERSIONS:
        app.router.add_post(f"/upload/{version}/files", routes.upload)
        app.router.add_get(f"/download/{version}/files/{{file_id}}", routes.download)
        app.router.add_post(f"/{version}/models/{{model}}:batchGenerateContent", routes.create_batch)
        app.router.add_post(f"/{version}/batches/{{batch_id}}", routes.cancel_batch)
        app.router.add_delete(f"/{version}/batches/{{batch_id}}", routes.delete_batch)
        if version != "v1":
            app.router.add_get(f"/{version}/files", routes.list_files)
            app.router.add_get(f"/{version}/files/{{file_id}}", routes.get_file)
            app.router.add_delete(f"/{version}/files/{{file_id}}", routes.delete_file)
            app.router.add_get(f"/{version}/batches", routes.list_batches)
            app.router.add_get(f"/{version}/batches/{{batch_id}}", routes.get_batch)
    return routes


def _json(body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


def _time(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat().replace("+00:00", "Z")


class GeminiBatchRoutes:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.store = state.batches
        self.uploads: dict[str, Upload] = {}

    def _auth(self, request: web.Request, endpoint: str) -> None:
        record = tag(request, "gemini", endpoint)
        key = gemini_key(request)
        if self.state.check_key(key):
            record.auth = "valid"
            return
        record.auth = "invalid" if key else "missing"
        raise we.gemini_auth(bool(key))

    def _file(self, raw: str) -> StoredFile:
        name = raw if raw.startswith("files/") else f"files/{raw}"
        stored = self.store.files.get(name)
        if stored is None or stored.api != "gemini":
            raise we.gemini_error(403, "PERMISSION_DENIED", f"You do not have permission to access the File "
                                  f"{name.removeprefix('files/')} or it may not exist.")
        return stored

    async def _batch(self, raw: str) -> Batch:
        name = raw if raw.startswith("batches/") else f"batches/{raw}"
        batch = self.store.batches.get(name)
        if batch is None or batch.api != "gemini":
            raise we.gemini_error(404, "NOT_FOUND", f"Requested entity was not found: {name}")
        await asyncio.to_thread(self.store.advance, batch)
        return batch

    # ------------------------------------------------------------ files

    async def upload(self, request: web.Request) -> web.StreamResponse:
        upload_id = request.query.get("upload_id")
        if upload_id is not None:
            return await self._chunk(request, upload_id)
        self._auth(request, "upload")
        headers = request.headers
        if headers.get("x-goog-upload-protocol", "").lower() != "resumable" or \
                headers.get("x-goog-upload-command", "").lower() != "start":
            raise we.gemini_invalid("The emulator takes resumable uploads only: send X-Goog-Upload-Protocol: "
                                    "resumable and X-Goog-Upload-Command: start.")
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            raise we.gemini_invalid("Invalid JSON payload received.") from None
        meta = body.get("file") if isinstance(body, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        name = meta.get("name")
        if name is None:
            name = "files/" + secrets.token_hex(6)
        elif not isinstance(name, str) or not _FILE_ID.match(name.removeprefix("files/")):
            raise we.gemini_invalid(f"Invalid file name {name!r}: up to 40 lowercase letters, digits and dashes, "
                                    "not starting or ending with a dash.")
        else:
            name = name if name.startswith("files/") else f"files/{name}"
        if name in self.store.files or any(u.name == name for u in list(self.uploads.values())):
            raise we.gemini_error(409, "ALREADY_EXISTS", f"File {name} already exists.")
        declared_text = headers.get("x-goog-upload-header-content-length")
        declared = int(declared_text) if declared_text and declared_text.isdigit() else None
        if declared is not None and declared > MAX_FILE:
            raise we.gemini_invalid(f"File is {declared} bytes; files may be at most 2 GB.")
        mime = headers.get("x-goog-upload-header-content-type") or meta.get("mimeType") or "application/octet-stream"
        display = meta.get("displayName", meta.get("display_name"))
        upload_id = secrets.token_urlsafe(18)
        path = self.store.new_path()
        path.touch()
        self.uploads[upload_id] = Upload(path, declared, mime, name, display if isinstance(display, str) else None)
        url = f"{request.url.origin()}{request.path}?upload_id={upload_id}&upload_protocol=resumable"
        return web.Response(status=200, headers={"x-goog-upload-url": url, "x-goog-upload-status": "active",
                                                 "x-goog-upload-chunk-granularity": str(8 * 1024 * 1024)})

    async def _chunk(self, request: web.Request, upload_id: str) -> web.StreamResponse:
        tag(request, "gemini", "upload")
        session = self.uploads.get(upload_id)
        if session is None:
            raise we.gemini_error(404, "NOT_FOUND", "No such upload session.")
        command = {c.strip() for c in request.headers.get("x-goog-upload-command", "").lower().split(",")}
        if command == {"query"}:
            return web.Response(headers={"x-goog-upload-status": "active",
                                         "x-goog-upload-size-received": str(session.received)})
        offset_text = request.headers.get("x-goog-upload-offset", "")
        if not offset_text.isdigit() or int(offset_text) != session.received:
            raise we.gemini_error(400, "INVALID_ARGUMENT", f"Upload offset {offset_text or '(none)'} does not match "
                                  f"the {session.received} bytes received.")
        with session.path.open("ab") as sink:
            async for chunk in request.content.iter_chunked(1 << 20):
                sink.write(chunk)
                session.received += len(chunk)
        if "finalize" not in command:
            return web.Response(headers={"x-goog-upload-status": "active"})
        del self.uploads[upload_id]
        if session.declared is not None and session.declared != session.received:
            session.path.unlink(missing_ok=True)
            raise we.gemini_invalid(f"Upload finalized with {session.received} bytes; {session.declared} were "
                                    "declared.")
        digest = await asyncio.to_thread(_sha256, session.path)
        stored = self.store.add_file(StoredFile(
            id=session.name, api="gemini", path=session.path, size=session.received, created=time.time(),
            mime=session.mime, display_name=session.display_name, expires=time.time() + FILE_LIFETIME,
            sha256=digest))
        self.store.counters.files_uploaded["gemini"] += 1
        return _json({"file": _file_object(stored, str(request.url.origin()))},
                     headers={"x-goog-upload-status": "final"})

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        raw = request.match_info["file_id"]
        if raw.endswith(":download"):
            return await self.download(request)
        self._auth(request, "files")
        return _json(_file_object(self._file(raw), str(request.url.origin())))

    async def download(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "download")
        raw = request.match_info["file_id"]
        if not raw.endswith(":download") or request.query.get("alt") != "media":
            raise we.gemini_invalid("Download with files/{id}:download?alt=media.")
        stored = self._file(raw.removesuffix(":download"))
        if not stored.generated:
            raise we.gemini_invalid("Only generated files can be downloaded; uploaded files cannot.")
        exchange(request).record.bytes_out = stored.size
        # The emulator's mark, as on its synchronous answers: a real run never takes these images for its own.
        return web.FileResponse(stored.path, headers={"Content-Type": stored.mime, EMULATOR_HEADER: "1"})

    async def delete_file(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "files")
        stored = self._file(request.match_info["file_id"])
        self.store.delete_file(stored.id)
        return _json({})

    async def list_files(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "files")
        files = [f for f in list(self.store.files.values()) if f.api == "gemini"]  # snapshot: threads add files
        files.reverse()
        page, token = _page(files, request)
        body: dict[str, Any] = {"files": [_file_object(f, str(request.url.origin())) for f in page]}
        if token:
            body["nextPageToken"] = token
        return _json(body)

    # ------------------------------------------------------------ batches

    async def create_batch(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "batchGenerateContent")
        model = request.match_info["model"].removeprefix("models/")
        config = self.state.config
        spec = resolve_gemini_model(self.state.table, model, serve_retired=config.serve_retired, today=config.today)
        exchange(request).record.model = spec.name
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise we.gemini_invalid("Invalid JSON payload received.") from None
        batch_body = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch_body, dict):
            raise we.gemini_invalid("* BatchGenerateContentRequest.batch: batch is not specified\n")
        source = batch_body.get("inputConfig", batch_body.get("input_config"))
        if not isinstance(source, dict):
            raise we.gemini_invalid("* GenerateContentBatch.input_config: input_config is not specified\n")
        if "requests" in source:
            raise we.gemini_invalid("The emulator takes file input only (inputConfig.fileName), not inline requests.")
        file_name = source.get("fileName", source.get("file_name"))
        if not isinstance(file_name, str):
            raise we.gemini_invalid("* GenerateContentBatch.input_config.file_name: file_name is not specified\n")
        stored = self._file(file_name)
        display = batch_body.get("displayName", batch_body.get("display_name"))
        batch = Batch(
            id="batches/" + secrets.token_hex(16), api="gemini", input_file=stored.id,
            input_path=self.store.link_input(stored), answer=self._answerer(model), check=_checker,
            created=time.time(), latency=config.batch_latency, window=2 * config.batch_window, cancel_delay=0.0,
            fate=self.store.next_fate(config.batch_fates), model=spec.name,
            display_name=display if isinstance(display, str) else None,
            extra={"priority": str(batch_body.get("priority", 0))},
            discard_on=frozenset({EXPIRED}), on_end=self._publish, shuffled=False, one_file=True,
        )
        batch.times[VALIDATING] = batch.created
        self.store.batches[batch.id] = batch
        self.store.counters.batches_created["gemini"] += 1
        if config.batch_create_hold:
            await asyncio.sleep(config.batch_create_hold)
        if batch.fate == "reset" or self.store.lose_create_answer(config.batch_lost_creates):
            cut(request)  # created, and its answer lost: the client finds it by listing (its name, input file)
            return web.Response(status=200)  # never written: the transport is gone
        return _json(_operation(batch))

    async def get_batch(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "batches")
        return _json(_operation(await self._batch(request.match_info["batch_id"])))

    async def list_batches(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "batches")
        batches = [b for b in list(self.store.batches.values()) if b.api == "gemini"]
        batches.reverse()
        page, token = _page(batches, request)
        for batch in page:
            await asyncio.to_thread(self.store.advance, batch)
        body: dict[str, Any] = {"operations": [_operation(b) for b in page]}
        if token:
            body["nextPageToken"] = token
        return _json(body)

    async def cancel_batch(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "batches")
        raw = request.match_info["batch_id"]
        if not raw.endswith(":cancel"):
            raise we.gemini_error(404, "NOT_FOUND", f"Method not found: {raw}")
        batch = await self._batch(raw.removesuffix(":cancel"))
        if batch.status in TERMINAL:
            raise we.gemini_error(400, "FAILED_PRECONDITION", f"Batch {batch.id} is already finished.")
        batch.cancel_requested = time.time()
        await asyncio.to_thread(self.store.advance, batch)
        return _json({})

    async def delete_batch(self, request: web.Request) -> web.StreamResponse:
        self._auth(request, "batches")
        batch = await self._batch(request.match_info["batch_id"])
        if batch.status not in TERMINAL:  # deleting stops processing new requests
            batch.cancel_requested = time.time()
            await asyncio.to_thread(self.store.advance, batch)
        del self.store.batches[batch.id]
        return _json({})

    # ------------------------------------------------------------ lines

    def _answerer(self, model: str) -> LineAnswerer:
        state = self.state

        def answer(raw: bytes) -> LineResult:
            line = orjson.loads(raw)  # the checker read it already
            key = line.get("key")
            try:
                config = state.config
                job = build_gemini_job(line["request"], model, table=state.table, serve_retired=config.serve_retired,
                                       today=config.today, secret=state.secret)
                answers.resolve_size(job)
                markers = read_markers(job.prompt)
                fault = markers.fault
                if fault in STATUS_OF_FAULT or fault == "timeout":
                    raise we.gemini_server(STATUS_OF_FAULT.get(fault or "", 504))
            except we.WireError as err:
                inner = err.body.get("error", {})
                error = {"code": RPC_CODE.get(err.status, 2), "message": inner.get("message", ""),
                         "status": inner.get("status", "UNKNOWN")}
                return LineResult(orjson.dumps({"key": key, "error": error}) + b"\n", ok=False)
            if fault == "moderation":  # the synchronous route draws one of the two; here the key decides
                fault = ("prompt_blocked", "image_safety")[hashlib.blake2b(str(key).encode()).digest()[0] % 2]
            payload = answers.answer(state, job, thoughts=markers.thoughts, fault=fault)
            usage = payload["usageMetadata"]
            return LineResult(orjson.dumps({"key": key, "response": payload}) + b"\n", ok=True,
                              billed=str(key), usage={"promptTokenCount": usage.get("promptTokenCount", 0),
                                                      "candidatesTokenCount": usage.get("candidatesTokenCount", 0),
                                                      "totalTokenCount": usage.get("totalTokenCount", 0)})

        return answer

    def _publish(self, batch: Batch) -> None:
        """A batch ended with results to give (SUCCEEDED, CANCELLED): they become `files/batch-<id>`."""
        path = batch.output_path
        if batch.status in batch.discard_on or path is None or not path.exists():
            return
        stored = self.store.add_file(StoredFile(
            id="files/batch-" + batch.id.removeprefix("batches/"), api="gemini", path=path,
            size=path.stat().st_size, created=time.time(), mime="application/jsonl",
            expires=time.time() + FILE_LIFETIME, generated=True))
        batch.output_file = stored.id


# ---------------------------------------------------------------- shapes and checks


def _checker(batch: Batch) -> tuple[array.array[int], list[dict[str, Any]]]:
    offsets: array.array[int] = array.array("q")
    errors: list[dict[str, Any]] = []
    for number, offset, raw in iter_lines(batch.input_path):
        offsets.append(offset)
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            line = None
        if not isinstance(line, dict) or not isinstance(line.get("request"), dict) or \
                not isinstance(line.get("key", ""), str):
            errors.append({"code": 3, "line": number, "message": f"Invalid input file: line {number} is not a JSON "
                           "object with a 'request' object (and a string 'key')."})
            break
    if not offsets:
        errors.append({"code": 3, "line": None, "message": "Invalid input file: it has no requests."})
    return offsets, errors


def _sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.digest()


def _page(items: list[Any], request: web.Request) -> tuple[list[Any], str | None]:
    try:
        size = int(request.query.get("pageSize", "50"))
        start = int(request.query.get("pageToken") or "0")
    except ValueError:
        raise we.gemini_invalid("Invalid pageSize or pageToken.") from None
    size = max(1, min(size, 1000))
    page = items[start:start + size]
    return page, str(start + size) if start + size < len(items) else None


def _file_object(stored: StoredFile, origin: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": stored.id,
        "mimeType": stored.mime,
        "sizeBytes": str(stored.size),
        "createTime": _time(stored.created),
        "updateTime": _time(stored.created),
        "expirationTime": _time(stored.expires or stored.created + FILE_LIFETIME),
        "uri": f"{origin}/v1beta/{stored.id}",
        "state": "ACTIVE",
        "source": "GENERATED" if stored.generated else "UPLOADED",
    }
    if stored.display_name is not None:
        body["displayName"] = stored.display_name
    if stored.sha256:
        body["sha256Hash"] = base64.b64encode(stored.sha256.hex().encode()).decode()
    if stored.generated:
        body["downloadUri"] = f"{origin}/download/v1beta/{stored.id}:download?alt=media"
    return body


def _operation(batch: Batch) -> dict[str, Any]:
    last = max(batch.times.values(), default=batch.created)
    counted = batch.status not in (VALIDATING, FAILED)
    meta: dict[str, Any] = {
        "@type": BATCH_TYPE,
        "name": batch.id,
        "model": f"models/{batch.model}",
        "inputConfig": {"fileName": batch.input_file},
        "createTime": _time(batch.created),
        "updateTime": _time(last),
        "batchStats": {"requestCount": str(batch.total if counted else 0),
                       "successfulRequestCount": str(batch.completed),
                       "failedRequestCount": str(batch.failed),
                       "pendingRequestCount": str(batch.total - batch.answered if counted and
                                                  batch.status not in TERMINAL else 0)},
        "state": WIRE_STATE[batch.status],
        "priority": batch.extra.get("priority", "0"),
    }
    if batch.display_name is not None:
        meta["displayName"] = batch.display_name
    done = batch.status in TERMINAL
    if done:
        meta["endTime"] = _time(last)
    if batch.output_file is not None:
        meta["output"] = {"responsesFile": batch.output_file}
    operation: dict[str, Any] = {"name": batch.id, "metadata": meta}
    if done:
        operation["done"] = True
        if batch.output_file is not None:
            operation["response"] = {"@type": OUTPUT_TYPE, "responsesFile": batch.output_file}
        if batch.status == FAILED and batch.errors:
            first = batch.errors[0]
            code = 3 if first.get("line") is not None or first.get("code") == 3 else 8
            operation["error"] = {"code": code, "message": str(first.get("message", ""))}
        elif batch.status == EXPIRED:
            operation["error"] = {"code": 4, "message": "The batch expired before all requests were processed "
                                  "(48 h); no results are kept. Submit the requests again."}
    return operation
