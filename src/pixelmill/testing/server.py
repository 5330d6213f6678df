"""The emulator's server: builds the aiohttp app from the route modules around one shared state, and owns
binding, start, stop, serving from a thread (`ThreadRunner`) and serving until interrupted (`serve`).

`Emulator` is the public face: its config, log and counters are the shared state's (`state.EmulatorState`),
which the routes read and write while they answer; what one request goes through is `exchange`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from pixelmill.errors import ConfigError
from pixelmill.models.table import ModelTable
from pixelmill.testing import wire_errors as we
from pixelmill.testing.batches import BatchStore
from pixelmill.testing.config import EmulatorConfig
from pixelmill.testing.exchange import observe
from pixelmill.testing.images import ImageCache
from pixelmill.testing.jobs import Job
from pixelmill.testing.keys import wants_gemini
from pixelmill.testing.log import RequestRecord
from pixelmill.testing.routes import bfl, fal, gemini, gemini_batch, hf, openai, openai_batch, replicate
from pixelmill.testing.state import EmulatorState


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


def build_app(state: EmulatorState) -> web.Application:
    """The aiohttp app: every API's routes over `state`, the paths APIs share, and a catch-all 404."""
    app = web.Application(middlewares=[observe(state)], client_max_size=256 * 1024 * 1024)
    # The batch routes first: `models/{m}:batchGenerateContent` would otherwise match the sync `{target}`.
    openai_batches = openai_batch.register(app, state)
    gemini_batches = gemini_batch.register(app, state)
    openai_routes = openai.register(app, state)
    gemini_routes = gemini.register(app, state)
    # `GET /v1/models` is OpenAI's and (since google-genai 3.x defaults to v1) Gemini's: the key tells which.
    app.router.add_get("/v1/models", _by_key(openai=openai_routes.models, gemini=gemini_routes.list_models))
    app.router.add_get("/v1/models/{target}", _by_key(openai=openai_routes.model, gemini=gemini_routes.get_model))
    # Replicate (`/v1/predictions`, `/v1/models/{o}/{n}/predictions`) and BFL (`/v1/flux-*`, `/v1/get_result`)
    # share `/v1/` with OpenAI by paths no other API uses.
    replicate.register(app, state)
    bfl.register(app, state)
    app.router.add_get("/_emulator/submits", _submits(state))
    hf.register(app, state)
    fal_routes = fal.register(app, state)
    # fal submits at `/{model id}`, any depth: a POST no other API owns is fal's when it says so (`fal.wants`).
    app.router.add_post("/{tail:.+}", _when(fal.wants, fal_routes.submit))
    # The batch APIs' shared paths: OpenAI's Files and Batches under /v1 are Gemini's under v1 too.
    for method, path, name in (("GET", "/v1/files", "list_files"), ("GET", "/v1/files/{file_id}", "get_file"),
                               ("DELETE", "/v1/files/{file_id}", "delete_file"),
                               ("GET", "/v1/batches", "list_batches"), ("GET", "/v1/batches/{batch_id}", "get_batch")):
        app.router.add_route(method, path, _by_key(openai=getattr(openai_batches, name),
                                                   gemini=getattr(gemini_batches, name)))
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


def _submits(state: EmulatorState) -> Handler:
    """`GET /_emulator/submits[?family=fal][&by=prompt|model]`: jobs created per prompt (or model), for drills
    that run `pixelmill emulate` in its own process. Carries no key and reveals only prompts sent to it."""

    async def handler(request: web.Request) -> web.StreamResponse:
        family = request.query.get("family")
        by = request.query.get("by", "prompt")
        if (family is not None and family not in state.jobs) or by not in ("prompt", "model"):
            return web.json_response({"error": "family is one of fal, replicate, bfl; by is prompt or model"},
                                     status=400)
        queues = [state.jobs[family]] if family else list(state.jobs.values())
        return web.json_response(dict(Counter(str(getattr(job, by)) for q in queues for job in q.jobs())))

    return handler


def _when(wants: Callable[[web.Request], bool], handler: Handler) -> Handler:
    async def route(request: web.Request) -> web.StreamResponse:
        return await (handler if wants(request) else _not_found)(request)

    return route


def _by_key(*, openai: Handler, gemini: Handler) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await (gemini if wants_gemini(request) else openai)(request)

    return handler


