"""The emulator's controls: faults (rates, markers, fail_after), latency, rate limits, in-flight counts,
transport faults as a client sees them, config validation, loopback only, `serve`."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
from typing import Any

import aiohttp
import orjson
import pybase64
import pytest
from multidict import CIMultiDict
from pydantic import ValidationError

from pixelmill.errors import ConfigError
from pixelmill.testing import Emulator

HEADERS = {"Authorization": "Bearer sk-test-controls-01"}
BODY = {"model": "gpt-image-2", "prompt": "a kite", "quality": "low"}


async def _post(session: aiohttp.ClientSession, emu: Emulator, body: dict[str, Any] | None = None,
                limit_s: float = 10.0) -> tuple[int, CIMultiDict[str], bytes]:
    async with session.post(emu.openai_base_url + "/images/generations", json=body or BODY,
                            timeout=aiohttp.ClientTimeout(total=limit_s)) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def _burst(emu: Emulator, count: int, body: dict[str, Any] | None = None) -> list[int]:
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        results = await asyncio.gather(*(_post(session, emu, body) for _ in range(count)))
    return [status for status, _, _ in results]


async def test_fault_rate_is_respected_and_seeded(emulator: Emulator) -> None:
    emulator.configure(faults={"server_error": 0.3}, seed=7)
    statuses = await _burst(emulator, 200)
    failed = statuses.count(500)
    assert 40 <= failed <= 80  # 0.3 of 200 = 60; this band is more than 4 standard deviations wide
    assert failed + statuses.count(200) == 200
    assert emulator.count(fault="server_error") == failed
    first = [r.fault for r in emulator.log]
    emulator.reset_log()
    emulator.configure(seed=7)
    await _burst(emulator, 200)
    assert sorted(map(str, (r.fault for r in emulator.log))) == sorted(map(str, first))


async def test_several_fault_kinds_share_the_draw(emulator: Emulator) -> None:
    emulator.configure(faults={"unavailable": 0.25, "rate_limit": 0.25, "quota": 0.25, "moderation": 0.25})
    statuses = await _burst(emulator, 100)
    assert statuses.count(200) == 0
    assert {503, 429, 400} == set(statuses)


async def test_fixed_and_lognormal_latency(emulator: Emulator) -> None:
    emulator.configure(latency=0.05)
    await _burst(emulator, 5)
    for record in emulator.log:
        assert record.latency == 0.05
        assert record.duration is not None and record.duration >= 0.05
    emulator.reset_log()
    emulator.configure(latency=0.01, latency_sigma=0.5, seed=3)
    await _burst(emulator, 200)
    applied = [r.latency for r in emulator.log]
    assert 0.008 <= statistics.median(applied) <= 0.0125
    assert max(applied) > 2 * min(applied)


async def test_latency_marker_and_in_flight(emulator: Emulator) -> None:
    body = {**BODY, "prompt": "slow [[latency:0.2]]"}
    statuses = await _burst(emulator, 20, body)
    assert statuses == [200] * 20
    assert emulator.max_in_flight == 20 and emulator.in_flight == 0
    assert all(r.latency == 0.2 for r in emulator.log)


async def test_requests_per_window(emulator: Emulator) -> None:
    emulator.configure(rpm=10, rate_window=2.0)
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        results = await asyncio.gather(*(_post(session, emulator) for _ in range(30)))
    ok = [h for s, h, _ in results if s == 200]
    limited = [h for s, h, _ in results if s == 429]
    assert (len(ok), len(limited)) == (10, 20)
    assert all(h["retry-after"] in ("1", "2") and int(h["retry-after-ms"]) <= 2000 for h in limited)
    assert {h["x-ratelimit-limit-requests"] for h in ok} == {"300"}  # per minute, as OpenAI states it: 10 per 2 s
    assert min(int(h["x-ratelimit-remaining-requests"]) for h in ok) == 0


async def test_images_per_window(emulator: Emulator) -> None:
    emulator.configure(ipm=5)
    statuses = []
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        for _ in range(3):
            status, headers, _ = await _post(session, emulator, {**BODY, "n": 2})
            statuses.append(status)
    assert statuses == [200, 200, 429]
    assert emulator.records(status=429)[0].error_code == "rate_limit_exceeded"
    assert "x-ratelimit-remaining-images" in headers


async def test_fail_after_then_auth(emulator: Emulator) -> None:
    emulator.configure(fail_after=3, fail_with="auth")
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        statuses = [(await _post(session, emulator))[0] for _ in range(5)]
    assert statuses == [200, 200, 200, 401, 401]


async def test_transport_faults_as_a_client_sees_them(emulator: Emulator) -> None:
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        with pytest.raises(aiohttp.ClientError):
            await _post(session, emulator, {**BODY, "prompt": "[[fault:reset]]"})
        with pytest.raises(aiohttp.ClientPayloadError):
            await _post(session, emulator, {**BODY, "prompt": "[[fault:truncated]]"})
        status, _, body = await _post(session, emulator, {**BODY, "prompt": "[[fault:malformed]]"})
        assert status == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(body)
        status, _, body = await _post(session, emulator, {**BODY, "prompt": "[[fault:invalid_base64]]"})
        with pytest.raises(ValueError):
            pybase64.b64decode(orjson.loads(body)["data"][0]["b64_json"], validate=True)
        status, headers, _ = await _post(session, emulator, {**BODY, "prompt": "[[fault:rate_limit_no_header]]"})
        assert status == 429 and "retry-after" not in headers
        emulator.configure(timeout_hold=5.0)
        with pytest.raises(asyncio.TimeoutError):
            await _post(session, emulator, {**BODY, "prompt": "[[fault:timeout]]"}, limit_s=0.2)
    for _ in range(50):
        if emulator.in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert emulator.in_flight == 0  # the held request ended when the client went away
    statuses = [r.status for r in emulator.log]
    assert statuses == [None, 200, 200, 200, 429, 499]


def test_config_is_validated() -> None:
    with pytest.raises(ValidationError, match="unknown fault"):
        Emulator(faults={"gremlins": 0.1})
    with pytest.raises(ValidationError, match="add up to"):
        Emulator(faults={"server_error": 0.6, "unavailable": 0.6})
    emu = Emulator()
    with pytest.raises(ValidationError):
        emu.configure(latency=-1)
    assert emu.config.latency == 0.0


def test_loopback_only() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        Emulator(host="0.0.0.0")
    with pytest.raises(ConfigError):
        Emulator(host="192.168.1.10")
    Emulator(host="::1")
    Emulator(host="localhost")


def test_serve_runs_until_interrupted(tmp_path: Any) -> None:
    code = (
        "from pixelmill.testing import serve\n"
        "serve(port=0, on_ready=lambda emu: print(emu.openai_base_url, flush=True))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "error"})
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:") and base.endswith("/v1")
        import urllib.request

        req = urllib.request.Request(base + "/models", headers=HEADERS)
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_emulate_command_prints_the_port_it_bound() -> None:
    """`pixelmill emulate --port 0` as a user runs it: the printed URL is the real one (not port 0), it answers
    an image request, and Ctrl-C stops it cleanly."""
    proc = subprocess.Popen([sys.executable, "-m", "pixelmill", "emulate", "--port", "0", "--latency", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "error"})
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        found = re.search(r"on (http://127\.0\.0\.1:(\d+)) \(OpenAI base URL (\S+)\)", line)
        assert found is not None, line
        url, port, base = found.group(1), int(found.group(2)), found.group(3)
        assert port != 0 and base == url + "/v1"
        import urllib.request

        req = urllib.request.Request(base + "/images/generations", data=orjson.dumps(BODY), method="POST",
                                     headers={**HEADERS, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
            image = pybase64.b64decode(orjson.loads(resp.read())["data"][0]["b64_json"])
        assert image.startswith(b"\x89PNG")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_serves_a_wide_burst_concurrently(emulator: Emulator) -> None:
    """400 requests, 128 at a time, 0.1 s each: the emulator must take them all in at once and not serialise them
    (counted by its in-flight high-water mark; how fast it serves is bench/emulator.py's, not a test's: a wall-clock
    bound here failed whenever the machine was busy)."""
    emulator.configure(latency=0.1)
    connector = aiohttp.TCPConnector(limit=128)
    async with aiohttp.ClientSession(headers=HEADERS, connector=connector) as session:
        await asyncio.gather(*(_post(session, emulator) for _ in range(128)))  # connections and images warm
        emulator.reset_log()
        results = await asyncio.gather(*(_post(session, emulator) for _ in range(400)))
    assert [s for s, _, _ in results] == [200] * 400
    assert emulator.max_in_flight >= 100
