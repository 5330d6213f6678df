"""The OpenAI Batch API for images, on the wire (reference: async-apis.md §1): the JSONL line of one request,
the input file's upload, a batch's creation, retrieval, listing and cancel, the output and error files streamed
to disk, and one output line turned into the `ImageResult` (or the error) a synchronous call would have given.

Policy is the engine's (engine/batch/): what goes in which batch, the journal, waiting and collecting; this
module speaks the contract of providers/batchwire.py. Every call here is sent once (no retry inside):
`POST /v1/batches` has no idempotency key, so a lost answer is found again by listing batches for the name the
engine gave it (metadata `pixelmill_batch`) or its input file (`find`), never by sending it twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pybase64
from multidict import CIMultiDict, CIMultiDictProxy

from pixelmill.errors import ProviderError, TransientError
from pixelmill.models.table import ModelSpec
from pixelmill.providers.base import ImageRequest, ImageResult
from pixelmill.providers.batchwire import BatchState, BatchSummary, LineAnswer, downloaded_answers
from pixelmill.providers.http import Reply, parse_json, transport_error
from pixelmill.providers.openai.errors import ErrorContext, error_from_reply
from pixelmill.providers.openai.provider import OpenAIProvider

ENDPOINTS = {"generate": "/v1/images/generations", "edit": "/v1/images/edits"}
MAX_LINES = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
# The provider's states in the contract's words (`validating`, `in_progress`, `finalizing`, `cancelling`: running).
_STATES: dict[str, BatchState] = {"completed": "completed", "failed": "failed", "expired": "expired",
                                  "cancelled": "cancelled"}
_CALL_TIME = 300.0
_ANSWER_BYTES = 16 * 1024 * 1024  # a batch object or a list page


def line(custom_id: str, request: ImageRequest) -> bytes:
    """One JSONL line (with its newline) for `request`: the synchronous JSON body, in a batch envelope."""
    body: dict[str, Any] = {"model": request.model, "prompt": request.prompt, **request.params}
    if request.task == "edit":
        # A JSONL line cannot carry multipart: the JSON edits body, its images as data URLs (UNCONFIRMED by an
        # OpenAI page; the emulator takes this form, reference §1.3).
        body["images"] = [{"image_url": _data_url(image.data, image.mime)} for image in request.images]
        if request.mask is not None:
            body["mask"] = {"image_url": _data_url(request.mask.data, request.mask.mime)}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINTS[request.task],
                         "body": body}) + b"\n"


class OpenAIBatchWire:
    """The batch calls of one OpenAI provider (its key, base URL and connection pool)."""

    max_lines = MAX_LINES
    max_bytes = MAX_FILE_BYTES

    def __init__(self, provider: OpenAIProvider) -> None:
        self.provider = provider
        self.base = provider.base_url
        self.http = provider.http
        self.headers = provider.headers

    async def _json(self, method: str, path: str, *, data: Any = None, label: str,
                    params: dict[str, str] | None = None) -> Any:
        headers = dict(self.headers)
        if isinstance(data, dict):
            data = orjson.dumps(data)
            headers["Content-Type"] = "application/json"
        reply = await self.http.send(method, f"{self.base}/{path}", data=data, headers=headers, params=params,
                                      time_limit=_CALL_TIME, max_bytes=_ANSWER_BYTES, label=label)
        if reply.status != 200:
            raise error_from_reply(reply, self._context(label, ""))
        return parse_json(reply.body, label=label, http_status=200)

    def _context(self, label: str, model: str) -> ErrorContext:
        spec = self.provider.spec_for(model or "batch")
        return ErrorContext(label=label, model=model, spec=spec, key_hint=self.provider.key_hint(),
                            secrets=self.provider.secrets())

    def line(self, custom_id: str, request: ImageRequest) -> bytes:
        return line(custom_id, request)

    async def upload(self, path: Path, name: str) -> str:
        """Upload a JSONL file (`purpose=batch`), streamed from disk. Returns the file id."""
        with path.open("rb") as fh:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", fh, filename=path.name, content_type="application/jsonl")
            answer = await self._json("POST", "files", data=form, label="openai batch upload")
        file_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(file_id, str):
            raise TransientError("openai batch upload: the answer names no file id")
        return file_id

    async def create(self, file_id: str, request: ImageRequest, name: str) -> BatchSummary:
        answer = await self._json("POST", "batches", label="openai batch create", data={
            "input_file_id": file_id, "endpoint": ENDPOINTS[request.task], "completion_window": "24h",
            "metadata": {"pixelmill_batch": name}})
        return summary(_batch(answer, "openai batch create"))

    async def get(self, batch_id: str) -> BatchSummary:
        return summary(_batch(await self._json("GET", f"batches/{batch_id}", label="openai batch status"),
                              "openai batch status"))

    async def cancel(self, batch_id: str) -> BatchSummary:
        return summary(_batch(await self._json("POST", f"batches/{batch_id}/cancel", label="openai batch cancel"),
                              "openai batch cancel"))

    async def find(self, name: str, file_id: str | None) -> BatchSummary | None:
        """The batch created under `name` (metadata) or on input file `file_id`, listing every page; None when
        none exists (its creation never reached the provider)."""
        after: str | None = None
        while True:
            params = {"limit": "100", **({"after": after} if after else {})}
            page = await self._json("GET", "batches", params=params, label="openai batch list")
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list):
                return None
            for batch in data:
                if not isinstance(batch, dict) or not isinstance(batch.get("id"), str):
                    continue
                meta = batch.get("metadata") or {}
                if (isinstance(meta, dict) and meta.get("pixelmill_batch") == name) or (
                        file_id and batch.get("input_file_id") == file_id):
                    return summary(batch)
            if not page.get("has_more") or not data:
                return None
            after = str(data[-1].get("id"))

    async def answers(self, batch: BatchSummary, folder: Path) -> AsyncIterator[LineAnswer]:
        """The output file's lines, then the error file's, each downloaded to `folder` first and removed after."""
        async for answer in downloaded_answers(self.download, batch.files, folder, batch.id, "custom_id"):
            yield answer

    def unanswered(self, answer: LineAnswer) -> bool:
        error = answer.body.get("error")
        return isinstance(error, dict) and error.get("code") in ("batch_expired", "batch_cancelled")

    async def download(self, file_id: str, dest: Path) -> None:
        """Stream a file's content to `dest` (an output file may be GBs: never held in memory)."""
        label = "openai batch download"
        url = f"{self.base}/files/{file_id}/content"
        try:
            async with self.http.session().get(url, headers=self.headers,
                                                timeout=self.http.timeout(3600)) as resp:
                if resp.status != 200:
                    body = await resp.content.read(_ANSWER_BYTES)
                    raise error_from_reply(Reply(resp.status, resp.headers, body), self._context(label, ""))
                with dest.open("wb") as out:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        out.write(chunk)
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(exc, label=label, time_limit=3600, maybe_billed=False) from exc

    async def result(self, answer: LineAnswer, request: ImageRequest, spec: ModelSpec) -> ImageResult | None:
        """A successful line's body as the synchronous call's result (images decoded, usage kept)."""
        response = answer.body.get("response")
        if not isinstance(response, dict) or response.get("status_code") != 200:
            return None
        label = f"openai batch {request.model}"
        request_id = _text(response.get("request_id"))
        return await self.provider.read_result(response.get("body"), request, spec, request_id, label)

    def error(self, answer: LineAnswer, model: str) -> ProviderError:
        """A failed line as the error its synchronous call would have raised (refused, rejected, transient)."""
        label = f"openai batch {model}"
        entry = answer.body
        response = entry.get("response")
        if isinstance(response, dict) and isinstance(response.get("status_code"), int):
            headers = CIMultiDictProxy(CIMultiDict({"x-request-id": _text(response.get("request_id")) or ""}))
            reply = Reply(int(response["status_code"]), headers, orjson.dumps(response.get("body")))
            return error_from_reply(reply, self._context(label, model))
        err = entry.get("error") if isinstance(entry.get("error"), dict) else {}
        assert isinstance(err, dict)
        return TransientError(f"{label}: {err.get('code') or 'error'}: {err.get('message') or 'no message'}",
                              code=_text(err.get("code")))


