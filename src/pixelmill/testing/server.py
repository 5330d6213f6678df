"""The emulator's server: lifecycle, the request log, in-flight counts, and what every route shares.

Every image route runs the same sequence: the middleware opens a log record and counts the request in flight;
the route checks the key and validates the request (fast 401/400/404 answers), then `admit` applies
`fail_after`, prompt markers, the configured rate limit and the random fault draw; quick faults (429, 401,
quota) answer at once, the others after the drawn latency; `send` delivers the answer (or its corrupted form:
truncated, malformed, invalid base64).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from pixelmill.errors import ConfigError
from pixelmill.models.table import ModelTable, builtin_table
from pixelmill.testing import wire_errors as we
from pixelmill.testing.config import EmulatorConfig
from pixelmill.testing.faults import Decision, FaultDice, Markers
from pixelmill.testing.images import ImageCache
from pixelmill.testing.log import RequestLog, RequestRecord, public_headers
from pixelmill.testing.ratelimit import SlidingWindow

RECORD_KEY: web.AppKey[Any] = web.AppKey("pixelmill_emulator")


@dataclass(slots=True)
class Exchange:
    """What the emulator keeps about one request while it is being answered."""

    record: RequestRecord
    cut: bool = False  # the connection was closed on purpose: nothing more may be written
    rate_headers: dict[str, str] = field(default_factory=dict)


EXCHANGE: web.RequestKey[Exchange] = web.RequestKey("pixelmill_exchange", Exchange)


def exchange(request: web.Request) -> Exchange:
    return request[EXCHANGE]
QUICK_FAULTS = frozenset({"rate_limit", "rate_limit_no_header", "auth", "quota"})
STATUS_OF_FAULT = {"server_error": 500, "bad_gateway": 502, "unavailable": 503, "gateway_timeout": 504}


def check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"the emulator binds loopback addresses only (127.0.0.1, ::1, localhost), not {host!r}: it accepts "
            "any key and must not be reachable from other machines"
        )


class Emulator:
    """A local stand-in for the OpenAI, Azure OpenAI and Gemini image APIs.

    `async with Emulator(...) as emu:` serves on the running loop; `with Emulator(...).run_in_thread() as emu:`
    serves from a daemon thread with its own loop (for sync code and the CLI). Keyword arguments beyond the
    three below are config fields (`Emulator(latency=0.05, faults={"server_error": 0.1})`).
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        table: ModelTable | None = None,
        **changes: Any,
    ) -> None:
        check_loopback(host)
        base = config or EmulatorConfig()
        # Validated as a whole (model_copy would skip validation: a plain set of keys would stay a set).
        self._config = EmulatorConfig.model_validate({**base.model_dump(), **changes}) if changes else base
        if changes:
            self._config = EmulatorConfig.model_validate(self._config.model_dump())
        self.host = host
        self._port = port
        self.table = table or builtin_table()
        self.images = ImageCache()
        self.secret = secrets.token_bytes(32)  # signs Gemini thought signatures
        self._log = RequestLog(self._config.max_log)
        self._dice = FaultDice(self._config.seed)
        self._window = SlidingWindow()
        self._seq = 0
        self._admitted = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.files: dict[str, tuple[bytes, str]] = {}  # DALL·E url answers: id -> (bytes, mime)
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ configuration

    @property
    def config(self) -> EmulatorConfig:
        return self._config

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Change settings while running (thread-safe: the config is replaced as a whole). A new `seed`
        restarts the random draws; new rate limits start from an empty window."""
        new = EmulatorConfig.model_validate({**self._config.model_dump(), **changes})
        if "seed" in changes:
            self._dice.reseed(new.seed)
        if {"rpm", "ipm", "rate_window"} & set(changes):
            self._window.reset()
        if "fail_after" in changes:
            self._admitted = 0
        self._log.resize(new.max_log)
        self._config = new
        return new

    # ------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("the emulator is not running: use `async with Emulator()` or `.run_in_thread()`")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def gemini_base_url(self) -> str:
        return self.url

    @property
    def azure_endpoint(self) -> str:
        return self.url

    # ------------------------------------------------------------ the log

    @property
    def log(self) -> list[RequestRecord]:
        return list(self._log)

    def records(self, **filters: Any) -> list[RequestRecord]:
        """Log records whose fields match: `emu.records(status=429)`, `emu.records(status=lambda s: s >= 500)`."""
        return self._log.select(**filters)

    def count(self, **filters: Any) -> int:
        return len(self._log.select(**filters))

    def reset_log(self) -> None:
        """Forget the log, `max_in_flight`, the `fail_after` count and the rate-limit window."""
        self._log.clear()
        self.max_in_flight = self.in_flight
        self._admitted = 0
        self._window.reset()

    # ------------------------------------------------------------ lifecycle

    def app(self) -> web.Application:
        from pixelmill.testing import gemini_routes, openai_routes

        app = web.Application(middlewares=[self._observe], client_max_size=256 * 1024 * 1024)
        app[RECORD_KEY] = self
        openai_routes.register(app, self)
        gemini_routes.register(app, self)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def start(self) -> Emulator:
        if self._runner is not None:
            return self
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None, shutdown_timeout=0.5,
                               handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, reuse_address=True, backlog=1024)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self._port = sockets[0].getsockname()[1]
        self._runner = runner
        self._loop = asyncio.get_running_loop()
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def run_in_thread(self) -> ThreadRunner:
        """Serve from a daemon thread with its own event loop: `with Emulator().run_in_thread() as emu:`."""
        return ThreadRunner(self)

    # ------------------------------------------------------------ per request

    @web.middleware
    async def _observe(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self._seq += 1
        record = RequestRecord(
            id="req_" + secrets.token_hex(16),
            seq=self._seq,
            family="other",
            endpoint="unknown",
            method=request.method,
            path=request.path,
            started=time.monotonic(),
            content_type=request.content_type,
            bytes_in=request.content_length or 0,
            headers=public_headers(request.headers),
        )
        ex = Exchange(record)
        request[EXCHANGE] = ex
        self._log.append(record)
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        try:
            try:
                response = await handler(request)
            except we.WireError as err:
                response = self.error_response(record, err)
            if record.status is None and not ex.cut:
                record.status = response.status
            response.headers.setdefault("x-request-id", record.id)
            return response
        except asyncio.CancelledError:
            record.status = record.status or 499  # the client went away (nginx's "client closed request")
            raise
        finally:
            self.in_flight -= 1
            record.finished = time.monotonic()

    def error_response(self, record: RequestRecord, err: we.WireError) -> web.Response:
        record.status = err.status
        record.error_code = err.code
        inner = err.body.get("error")
        if isinstance(inner, dict):
            message = inner.get("message")
            record.error_message = message if isinstance(message, str) else None
        body = orjson.dumps(err.body)
        record.bytes_out = len(body)
        headers = {"x-request-id": record.id, **err.headers}
        return web.Response(status=err.status, body=body, content_type="application/json", headers=headers)

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith(("/v1beta", "/v1alpha")):
            raise we.gemini_error(404, "NOT_FOUND", f"Requested entity was not found: {request.path}")
        raise we.openai_route_not_found(request.method, request.path)

    def check_key(self, present: str | None) -> bool:
        """Whether `present` is an accepted key. Raises nothing; the route picks the family's error."""
        if not present:
            return False
        keys = self._config.api_keys
        return keys is None or present in keys

    async def admit(
        self,
        request: web.Request,
        *,
        images: int,
        markers: Markers,
        fault_error: Callable[[str, float | None], we.WireError | None],
        rate_limited: Callable[[float | None, str], we.WireError],
        rate_headers: bool = True,
    ) -> Decision:
        """Decide this request's fate and wait its latency. Raises the WireError of quick answers (rate limit,
        auth and quota faults) and of error faults (5xx, moderation); returns the decision for content faults."""
        ex = exchange(request)
        record = ex.record
        config = self._config
        self._admitted += 1
        decision = self._dice.decide(config, self._admitted, markers)
        record.fault = decision.fault
        limit_headers: dict[str, str] = {}
        if config.rpm is not None or config.ipm is not None:
            verdict = self._window.check(time.monotonic(), images, config.rpm, config.ipm, config.rate_window)
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
            self.cut(request)
        if fault is not None and fault not in ("truncated", "malformed", "invalid_base64"):
            late = fault_error(fault, None)
            if late is not None:
                raise late
        return decision

    def dice_choice(self, options: tuple[str, ...]) -> str:
        """A seeded choice (for faults with variants)."""
        return self._dice.choice(options)

    def cut(self, request: web.Request) -> None:
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
        self,
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
        all_headers = {"x-request-id": record.id, **ex.rate_headers, **(headers or {})}
        fault = decision.fault
        if fault == "reset" or ex.cut:
            return web.Response(status=200)  # the transport is gone; this is never written
        if fault == "invalid_base64" and corrupt is not None:
            payload = corrupt(payload)
        body = orjson.dumps(payload)
        if fault == "malformed":
            body = body[: max(1, len(body) // 3)] + b"<html>upstream error</html>"
        if fault == "truncated":
            self._send_truncated(request, body, all_headers)
            return web.Response(status=200)
        record.bytes_out = len(body)
        return web.Response(body=body, content_type="application/json", headers=all_headers)

    def _send_truncated(self, request: web.Request, body: bytes, headers: dict[str, str]) -> None:
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


class ThreadRunner:
    """Runs an Emulator on its own loop in a daemon thread. A context manager; `start()`/`stop()` also work."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Emulator:
        if self._thread is not None:
            return self.emulator
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.emulator.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.emulator.stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=main, name="pixelmill-emulator", daemon=True)
        thread.start()
        if not ready.wait(60):
            raise RuntimeError("the emulator did not start within 60 s")
        if failure:
            thread.join()
            raise failure[0]
        self._loop, self._thread = loop, thread
        return self.emulator

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 8000,
          *, on_ready: Callable[[Emulator], None] | None = None) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM). `on_ready` gets the running emulator (to print its URLs)."""

    async def main() -> None:
        emulator = Emulator(config, host, port)
        async with emulator:
            if on_ready is not None:
                on_ready(emulator)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            import signal

            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
            await stop.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
