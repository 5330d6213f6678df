"""Gemini Batch Mode for images, on the wire (reference: async-apis.md §2): the JSONL line of one request, the File
API's resumable upload of the input file, a batch's creation (`models/{model}:batchGenerateContent`), retrieval,
listing and cancel, the results file streamed to disk, and one result line turned into the `ImageResult` (or the
error) that `generateContent` would have given.

Policy is the engine's (engine/batch/); this module speaks the contract of providers/batchwire.py and reuses the
synchronous wire of providers/gemini/provider.py: a line's `request` is `request_body` (edit lines carry their
input images as `inlineData`), a `response` is read by `read_answer` (a response without an image is `Refused`
with its finishReason, as a synchronous call's), an `error` is mapped by `error_from_answer`.

Choices that are ours where the reference says UNCONFIRMED:
- At most `MAX_LINES` (10,000) lines per batch: Gemini documents no line limit, only the 2 GB input file and
  batch rate limits (enqueued tokens per model) whose numbers are not published; an expired Gemini batch
  returns nothing, so smaller batches lose less. `MAX_FILE_BYTES` is 2 GB counted as 2·10⁹ bytes.
- The input file is uploaded without a client-chosen `name` (its conflict behaviour is UNCONFIRMED): a file
  whose upload was cut is an orphan the File API deletes after 48 h, and its rows go into a new file.
- The upload URL gets the key only when it is on the base URL's host (the SDK sends it; no other host gets it).
- An `error` line is read as google.rpc.Status `{code, message, status}` (`code` an rpc code, or an HTTP status
  when it is one); a line whose status is CANCELLED is no answer (its row is sent again).
- A batch's `expires_at` is its `createTime` + 48 h (the documented expiry); a failed batch's reason is the
  Operation's top-level `error` (or `metadata.error`); `JOB_STATE_*` is read as `BATCH_STATE_*`; an Operation
  that is `done` in a state we do not know reads as failed.
- A create whose answer is lost (a reset, a cut or garbled answer, a 5xx) may have made the batch: the batches
  are listed for its `displayName` at once and the one found is returned; the create is never sent twice.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from pixelmill.errors import ProviderError, Rejected, TransientError, Unreachable
from pixelmill.models.table import ModelSpec
from pixelmill.netpolicy import strip_userinfo
from pixelmill.providers.base import ImageRequest, ImageResult
from pixelmill.providers.batchwire import BatchState, BatchSummary, LineAnswer, downloaded_answers
from pixelmill.providers.boundary import code, obj, scrub_error, scrub_result, text
from pixelmill.providers.gemini.provider import GeminiProvider, error_from_answer, read_answer, request_body
from pixelmill.providers.http import EMULATOR_HEADER, parse_json, transport_error

MAX_LINES = 10_000
MAX_FILE_BYTES = 2_000_000_000
CHUNK_BYTES = 8 * 1024 * 1024  # an upload chunk, as google-genai sends them: the most held in memory
EXPIRY = 48 * 3600.0
# The wire's states in the contract's words (PENDING, RUNNING, UNSPECIFIED: running). The SDK says JOB_STATE_*.
_STATES: dict[str, BatchState] = {"SUCCEEDED": "completed", "FAILED": "failed", "EXPIRED": "expired",
                                  "CANCELLED": "cancelled", "PENDING": "running", "RUNNING": "running",
                                  "UNSPECIFIED": "running"}
# google.rpc.Code -> the HTTP status Google's front end gives it (what `error_from_answer` classifies by).
_RPC_HTTP = {1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400, 12: 501,
             13: 500, 14: 503, 15: 500, 16: 401}
_RPC_NAMES = {"CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
              "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
              "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
              "DATA_LOSS": 15, "UNAUTHENTICATED": 16}
_CALL_TIME = 300.0
_ANSWER_BYTES = 16 * 1024 * 1024  # an Operation or a list page
_DOWNLOAD_TIME = 3600.0


def line(custom_id: str, request: ImageRequest) -> bytes:
    """One JSONL line (with its newline): `{"key", "request"}`, the request as `generateContent`'s body."""
    return orjson.dumps({"key": custom_id, "request": request_body(request)}) + b"\n"


