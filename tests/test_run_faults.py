"""Each fault the emulator injects ends in the right place: retried to done, recorded as failed with the right
kind, or aborting the run (exit 3) with the rest left pending, and request counts within the retry policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelmill.testing import Emulator
from tests.runs import prompts, read_output, run_api, write_jsonl

ROWS = 60


@pytest.mark.parametrize(
    "fault",
    ["server_error", "bad_gateway", "unavailable", "gateway_timeout", "rate_limit", "rate_limit_no_header"],
)
def test_retryable_faults_end_done(emulator_thread: Emulator, tmp_path: Path, fault: str) -> None:
    emulator_thread.configure(faults={fault: 0.3}, retry_after=0.05, seed=7)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(ROWS))
    report = run_api(emulator_thread, src, tmp_path / "run", concurrency=8, max_retries=8)
    out = read_output(tmp_path / "run")
    assert len(out) == ROWS
    assert [r["pixelmill"]["status"] for r in out] == ["done"] * ROWS, report.stats.failures
    requests = emulator_thread.count(endpoint="generations")
    faults = emulator_thread.count(endpoint="generations", fault=fault)
    assert requests == ROWS + faults  # every fault was retried once, nothing else was sent
    assert faults > 5
    assert sum(r["pixelmill"]["attempts"] for r in out) == requests
    if fault.startswith("rate_limit"):
        assert report.stats.rate_limited == faults


@pytest.mark.parametrize(("fault", "kind"), [("truncated", "transient"), ("malformed", "transient"),
                                           ("invalid_base64", "transient"), ("reset", "unknown_outcome")])
def test_broken_answers_are_retried_at_most_once(emulator_thread: Emulator, tmp_path: Path, fault: str,
                                                 kind: str) -> None:
    """A broken answer, or a request sent whose answer never came (a reset), may have been billed: one retry by
    default, then the row fails as transient (broken) or unknown_outcome (lost); each is charged on its row."""
    emulator_thread.configure(faults={fault: 0.5}, seed=3)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(ROWS))
    report = run_api(emulator_thread, src, tmp_path / "run", concurrency=8)
    out = read_output(tmp_path / "run")
    failed = [r for r in out if r["pixelmill"]["status"] == "failed"]
    done = [r for r in out if r["pixelmill"]["status"] == "done"]
    assert len(failed) + len(done) == ROWS
    assert failed, "at a 50% fault rate some rows fail twice"
    for row in failed:
        assert row["pixelmill"]["error"]["kind"] == kind
        assert row["pixelmill"]["attempts"] == 2
        assert row["pixelmill"]["unanswered"]["calls"] == 2
    assert emulator_thread.count(endpoint="generations") <= 2 * ROWS
    assert report.exit_code == 1


def test_timeouts_are_retried(emulator_thread: Emulator, tmp_path: Path) -> None:
    """A request that times out may have been billed: retried up to --max-billed-retries, counted as such."""
    emulator_thread.configure(faults={"timeout": 0.2}, timeout_hold=5.0, seed=1)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(20))
    report = run_api(emulator_thread, src, tmp_path / "run", concurrency=10, timeout=0.5, max_billed_retries=5)
    assert report.exit_code == 0
    assert report.stats.retries == emulator_thread.count(fault="timeout") > 0
    out = read_output(tmp_path / "run")
    assert sum(r["pixelmill"].get("unanswered", {}).get("calls", 0) for r in out) == report.stats.retries
    assert report.stats.unanswered == report.stats.retries


def test_refusals_and_rejections_are_recorded_not_retried(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(faults={"moderation": 0.3}, seed=2)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(ROWS))
    report = run_api(emulator_thread, src, tmp_path / "run", concurrency=8)
    out = read_output(tmp_path / "run")
    refused = [r for r in out if r["pixelmill"]["status"] == "failed"]
    assert len(refused) == emulator_thread.count(fault="moderation") > 5
    for row in refused:
        error = row["pixelmill"]["error"]
        assert error["kind"] == "refused" and error["http_status"] == 400 and error["code"] == "moderation_blocked"
    assert emulator_thread.count(endpoint="generations") == ROWS
    assert report.exit_code == 1


@pytest.mark.parametrize(("fault", "kind"), [("auth", "auth"), ("quota", "quota")])
def test_fatal_errors_abort_at_once_and_leave_the_rest_pending(
    emulator_thread: Emulator, tmp_path: Path, fault: str, kind: str
) -> None:
    emulator_thread.configure(fail_after=20, fail_with=fault)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(200))
    report = run_api(emulator_thread, src, tmp_path / "run", concurrency=4)
    assert report.exit_code == 3
    assert report.abort_kind == kind
    sent = emulator_thread.count(endpoint="generations")
    assert sent <= 20 + 4  # the failing call and at most the others in flight
    out = read_output(tmp_path / "run")
    assert len(out) == 200
    done = [r for r in out if r["pixelmill"]["status"] == "done"]
    pending = [r for r in out if r["pixelmill"]["status"] == "pending"]
    assert len(done) == 20 and len(done) + len(pending) == 200
    assert all(r["images"] == [] for r in pending)
    # Fixed: the re-run sends exactly the rows not done.
    emulator_thread.configure(fail_after=None)
    emulator_thread.reset_log()
    report = run_api(emulator_thread, src, tmp_path / "run", concurrency=4)
    assert report.exit_code == 0
    assert emulator_thread.count(endpoint="generations") == 180


def test_retired_model_aborts_with_its_replacement_named(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(10))
    report = run_api(emulator_thread, src, tmp_path / "run", model="dall-e-3")
    assert report.exit_code == 3
    assert report.abort_kind == "model_unavailable"
    assert "gpt-image-2" in (report.aborted or "")
    assert emulator_thread.count(endpoint="generations") <= 1 + 16


def test_rate_limit_pauses_everyone_and_then_completes(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(rpm=600, rate_window=1.0)  # 10 requests per second
    src = write_jsonl(tmp_path / "in.jsonl", prompts(30))
    report = run_api(emulator_thread, src, tmp_path / "run", concurrency=16)
    assert report.exit_code == 0
    statuses = [r.status for r in emulator_thread.records(endpoint="generations")]
    assert statuses.count(200) == 30
    assert statuses.count(429) == report.stats.rate_limited