async def _not_found(request: web.Request) -> web.StreamResponse:
    if request.path.startswith(("/v1beta", "/v1alpha")):
        raise we.gemini_error(404, "NOT_FOUND", f"Requested entity was not found: {request.path}")
    raise we.openai_route_not_found(request.method, request.path)


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
        if changes:
            base = EmulatorConfig.model_validate({**base.model_dump(), **changes})
        self.host = host
        self._port = port
        self.state = EmulatorState(base, table)
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------ configuration and state

    @property
    def config(self) -> EmulatorConfig:
        return self.state.config

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Change settings while running (thread-safe: the config is replaced as a whole). A new `seed`
        restarts the random draws; new rate limits start from an empty window."""
        return self.state.configure(**changes)

    @property
    def table(self) -> ModelTable:
        return self.state.table

    @property
    def images(self) -> ImageCache:
        return self.state.images

    @property
    def files(self) -> dict[str, tuple[bytes, str]]:
        """DALL·E `url` answers: file name -> (bytes, mime)."""
        return self.state.files

    @files.setter
    def files(self, files: dict[str, tuple[bytes, str]]) -> None:
        self.state.files = files  # tests swap in a store that forgets (URLs that expire at once)

    @property
    def batches(self) -> BatchStore:
        """The batch APIs' files, batches and counters (`batches.counters.billed_twice("openai")`)."""
        return self.state.batches

    def reset_batches(self) -> None:
        """Forget every batch file, batch and batch counter."""
        self.state.batches.reset()

    @property
    def secret(self) -> bytes:
        return self.state.secret

    @property
    def in_flight(self) -> int:
        return self.state.in_flight

    @property
    def max_in_flight(self) -> int:
        return self.state.max_in_flight

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

    @property
    def jobs_base_url(self) -> str:
        """The `--base-url` of fal (queue.fal.run), Replicate, BFL and the HF router: the emulator's root."""
        return self.url

    def hf_endpoint_url(self, name: str = "endpoint") -> str:
        """A dedicated Hugging Face Inference Endpoint's URL (`hf-endpoint`'s `--base-url`)."""
        return f"{self.url}/hf-endpoint/{name}"

    # ------------------------------------------------------------ the log

    @property
    def log(self) -> list[RequestRecord]:
        return list(self.state.log)

    def records(self, **filters: Any) -> list[RequestRecord]:
        """Log records whose fields match: `emu.records(status=429)`, `emu.records(status=lambda s: s >= 500)`."""
        return self.state.log.select(**filters)

    def count(self, **filters: Any) -> int:
        return len(self.state.log.select(**filters))

    def reset_log(self) -> None:
        """Forget the log, `max_in_flight`, the `fail_after` count, the rate-limit window, the remote jobs and
        their media (their handles then answer "not found"), the HF cold starts and the BFL credits spent."""
        self.state.reset_log()

    # ------------------------------------------------------------ remote jobs (fal, Replicate, BFL)

    def jobs(self, family: str | None = None) -> list[Job]:
        """The remote jobs created (accepted submits: the ones that are paid), oldest first."""
        families = [family] if family is not None else list(self.state.jobs)
        return [job for name in families for job in self.state.jobs[name].jobs()]

    def submits(self, family: str | None = None, by: str = "prompt") -> Counter[str]:
        """Jobs created per prompt (or per `model`): the drills' "no row submitted twice" counter. Unlike
        `count(endpoint="submit")` it counts only submits that created a job, whether or not the client got the
        answer (a `reset` submit counts; a 422 does not)."""
        return Counter(str(getattr(job, by)) for job in self.jobs(family))

    # ------------------------------------------------------------ lifecycle

    def app(self) -> web.Application:
        return build_app(self.state)

    async def start(self) -> Emulator:
        """Bind and serve. With port 0 the system picks a free port; `port` (and the URLs) then say which."""
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
    """Serve until interrupted (Ctrl-C or SIGTERM). `on_ready` gets the emulator once it is bound and the stop
    signals are handled, so `emu.port` and the URLs are the real ones (port 0: the port the system picked) and a
    caller that reads them may interrupt at once."""

    async def main() -> None:
        emulator = Emulator(config, host, port)
        async with emulator:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
            if on_ready is not None:
                on_ready(emulator)
            await stop.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