class GeminiBatchWire:
    """The batch calls of one Gemini provider (its key, base URL and connection pool)."""

    max_lines = MAX_LINES
    max_bytes = MAX_FILE_BYTES
    chunk_bytes = CHUNK_BYTES

    def __init__(self, provider: GeminiProvider) -> None:
        self.provider = provider
        self._http = provider._http
        self._emulated = False  # answers came from pixelmill's emulator: a rehearsal's, never a real run's

    # ------------------------------------------------------------ the wire's plumbing
    async def _base(self) -> str:
        """`https://host[/prefix]/v1beta`. The in-process emulator (`--provider emulator`) starts on first use."""
        started = getattr(self.provider, "_started", None)
        if started is not None:
            await started()
        return self.provider.base_url

    async def _route(self, prefix: str, path: str) -> str:
        """A path under the API version, or under `/upload/<version>` / `/download/<version>` (`prefix`)."""
        root, version = (await self._base()).rsplit("/", 1)
        return f"{root}/{prefix + '/' if prefix else ''}{version}/{path}"

    def _headers(self, **more: str) -> dict[str, str]:
        return {"x-goog-api-key": self.provider._key, **more}

    async def _json(self, method: str, path: str, *, label: str, body: dict[str, Any] | None = None,
                    params: dict[str, str] | None = None, model: str = "") -> Any:
        headers = self._headers(**({"Content-Type": "application/json"} if body is not None else {}))
        reply = await self._http.send(method, await self._route("", path), headers=headers, params=params,
                                      data=orjson.dumps(body) if body is not None else None,
                                      time_limit=_CALL_TIME, max_bytes=_ANSWER_BYTES, label=label)
        if reply.status != 200:
            raise self._error(reply.status, reply.body, reply.headers, model)
        return parse_json(reply.body, label=label, http_status=200)

    def _error(self, status: int, raw: bytes, headers: Any, model: str) -> ProviderError:
        spec = self.provider.spec_for(model or "batch")
        secrets = self.provider.secrets()
        error = error_from_answer(status, raw, headers, spec, model or "batch", secrets=secrets)
        if status == 404 and not model:  # a batch or file, not a model: the model table's advice does not apply
            error = Rejected(f"{str(error).split('. ', 1)[0]}; the batch or file is gone at the provider (deleted, "
                             "or past the File API's 48 h)", http_status=404, code=error.code)
        return scrub_error(error, secrets)

    def line(self, custom_id: str, request: ImageRequest) -> bytes:
        return line(custom_id, request)

    # ------------------------------------------------------------ upload
    async def upload(self, path: Path, name: str) -> str:
        """The File API's resumable upload: `start` (the upload URL comes back in `x-goog-upload-url`), then the
        file in `chunk_bytes` chunks read from disk, the last one with `finalize`. Returns `files/<id>`."""
        label = "Gemini batch upload"
        with path.open("rb") as source:
            size = os.fstat(source.fileno()).st_size
            start = await self._http.send(
                "POST", await self._route("upload", "files"), label=label, time_limit=_CALL_TIME,
                max_bytes=_ANSWER_BYTES, data=orjson.dumps({"file": {"displayName": name}}),
                headers=self._headers(**{"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
                                         "X-Goog-Upload-Header-Content-Length": str(size),
                                         "X-Goog-Upload-Header-Content-Type": "application/jsonl",
                                         "Content-Type": "application/json"}))
            if start.status != 200:
                raise self._error(start.status, start.body, start.headers, "")
            url = start.headers.get("x-goog-upload-url")
            if not url:
                raise TransientError(f"{label}: the answer to `start` names no upload URL (x-goog-upload-url)")
            # The key goes only where the base URL points: an upload URL on another host gets the upload id alone.
            keyed = urlsplit(url).netloc == urlsplit(await self._base()).netloc
            offset = 0
            while True:
                chunk = source.read(self.chunk_bytes)
                last = offset + len(chunk) >= size
                headers = {"X-Goog-Upload-Offset": str(offset),
                           "X-Goog-Upload-Command": "upload, finalize" if last else "upload"}
                reply = await self._http.send("POST", url, data=chunk, label=label, time_limit=_CALL_TIME,
                                              max_bytes=_ANSWER_BYTES,
                                              headers=self._headers(**headers) if keyed else headers)
                if reply.status != 200:
                    raise self._error(reply.status, reply.body, reply.headers, "")
                offset += len(chunk)
                if last:
                    break
                if reply.headers.get("x-goog-upload-status", "active").lower() != "active":
                    raise TransientError(f"{label}: the upload ended after {offset} of {size} bytes "
                                         f"(x-goog-upload-status: {reply.headers.get('x-goog-upload-status')})")
        answer = obj(parse_json(reply.body, label=label, http_status=200))
        name_ = text(obj(answer.get("file")).get("name"))
        if name_ is None:
            raise TransientError(f"{label}: the final answer names no file (`file.name`)")
        return name_

    # ------------------------------------------------------------ batches
    async def create(self, file_id: str, request: ImageRequest, name: str) -> BatchSummary:
        """Create a batch of `file_id`'s lines under `displayName` `name`. A lost answer is looked up by name
        (never sent again): the batch is returned when it exists, the error raised when it does not."""
        model = request.model.removeprefix("models/")
        label = "Gemini batch create"
        try:
            answer = await self._json("POST", f"models/{quote(model, safe='.-_')}:batchGenerateContent",
                                      label=label, model=model, body={"batch": {
                                          "displayName": name, "inputConfig": {"fileName": file_id}}})
        except TransientError as exc:
            if isinstance(exc, Unreachable):  # nothing was sent
                raise
            try:
                found = await self.find(name, file_id)
            except ProviderError:
                raise exc from None  # the create's own error: the next run's recovery lists again
            if found is None:
                raise
            return found
        return summary(_operation(answer, label))

    async def get(self, batch_id: str) -> BatchSummary:
        label = "Gemini batch status"
        return summary(_operation(await self._json("GET", _path(batch_id), label=label), label))

    async def cancel(self, batch_id: str) -> BatchSummary:
        """`:cancel` answers with nothing: the batch is read again for its state."""
        await self._json("POST", f"{_path(batch_id)}:cancel", label="Gemini batch cancel", body={})
        return await self.get(batch_id)

    async def find(self, name: str, file_id: str | None) -> BatchSummary | None:
        """The batch whose `displayName` is `name` (or whose input is `file_id`), listing every page."""
        token: str | None = None
        while True:
            params = {"pageSize": "100", **({"pageToken": token} if token else {})}
            page = obj(await self._json("GET", "batches", params=params, label="Gemini batch list"))
            operations = page.get("operations")
            for operation in operations if isinstance(operations, list) else []:
                meta = obj(obj(operation).get("metadata"))
                source = obj(meta.get("inputConfig"))
                if text(obj(operation).get("name")) and (meta.get("displayName") == name or (
                        file_id and source.get("fileName") == file_id)):
                    return summary(operation)
            token = text(page.get("nextPageToken"))
            if not token or not operations:
                return None

    # ------------------------------------------------------------ results
    async def answers(self, batch: BatchSummary, folder: Path) -> AsyncIterator[LineAnswer]:
        """The results file's lines (`{key, response}` or `{key, error}`), downloaded to `folder` first and
        removed after. An expired or failed batch has no results file: no line, every row unanswered."""
        async for answer in downloaded_answers(self.download, batch.files, folder, batch.id.rsplit("/", 1)[-1],
                                               "key"):
            yield answer

    async def download(self, file_id: str, dest: Path) -> None:
        """Stream a generated file to `dest` (a results file may be GBs: never held in memory)."""
        label = "Gemini batch download"
        url = await self._route("download", f"{_path(file_id)}:download")
        try:
            async with self._http.session().get(url, params={"alt": "media"}, headers=self._headers(),
                                                timeout=self._http.timeout(_DOWNLOAD_TIME)) as resp:
                if resp.status != 200:
                    body = await resp.content.read(_ANSWER_BYTES)
                    raise self._error(resp.status, body, resp.headers, "")
                self._emulated = self._emulated or bool(resp.headers.get(EMULATOR_HEADER))
                with dest.open("wb") as out:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        out.write(chunk)
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(exc, label=label, time_limit=_DOWNLOAD_TIME, maybe_billed=False) from exc

    def unanswered(self, answer: LineAnswer) -> bool:
        return _rpc_code(obj(answer.body.get("error"))) == 1  # CANCELLED: the request never ran

    async def result(self, answer: LineAnswer, request: ImageRequest, spec: ModelSpec) -> ImageResult | None:
        """A `response` line as `generateContent`'s result; `Refused` (raised) when it holds no image."""
        response = answer.body.get("response")
        if response is None or "error" in answer.body:
            return None
        secrets = self.provider.secrets()
        try:
            result = read_answer(response, request.model.removeprefix("models/"), secrets=secrets)
        except ProviderError as exc:
            raise scrub_error(exc, secrets) from exc.__cause__
        if self._emulated:
            result.extra["emulated"] = strip_userinfo(await self._base())
        return scrub_result(result, secrets)

    def error(self, answer: LineAnswer, model: str) -> ProviderError:
        """An `error` line as the error its synchronous call would have raised (by its rpc code's HTTP status)."""
        error = obj(answer.body.get("error"))
        rpc = _rpc_code(error)
        status = rpc if rpc is not None and rpc >= 100 else _RPC_HTTP.get(rpc or 2, 500)
        if not error:
            error = {"message": "the batch's answer line holds neither a response nor an error"}
        headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        return self._error(status, orjson.dumps({"error": error}), headers, model.removeprefix("models/"))


