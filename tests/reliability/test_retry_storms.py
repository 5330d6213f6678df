"""A provider asking to slow down gets a minimum, growing backoff whatever its Retry-After says; absurd and garbage
hints neither stall the run nor crash it; and without --rpm/--ipm the rate is learned (from OpenAI's rate-limit
headers, else from 429s) instead of hammering the limit.

Request COUNTS are asserted, never timings: a retry storm shows as hundreds of requests where a backoff makes a
handful. Runs go over real loopback HTTP to a hostile server (`Throttler`) or the emulator.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pixelmill.engine.limiter import Limiter
from pixelmill.testing import Emulator, ThreadRunner
from tests.reliability.hostile_servers import Throttler
from tests.reliability.runs import run_family
from tests.runs import cli, prompts, read_output, write_jsonl

REAL_BACKOFF = {"retry_base": 0.5, "retry_cap": 30.0}  # the defaults: the floor that a storm must meet


class Endpoint:
    """What `run_family` needs of a server: its OpenAI and Gemini base URLs."""

    def __init__(self, server: Throttler) -> None:
        self.openai_base_url = server.url + "/v1"
        self.gemini_base_url = server.url


def serve(server: Throttler) -> Iterator[Endpoint]:
    runner = ThreadRunner(server)  # type: ignore[arg-type]
    runner.start()
    try:
        yield Endpoint(server)
    finally:
        runner.stop()


@pytest.fixture
def throttler(request: pytest.FixtureRequest) -> Iterator[tuple[Throttler, Endpoint]]:
    server = Throttler(**request.param)
    for endpoint in serve(server):
        yield server, endpoint


def run(endpoint: Endpoint, family: str, tmp_path: Path, rows: int, **options: Any) -> list[dict[str, Any]]:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(rows))
    run_family(endpoint, family, src, tmp_path / "run", **options)
    out = read_output(tmp_path / "run")
    assert len(out) == rows  # nothing lost
    return out


def statuses(out: list[dict[str, Any]]) -> list[str]:
    return [row["pixelmill"]["status"] for row in out]


PAST = "Wed, 21 Oct 2015 07:28:00 GMT"
FAR = "Fri, 01 Jan 2100 00:00:00 GMT"


# ---------------------------------------------------------------------------------------------- 1. storms

@pytest.mark.parametrize(("family", "throttler"), [
    ("openai", {"headers": {"retry-after": "0"}}),
    ("openai", {"headers": {"retry-after": "-3"}}),
    ("openai", {"headers": {"retry-after": PAST}}),
    ("openai", {"headers": {"retry-after-ms": "0", "retry-after": "0"}}),
    ("gemini", {"retry_delay": {"seconds": -5}}),
], indirect=["throttler"], ids=["zero", "negative", "past-date", "zero-ms", "gemini-negative"])
def test_a_zero_or_negative_hint_still_backs_off(throttler: tuple[Throttler, Endpoint], family: str,
                                                 tmp_path: Path) -> None:
    """Three rows against a server that always says "429, retry at once", for a 2.5 s deadline: the growing
    floor (0.25-0.5 s, 0.5-1 s, 1-2 s, ...) allows about 4 requests per row; obeying the hint made hundreds."""
    server, endpoint = throttler
    out = run(endpoint, family, tmp_path, 3, concurrency=3, deadline=2.5, engine=REAL_BACKOFF)
    assert statuses(out) == ["failed"] * 3
    assert {row["pixelmill"]["error"]["kind"] for row in out} == {"rate_limited"}
    assert len(server.statuses) <= 3 * 5, f"{len(server.statuses)} requests: a retry storm"


# -------------------------------------------------------------------------------- 2. absurd and garbage hints

@pytest.mark.parametrize(("family", "throttler"), [
    ("openai", {"headers": {"retry-after": "1000000000"}, "refusals": 1}),
    ("openai", {"headers": {"retry-after": FAR}, "refusals": 1}),
    ("openai", {"headers": {"retry-after-ms": "1e15"}, "refusals": 1}),
    ("gemini", {"retry_delay": "999999999s", "refusals": 1}),
    ("gemini", {"retry_delay": {"seconds": 1e300, "nanos": 0}, "refusals": 1}),
], indirect=["throttler"], ids=["1e9", "year-2100", "ms-1e15", "gemini-1e9", "gemini-1e300"])
def test_an_absurd_hint_is_capped_and_the_row_goes_on(throttler: tuple[Throttler, Endpoint], family: str,
                                                      tmp_path: Path) -> None:
    """Each prompt's first request is told to come back in 30 years. Obeyed, every row failed at once (the wait
    passed the deadline) and the shared pause held every other row for 60 s; capped (here at the backoff cap
    of 0.2 s), each row is done on its second request."""
    server, endpoint = throttler
    out = run(endpoint, family, tmp_path, 4, concurrency=1, engine={"retry_base": 0.01, "retry_cap": 0.2})
    assert statuses(out) == ["done"] * 4
    assert server.statuses.count(429) == 4 and server.statuses.count(200) == 4


@pytest.mark.parametrize(("family", "throttler"), [
    ("openai", {"headers": {"retry-after": "1e999"}, "refusals": 2}),
    ("gemini", {"retry_delay": {"seconds": "soon"}, "refusals": 2}),
    ("gemini", {"retry_delay": {"seconds": [1], "nanos": {}}, "refusals": 2}),
    ("gemini", {"retry_delay": {"seconds": "1e999"}, "refusals": 2}),
], indirect=["throttler"], ids=["infinite", "gemini-word", "gemini-types", "gemini-infinite"])
def test_a_garbage_hint_crashes_nothing(throttler: tuple[Throttler, Endpoint], family: str,
                                        tmp_path: Path) -> None:
    """An infinite Retry-After failed the row at once (a wait past any deadline); a RetryInfo whose seconds are a
    word or a list raised ValueError / TypeError out of the error mapping and crashed the whole run. Now: no
    hint, the backoff decides, every row is done."""
    server, endpoint = throttler
    out = run(endpoint, family, tmp_path, 3, concurrency=3, engine={"retry_base": 0.01, "retry_cap": 0.05})
    assert statuses(out) == ["done"] * 3
    assert server.statuses.count(429) == 6 and server.statuses.count(200) == 3


def test_many_rows_do_not_stretch_the_shared_pause() -> None:
    """32 calls sent in the same round all come back 429: the first starts the shared pause, the 31 others
    (sent before it began) are old news and must not push its end further (they used to, each by its own
    arrival time: 32 rows in turn held everyone back indefinitely)."""
    limiter = Limiter(32, None, None)
    sent = time.monotonic()
    limiter.on_rate_limited(2.0, sent_at=sent)
    first = limiter.paused_until
    for _ in range(31):
        time.sleep(0.002)
        limiter.on_rate_limited(2.0, sent_at=sent)
    assert limiter.paused_until == first


# -------------------------------------------------------------------------------------- 3. learn the rate

def test_the_rate_is_learned_from_openai_headers(emulator_thread: Emulator, tmp_path: Path) -> None:
    """No --rpm: the emulator allows 20 requests per 1 s window and says so (x-ratelimit-limit-requests: 1200
    per minute). Only the first, unpaced round of 16 calls may meet the limit: from the first answer on the
    run paces just under it. Unpaced, each pause was followed by 16 calls at once and about a third of all
    requests were 429s."""
    emulator_thread.configure(rpm=20, rate_window=1.0, latency=0.05, seed=1)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(80))
    result = cli("generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url,
                 "--concurrency", "16")
    assert result.code == 0, result.output
    codes = [r.status for r in emulator_thread.records(endpoint="generations")]
    assert codes.count(200) == 80
    assert codes.count(429) <= 8, f"{codes.count(429)} x 429 of {len(codes)} requests"
    assert "rate found: 1200 requests/min (from rate-limit headers)" in result.output


def test_the_rate_is_learned_from_429s_alone(emulator_thread: Emulator, tmp_path: Path) -> None:
    """Gemini sends no rate-limit headers: the pace is learned from the 429s (and their RetryInfo). The first
    round meets the limit; after that, far fewer 429s than the third of requests an unpaced run gets."""
    emulator_thread.configure(rpm=20, rate_window=1.0, latency=0.05, seed=1)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(80))
    report = run_family(emulator_thread, "gemini", src, tmp_path / "run", concurrency=16,
                        model="gemini-3.1-flash-image")
    codes = [r.status for r in emulator_thread.records()]
    assert codes.count(200) == 80, report.stats.failures
    assert codes.count(429) <= 12 + 80 * 0.1, f"{codes.count(429)} x 429 of {len(codes)} requests"
    assert report.stats.rate_found is not None and report.stats.rate_found.endswith("(from 429s)")
