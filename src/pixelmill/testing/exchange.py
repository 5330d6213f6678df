"""One request's way through the emulator, the same for every API: observe, admit, send.

Every image route runs the same sequence: the `observe` middleware opens a log record and counts the request in
flight (and turns a raised `WireError` into its answer); the route checks the key and validates the request
(fast 401/400/404 answers), then `admit` applies `fail_after`, prompt markers, the configured rate limit and the
random fault draw; quick faults (429, 401, quota) answer at once, the others after the drawn latency; `send`
delivers the answer (or its corrupted form: truncated, malformed, invalid base64). Each route supplies its API's
error shapes to `admit` as two small functions, so this module knows no API.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from pixelmill.testing import wire_errors as we
from pixelmill.testing.faults import Decision, Markers
from pixelmill.testing.log import RequestRecord, carries_key, public_headers
from pixelmill.testing.state import EmulatorState

# The emulator's mark on every answer (read by providers/http.py as EMULATOR_HEADER).
EMULATOR_HEADER = "x-pixelmill-emulator"

QUICK_FAULTS = frozenset({"rate_limit", "rate_limit_no_header", "auth", "quota"})
STATUS_OF_FAULT = {"server_error": 500, "bad_gateway": 502, "unavailable": 503, "gateway_timeout": 504}
# Faults that damage a 200 answer in `send` rather than replace it.
CONTENT_FAULTS = frozenset({"truncated", "malformed", "invalid_base64"})

FaultError = Callable[[str, float | None], we.WireError | None]  # a fault's error answer in the route's API
RateLimited = Callable[[float | None, str], we.WireError]  # (retry after, "requests" | "images") -> the 429


@dataclass(slots=True)
class Exchange:
    """What the emulator keeps about one request while it is being answered."""

    record: RequestRecord
    cut: bool = False  # the connection was closed on purpose: nothing more may be written
    rate_headers: dict[str, str] = field(default_factory=dict)


EXCHANGE: web.RequestKey[Exchange] = web.RequestKey("pixelmill_exchange", Exchange)


def exchange(request: web.Request) -> Exchange:
    return request[EXCHANGE]


def tag(request: web.Request, family: str, endpoint: str) -> RequestRecord:
    """Name the API family and endpoint of this request in its log record."""
    record = exchange(request).record
    record.family = family
    record.endpoint = endpoint
    return record


def observe(state: EmulatorState) -> Middleware:
    """The middleware that logs every request, counts it in flight and answers the `WireError`s routes raise."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        record = RequestRecord(
            id="req_" + secrets.token_hex(16),
            seq=state.next_seq(),
            family="other",
            endpoint="unknown",
            method=request.method,
            path=request.path,
            started=time.monotonic(),
            content_type=request.content_type,
            bytes_in=request.content_length or 0,
            headers=public_headers(request.headers),
            key_sent=carries_key(request.headers, request.query),
        )
        ex = Exchange(record)
        request[EXCHANGE] = ex
        state.arrived(record)
        try:
            try:
                response = await handler(request)
            except we.WireError as err:
                response = error_response(record, err)
            if record.status is None and not ex.cut:
                record.status = response.status
            response.headers.setdefault("x-request-id", record.id)
            return response
        except asyncio.CancelledError:
            record.status = record.status or 499  # the client went away (nginx's "client closed request")
            raise
        finally:
            state.in_flight -= 1
            record.finished = time.monotonic()

    return middleware


def error_response(record: RequestRecord, err: we.WireError) -> web.Response:
    record.status = err.status
    record.error_code = err.code
    inner = err.body.get("error")
    detail = err.body.get("detail")
    if isinstance(inner, str):  # Hugging Face
        record.error_message = inner
    elif isinstance(inner, dict):
        message = inner.get("message")
        record.error_message = message if isinstance(message, str) else None
    elif isinstance(detail, str):  # fal, Replicate and FastAPI-style bodies
        record.error_message = detail
    elif isinstance(detail, list) and detail and isinstance(detail[0], dict):
        record.error_message = str(detail[0].get("msg"))
    body = orjson.dumps(err.body)
    record.bytes_out = len(body)
    headers = {"x-request-id": record.id, **err.headers}
    return web.Response(status=err.status, body=body, content_type="application/json", headers=headers)