def summary(operation: dict[str, Any]) -> BatchSummary:
    """A batch's Operation in the contract's words."""
    meta = obj(operation.get("metadata"))
    status = code(meta.get("state")) or "BATCH_STATE_UNSPECIFIED"
    state = _STATES.get(status.removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_"))
    if state is None or (state == "running" and operation.get("done") is True):
        state = "failed"  # ended, in a state we do not know: nothing to collect, its rows are sent again
    stats = obj(meta.get("batchStats"))
    results = text(obj(operation.get("response")).get("responsesFile")) or \
        text(obj(meta.get("output")).get("responsesFile"))
    error = obj(operation.get("error")) or obj(meta.get("error"))
    created = _when(meta.get("createTime"))
    return BatchSummary(
        id=str(operation.get("name") or meta.get("name")), state=state, status=status,
        total=_int(stats.get("requestCount")), completed=_int(stats.get("successfulRequestCount")),
        failed=_int(stats.get("failedRequestCount")), expires_at=created + EXPIRY if created else None,
        errors=text(error.get("message")), files=[results] if results else [])


def _operation(answer: Any, label: str) -> dict[str, Any]:
    if not isinstance(answer, dict) or not isinstance(answer.get("name"), str):
        raise TransientError(f"{label}: the answer is not a batch Operation (no `name`)")
    return answer


def _path(name: str) -> str:
    """`batches/abc` / `files/abc` as a URL path (the slash kept, anything odd quoted)."""
    return quote(name, safe="/-_.")


def _rpc_code(error: dict[str, Any]) -> int | None:
    value = error.get("code")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    name = code(error.get("status")) or (value if isinstance(value, str) else None)
    return _RPC_NAMES.get(name or "")


def _when(value: Any) -> float | None:
    stamp = text(value)
    if stamp is None:
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
