"""The emulator in its own process, with a control port for the benchmarks.

    python -m bench.emulator_server            # prints one JSON line: {"url": ..., "control": ...}

The emulator serves the API on one loopback port; a second port takes the benchmark's orders:
`POST /configure` (JSON: EmulatorConfig fields), `POST /reset` (forget the log and the rate window),
`GET /log` (the request log as JSON, without headers), `GET /stats` (requests in flight, peak in flight).
A separate process, so that the emulator's CPU is not charged to the client and the two share no GIL.
Stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

import orjson
from aiohttp import web

from pixelmill.testing import Emulator, EmulatorConfig, RequestRecord

# What a benchmark needs from each request record (headers stay behind: large and useless here).
LOG_FIELDS = ("seq", "endpoint", "started", "finished", "status", "fault", "prompt", "images", "latency",
              "bytes_out")


def record_dict(record: RequestRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in LOG_FIELDS}


def control_app(emu: Emulator) -> web.Application:
    async def configure(request: web.Request) -> web.Response:
        changes = await request.json()
        config = emu.configure(**changes)
        return web.json_response(config.model_dump(mode="json"))

    async def reset(_: web.Request) -> web.Response:
        emu.reset_log()
        return web.json_response({"ok": True})

    async def log(_: web.Request) -> web.Response:
        body = orjson.dumps([record_dict(r) for r in emu.log])
        return web.Response(body=body, content_type="application/json")

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"in_flight": emu.in_flight, "max_in_flight": emu.max_in_flight,
                                  "requests": len(emu.log)})

    app = web.Application()
    app.router.add_post("/configure", configure)
    app.router.add_post("/reset", reset)
    app.router.add_get("/log", log)
    app.router.add_get("/stats", stats)
    return app


async def serve(config: EmulatorConfig) -> None:
    emu = Emulator(config)
    async with emu:
        runner = web.AppRunner(control_app(emu), handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        sys.stdout.write(orjson.dumps({"url": emu.url, "control": f"http://127.0.0.1:{port}"}).decode() + "\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="{}", help="EmulatorConfig fields as JSON")
    args = parser.parse_args()
    config = EmulatorConfig.model_validate({"serve_retired": True, **orjson.loads(args.config)})
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config))


if __name__ == "__main__":
    main()