async def admit(
    state: EmulatorState,
    request: web.Request,
    *,
    images: int,
    markers: Markers,
    fault_error: FaultError,
    rate_limited: RateLimited,
    rate_headers: bool = True,
) -> Decision:
    """Decide this request's fate and wait its latency. Raises the WireError of quick answers (rate limit,
    auth and quota faults) and of error faults (5xx, moderation); returns the decision for content faults."""
    ex = exchange(request)
    record = ex.record
    config = state.config
    state.admitted += 1
    decision = state.dice.decide(config, state.admitted, markers)
    record.fault = decision.fault
    limit_headers: dict[str, str] = {}
    if config.rpm is not None or config.ipm is not None:
        verdict = state.window.check(time.monotonic(), images, config.rpm, config.ipm, config.rate_window)
        limit_headers = verdict.headers if rate_headers else {}
        if verdict.retry_after is not None:
            record.fault = None
            err = rate_limited(verdict.retry_after, verdict.what)
            err.headers.update(limit_headers)
            raise err
    ex.rate_headers = limit_headers  # OpenAI's x-ratelimit-* headers; Gemini sends none
    fault = decision.fault
    if fault in QUICK_FAULTS:
        hint = config.retry_after if fault == "rate_limit" else None
        if fault in ("rate_limit", "rate_limit_no_header"):
            raise rate_limited(hint, "requests")
        quick = fault_error(fault, None)
        if quick is not None:
            raise quick
    if fault == "timeout":
        record.latency = config.timeout_hold
        await asyncio.sleep(config.timeout_hold)
        raise fault_error("gateway_timeout", None) or we.openai_server(504)
    if decision.latency > 0:
        record.latency = decision.latency
        await asyncio.sleep(decision.latency)
    if fault == "reset":
        cut(request)
    if fault is not None and fault not in CONTENT_FAULTS:
        late = fault_error(fault, None)
        if late is not None:
            raise late
    return decision


def cut(request: web.Request) -> None:
    """Close the connection at once, without an answer (a TCP reset where the platform allows)."""
    ex = exchange(request)
    ex.cut = True
    ex.record.status = None
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def send(
    request: web.Request,
    payload: dict[str, Any],
    decision: Decision,
    *,
    corrupt: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """The 200 answer, or the fault's damaged version of it."""
    ex = exchange(request)
    record = ex.record
    # The emulator's mark (providers/http.py EMULATOR_HEADER): a real run never takes its images for its own.
    all_headers = {"x-request-id": record.id, EMULATOR_HEADER: "1", **ex.rate_headers, **(headers or {})}
    fault = decision.fault
    if fault == "reset" or ex.cut:
        return web.Response(status=200)  # the transport is gone; this is never written
    if fault == "invalid_base64" and corrupt is not None:
        payload = corrupt(payload)
    body = orjson.dumps(payload)
    if fault == "malformed":
        body = body[: max(1, len(body) // 3)] + b"<html>upstream error</html>"
    if fault == "truncated":
        _send_truncated(request, body, all_headers)
        return web.Response(status=200)
    record.bytes_out = len(body)
    return web.Response(body=body, content_type="application/json", headers=all_headers)


def _send_truncated(request: web.Request, body: bytes, headers: dict[str, str]) -> None:
    """Declare the whole body's length, write half of it, close: what a client sees when a proxy dies mid-answer."""
    ex = exchange(request)
    ex.record.status = 200
    ex.record.bytes_out = len(body) // 2
    ex.cut = True
    transport = request.transport
    if transport is None:
        return
    head = [
        "HTTP/1.1 200 OK",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
        "",
        "",
    ]
    transport.write("\r\n".join(head).encode("latin-1") + body[: len(body) // 2])
    transport.close()


def media_response(state: EmulatorState, request: web.Request, family: str, gone_status: int = 404,
                   gone_body: str = "The requested media has expired or never existed") -> web.StreamResponse:
    """A media object on a CDN-like path: no key asked for (the log's `key_sent` says whether one came)."""
    record = tag(request, family, "media")
    found = state.media.get(request.match_info["name"])
    if found is None:
        record.status = gone_status
        return web.Response(status=gone_status, text=gone_body)
    record.bytes_out = len(found.data)
    return web.Response(body=found.data, content_type=found.mime)
