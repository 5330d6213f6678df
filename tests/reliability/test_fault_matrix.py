"""The fault matrix: for every fault the emulator injects, a run of 200 rows at a 10-30% fault rate ends with
every row in the output, done or failed with the right kind, and every row's requests exactly what the retry
policy allows (checked request by request against the emulator's log with the oracle in `policy.py`).

Fatal faults (401 mid-run, quota exhausted) stop the run at once: no more requests than the calls in flight, the
rest pending, and a re-run after the fix sends exactly the rows that were not done. Runs go through the Python
API in-process with 10-50 ms backoff, so the whole matrix takes seconds.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from pixelmill.reading.images import sniff
from pixelmill.testing import Emulator
from tests.reliability.invariants import EXTENSION_OF, assert_every_row_once
from tests.reliability.policy import MAYBE_BILLED, RATE, requests_by_prompt, verdict
from tests.reliability.runs import run_family
from tests.runs import read_output, write_jsonl

ROWS = 200
CONCURRENCY = 16
MAX_RETRIES = 5

# (family, fault, rate): every fault each family gives meaning to, at rates across 10-30%.
RECOVERABLE = [
    ("openai", "rate_limit", 0.3),
    ("openai", "rate_limit_no_header", 0.1),
    ("openai", "server_error", 0.2),
    ("openai", "bad_gateway", 0.2),
    ("openai", "unavailable", 0.3),
    ("openai", "gateway_timeout", 0.2),
    ("openai", "timeout", 0.1),
    ("openai", "reset", 0.2),
    ("openai", "truncated", 0.3),
    ("openai", "malformed", 0.2),
    ("openai", "invalid_base64", 0.3),
    ("openai", "moderation", 0.1),
    ("gemini", "rate_limit", 0.3),
    ("gemini", "rate_limit_no_header", 0.1),
    ("gemini", "unavailable", 0.2),
    ("gemini", "timeout", 0.1),
    ("gemini", "reset", 0.2),
    ("gemini", "truncated", 0.2),
    ("gemini", "malformed", 0.3),
    ("gemini", "invalid_base64", 0.2),
    ("gemini", "moderation", 0.2),
    ("gemini", "prompt_blocked", 0.1),
    ("gemini", "image_safety", 0.2),
    ("gemini", "no_image", 0.3),
    ("gemini", "text_only", 0.2),
]

# A 429 without a hint pauses every sender for 1 s (engine/limiter.py): with all rows in flight at once, a run
# needs a few such pauses instead of one per 16 requests.
CONCURRENCY_FOR = {"rate_limit_no_header": ROWS}

# What a refusal records, by family and fault: (http_status, reasons the row may carry).
REFUSAL = {
    ("openai", "moderation"): (400, {"moderation_blocked"}),
    ("gemini", "moderation"): (200, {"SAFETY", "IMAGE_SAFETY"}),
    ("gemini", "prompt_blocked"): (200, {"SAFETY"}),
    ("gemini", "image_safety"): (200, {"IMAGE_SAFETY"}),
    ("gemini", "no_image"): (200, {"NO_IMAGE"}),
    ("gemini", "text_only"): (200, {"text_only"}),
}


def rows_for(fault: str, family: str) -> list[dict[str, str]]:
    return [{"prompt": f"{family} {fault} row {i}: a lighthouse at dusk"} for i in range(ROWS)]


def fast_emulator(emu: Emulator, **changes: object) -> None:
    emu.configure(retry_after=0.02, timeout_hold=4.0, latency=0.0, **changes)


@pytest.mark.parametrize(("family", "fault", "rate"), RECOVERABLE, ids=[f"{f}-{k}" for f, k, _ in RECOVERABLE])
def test_every_row_ends_right_and_requests_follow_the_policy(
    emulator_thread: Emulator, tmp_path: Path, family: str, fault: str, rate: float
) -> None:
    fast_emulator(emulator_thread, faults={fault: rate}, seed=zlib.crc32(f"{family}-{fault}".encode()) % 1000)
    sources = rows_for(fault, family)
    src = write_jsonl(tmp_path / "in.jsonl", sources)
    run = tmp_path / "run"
    size = {"size": "512x512"} if family == "openai" else {}
    # For the timeout fault, a client timeout short against the fault's hold (4 s) but long for a real answer
    # here (milliseconds; a loaded 2-core machine has taken over 0.5 s); for the others a generous one, so that a
    # slow moment on a loaded machine is no fault.
    report = run_family(emulator_thread, family, src, run, concurrency=CONCURRENCY_FOR.get(fault, CONCURRENCY),
                        max_retries=MAX_RETRIES, timeout=1.5 if fault == "timeout" else 30.0, **size)
    out = read_output(run)
    assert_every_row_once(out, sources)
    requests = requests_by_prompt(emulator_thread)
    faulted = emulator_thread.count(fault=fault)
    assert faulted >= ROWS * rate / 2, "the fault was hardly injected: the test would prove little"

    total_attempts = 0
    for row, source in zip(out, sources, strict=True):
        sent = requests[source["prompt"]]
        faults = [r.fault for r in sent]
        expected = verdict(faults, max_retries=MAX_RETRIES)
        meta = row["pixelmill"]
        where = f"row {source['prompt']!r} met {faults}"
        assert expected.requests == len(sent), f"{where}: the policy makes {expected.requests} requests"
        assert meta["status"] == expected.status, where
        assert meta["attempts"] == len(sent), where
        # Each call that may have been billed without a usable answer is counted on its row, and charged.
        unanswered = meta.get("unanswered", {"calls": 0, "cost_usd_max": 0.0})
        assert unanswered["calls"] == sum(f in MAYBE_BILLED for f in faults), where
        assert (unanswered["cost_usd_max"] > 0) == (unanswered["calls"] > 0), where
        total_attempts += meta["attempts"]
        if expected.status == "done":
            [path] = row["images"]
            assert sniff((run / path).read_bytes()) == EXTENSION_OF[path.rsplit(".", 1)[1]]
            assert sent[-1].status == 200
        else:
            error = meta["error"]
            assert error["kind"] == expected.kind, where
            assert error["message"], where
            if (family, fault) in REFUSAL:
                status, reasons = REFUSAL[family, fault]
                assert error["http_status"] == status, (where, error)
                assert str(error.get("reason")).split(":")[0] in reasons, (where, error)
    assert total_attempts == sum(len(v) for v in requests.values()) == report.stats.requests
    assert len(requests) == ROWS
    if fault in RATE:
        assert report.stats.rate_limited == faulted
        assert report.exit_code == 0  # a rate limit only delays a row (the deadline is far)
    assert report.exit_code == (1 if any(r["pixelmill"]["status"] == "failed" for r in out) else 0)
    assert report.aborted is None


FATAL = [("openai", "auth"), ("openai", "quota"), ("gemini", "auth"), ("gemini", "quota")]


@pytest.mark.parametrize(("family", "fault"), FATAL, ids=[f"{f}-{k}" for f, k in FATAL])
def test_fatal_faults_stop_at_once_and_the_rerun_finishes(
    emulator_thread: Emulator, tmp_path: Path, family: str, fault: str
) -> None:
    """401 or quota mid-run, behind some transient noise: the run aborts (exit 3) with the right kind; at most the
    calls already in flight meet the fatal answer; every row is in the output, done or pending; the re-run after
    the fix sends exactly the rows that were not done and completes."""
    fast_emulator(emulator_thread, faults={"unavailable": 0.1}, fail_after=60, fail_with=fault, seed=5)
    sources = rows_for(fault, family)
    src = write_jsonl(tmp_path / "in.jsonl", sources)
    run = tmp_path / "run"
    report = run_family(emulator_thread, family, src, run, concurrency=CONCURRENCY)
    assert report.exit_code == 3
    assert report.abort_kind == fault
    assert report.aborted
    fatal_answers = emulator_thread.count(fault=fault)
    assert 1 <= fatal_answers <= CONCURRENCY  # each slot in flight meets it at most once; nothing new is sent
    out = read_output(run)
    assert_every_row_once(out, sources)
    statuses = [r["pixelmill"]["status"] for r in out]
    assert "failed" not in statuses
    done = {s["prompt"] for s, status in zip(sources, statuses, strict=True) if status == "done"}
    answered = {r.prompt for r in emulator_thread.records(status=200)}
    assert done == answered, "every paid answer is recorded; no row is done without one"
    assert statuses.count("pending") == ROWS - len(done) > ROWS // 2

    emulator_thread.configure(fail_after=None, faults={})
    emulator_thread.reset_log()
    report = run_family(emulator_thread, family, src, run, concurrency=CONCURRENCY)
    assert report.exit_code == 0
    sent = {r.prompt for r in emulator_thread.records(endpoint=lambda e: e in ("generations", "generateContent"))}
    assert sent == {s["prompt"] for s in sources} - done
    assert emulator_thread.count() == ROWS - len(done)
    assert [r["pixelmill"]["status"] for r in read_output(run)] == ["done"] * ROWS


def test_all_recoverable_faults_at_once(emulator_thread: Emulator, tmp_path: Path) -> None:
    """Every fault mixed in one run (30% in all): the oracle follows each row through its mix of 429s, 5xx,
    resets and broken answers; the retry counters of one row interact as the policy says."""
    mix = {name: 0.025 for name in ("rate_limit", "server_error", "bad_gateway",
                                    "unavailable", "gateway_timeout", "reset", "truncated", "malformed",
                                    "invalid_base64", "moderation")}
    mix["truncated"] = mix["malformed"] = mix["reset"] = 0.0375
    fast_emulator(emulator_thread, faults=mix, seed=99)
    sources = rows_for("mixed", "openai")
    src = write_jsonl(tmp_path / "in.jsonl", sources)
    report = run_family(emulator_thread, "openai", src, tmp_path / "run", concurrency=CONCURRENCY,
                        max_retries=2, size="512x512")
    out = read_output(tmp_path / "run")
    assert_every_row_once(out, sources)
    requests = requests_by_prompt(emulator_thread)
    outcomes = set()
    for row, source in zip(out, sources, strict=True):
        faults = [r.fault for r in requests[source["prompt"]]]
        expected = verdict(faults, max_retries=2)
        assert expected.requests == len(faults), faults
        assert row["pixelmill"]["status"] == expected.status, faults
        assert row["pixelmill"].get("error", {}).get("kind") == expected.kind, faults
        outcomes.add((expected.status, expected.kind))
    assert {("done", None), ("failed", "refused"), ("failed", "transient")} <= outcomes
    assert report.stats.requests == sum(len(v) for v in requests.values())