def summary(batch: dict[str, Any]) -> BatchSummary:
    """An OpenAI batch object in the contract's words."""
    counts = batch.get("request_counts") if isinstance(batch.get("request_counts"), dict) else {}
    assert isinstance(counts, dict)
    status = str(batch.get("status"))
    expires = batch.get("expires_at")
    return BatchSummary(
        id=str(batch["id"]), state=_STATES.get(status, "running"), status=status,
        total=_int(counts.get("total")), completed=_int(counts.get("completed")), failed=_int(counts.get("failed")),
        expires_at=float(expires) if isinstance(expires, int | float) else None, errors=_errors(batch),
        files=[str(f) for f in (batch.get("output_file_id"), batch.get("error_file_id")) if isinstance(f, str) and f])


def _errors(batch: dict[str, Any]) -> str | None:
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    if not isinstance(data, list) or not data:
        return None
    parts = [f"line {e.get('line')}: {e.get('message')}" if e.get("line") else str(e.get("message"))
             for e in data[:5] if isinstance(e, dict)]
    return "; ".join(parts) or None


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{pybase64.b64encode(data).decode('ascii')}"


def _batch(answer: Any, label: str) -> dict[str, Any]:
    if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
        raise TransientError(f"{label}: the answer is not a batch object")
    return answer


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
