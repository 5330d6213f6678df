"""The engine's remote-job path (engine/jobs.py) over real loopback HTTP: a scripted submit-and-poll server and a
test-local JobProvider (tests/reliability/job_server.py). Handles journaled before polling, resume by polling,
resubmits, refusals, lost submits found by listing, expired results, the budget across runs, `pixelmill cancel`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pixelmill.api import run_config
from pixelmill.engine import plan as plan_module
from pixelmill.options import build_config, job_options
from pixelmill.providers.base import provider_class
from pixelmill.testing import ThreadRunner
from pixelmill.writing.journal import Journal
from tests.reliability.job_server import PRICE, JobServer, LoopJobs
from tests.runs import cli, read_output, write_jsonl

KEY = "loop-key-7c1e9a55b2d04f3e"


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> Iterator[JobServer]:
    monkeypatch.setattr(plan_module, "provider_class",
                        lambda name: LoopJobs if name == "loopjobs" else provider_class(name))
    monkeypatch.setenv("LOOP_KEY", KEY)
    server = JobServer()
    runner = ThreadRunner(server)  # type: ignore[arg-type]
    runner.start()
    yield server
    runner.stop()


def run(server: JobServer, src: Path, out: Path, **options: Any) -> Any:
    engine = {"retry_base": 0.01, "retry_cap": 0.05, **options.pop("engine", {})}
    config = build_config("generate", src, job_options(output=out, provider="loopjobs", model="loop/flux",
                                                       base_url=server.url, engine=engine, **options))
    return run_config(config, env={"LOOP_KEY": KEY})


def source(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"job prompt {i}"} for i in range(n)])


def live(out: Path) -> list[tuple[str, int, Any]]:
    journal = Journal.open(out)
    try:
        return journal.live_jobs()
    finally:
        journal.close()


def spent(out: Path) -> float:
    journal = Journal.open(out)
    try:
        return journal.spent()
    finally:
        journal.close()


def test_jobs_are_submitted_once_polled_and_collected_without_the_key_on_media(jobs: JobServer,
                                                                                tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run(jobs, source(tmp_path, 6), out, concurrency=3)
    assert report.exit_code == 0, report.aborted
    rows = read_output(out)
    assert all(r["pixelmill"]["status"] == "done" and len(r["images"]) == 1 for r in rows)
    assert all(r["pixelmill"]["cost_usd"] == PRICE for r in rows)
    assert "job" not in rows[0]["pixelmill"]
    assert set(jobs.submits.values()) == {1} and len(jobs.submits) == 6
    assert report.stats.jobs_submitted == 6 and report.stats.polls >= 6
    assert jobs.media_auth == [""] * 6  # media URLs never carry the key
    assert all(k == f"Key {KEY}" for k in jobs.seen_keys)
    assert spent(out) == pytest.approx(6 * PRICE)
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_a_job_still_running_stays_journaled_and_a_rerun_collects_it_without_submitting(
        jobs: JobServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    src = source(tmp_path, 3)
    jobs.script["job prompt 1"] = "hang"
    first = run(jobs, src, out, deadline=1.0)
    assert first.exit_code == 4  # submitted, not yet collected
    assert first.stats.jobs_left == 1
    left = live(out)
    assert len(left) == 1 and left[0][2].info["job"]["id"].startswith("job-")
    assert left[0][2].status == "pending"
    assert spent(out) == pytest.approx(3 * PRICE)  # the live job's reservation counts
    status = cli("status", out)
    assert "live remote jobs: 1" in status.output
    del jobs.script["job prompt 1"]
    second = run(jobs, src, out)
    assert second.exit_code == 0, second.aborted
    assert jobs.submits["job prompt 1"] == 1  # polled, never submitted again
    assert live(out) == []
    assert spent(out) == pytest.approx(3 * PRICE)  # collected: the reservation became the bill, counted once
    assert second.stats.spent == pytest.approx(0.0)  # nothing new was paid by the re-run


def test_polls_that_keep_failing_end_at_the_deadline_with_the_job_journaled(jobs: JobServer, tmp_path: Path) -> None:
    # Polls that fail are polled again (they are free), but the call's deadline still bounds them: before, a
    # status endpoint down for good kept the run polling forever.
    import threading

    out = tmp_path / "out"
    jobs.polls_fail = True
    reports: list[Any] = []
    worker = threading.Thread(target=lambda: reports.append(run(jobs, source(tmp_path, 2), out, deadline=1.0)),
                              daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert reports, "the run kept polling past its deadline"
    assert reports[0].exit_code == 4 and reports[0].stats.jobs_left == 2
    assert len(live(out)) == 2  # still journaled: a re-run collects them
    jobs.polls_fail = False
    assert run(jobs, source(tmp_path, 2), out).exit_code == 0
    assert set(jobs.submits.values()) == {1}


def test_a_result_that_expired_before_the_resume_fails_paid_and_lost_and_is_not_resubmitted(
        jobs: JobServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    src = source(tmp_path, 2)
    jobs.script["job prompt 0"] = "hang"
    assert run(jobs, src, out, deadline=1.0).exit_code == 4
    del jobs.script["job prompt 0"]
    jobs.ttl = 0.0  # the job finishes at once and its result is gone by the time it is polled
    jobs.latency = -10
    second = run(jobs, src, out)
    assert second.exit_code == 1
    row = read_output(out)[0]["pixelmill"]
    assert row["status"] == "failed" and row["error"]["kind"] == "result_lost"
    assert "was paid and its result lost" in row["error"]["message"]
    assert "--retry-failed" in row["error"]["message"]
    assert row["unanswered"] == {"calls": 1, "cost_usd_max": PRICE}  # charged: it was paid
    assert jobs.submits["job prompt 0"] == 1
    assert spent(out) == pytest.approx(2 * PRICE)
    jobs.ttl = None
    assert run(jobs, src, out).exit_code == 1
    assert jobs.submits["job prompt 0"] == 1  # nothing resubmitted without --retry-failed
    assert run(jobs, src, out, retry_failed=True).exit_code == 0
    assert jobs.submits["job prompt 0"] == 2


def test_a_job_failed_on_the_server_is_submitted_again_and_counted(jobs: JobServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    jobs.script["job prompt 0"] = "fail_once"
    jobs.script["job prompt 1"] = "refuse"
    report = run(jobs, source(tmp_path, 2), out)
    rows = read_output(out)
    assert rows[0]["pixelmill"]["status"] == "done" and rows[0]["pixelmill"]["resubmits"] == 1
    assert jobs.submits["job prompt 0"] == 2
    assert rows[1]["pixelmill"]["error"]["kind"] == "refused" and jobs.submits["job prompt 1"] == 1
    assert report.stats.jobs_resubmitted == 1
    assert spent(out) == pytest.approx(PRICE)  # the failed and the refused job are not charged


def test_a_submit_whose_answer_was_lost_is_found_by_listing_not_submitted_again(jobs: JobServer,
                                                                                tmp_path: Path) -> None:
    out = tmp_path / "out"
    jobs.script["job prompt 0"] = "drop_answer"
    report = run(jobs, source(tmp_path, 2), out)
    assert report.exit_code == 0, report.aborted
    assert jobs.submits["job prompt 0"] == 1
    assert report.stats.jobs_recovered == 1
    row = read_output(out)[0]["pixelmill"]
    assert "unanswered" not in row  # found: not charged as an unknown outcome
    assert spent(out) == pytest.approx(2 * PRICE)


def test_a_budget_counts_live_jobs_across_runs_and_collecting_them_is_not_paid_twice(
        jobs: JobServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    src = source(tmp_path, 6)
    for i in range(4):
        jobs.script[f"job prompt {i}"] = "hang"
    first = run(jobs, src, out, limit=4, max_cost=5 * PRICE + 1e-9, deadline=1.0)
    assert first.exit_code == 4 and len(live(out)) == 4
    jobs.script.clear()
    second = run(jobs, src, out, max_cost=5 * PRICE + 1e-9)
    assert second.abort_kind == "budget"
    assert sum(jobs.submits.values()) == 5  # 4 collected (submitted once) + 1 new: the 6th would pass the budget
    assert spent(out) == pytest.approx(5 * PRICE)
    counts = [r["pixelmill"]["status"] for r in read_output(out)]
    assert counts.count("done") == 5 and counts.count("pending") == 1


def test_cancel_cancels_live_jobs_and_a_rerun_submits_them_anew(jobs: JobServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    src = source(tmp_path, 3)
    jobs.script["job prompt 0"] = "hang"
    jobs.script["job prompt 2"] = "hang"
    assert run(jobs, src, out, deadline=1.0).exit_code == 4
    result = cli("cancel", out, env={"LOOP_KEY": KEY})
    assert result.code == 0, result.output
    assert "cancelled 2 live remote jobs" in result.output
    assert "run the same command again to submit them anew" in result.output
    assert sorted(jobs.cancelled) == sorted(j.id for j in jobs.jobs.values() if j.prompt != "job prompt 1")
    assert live(out) == []
    journal = Journal.open(out)
    try:
        status, raw = journal.db.execute(
            "SELECT status, info FROM results WHERE row = (SELECT row FROM records WHERE position = 0)").fetchone()
    finally:
        journal.close()
    info = orjson.loads(raw)
    assert status == "pending" and "job" not in info
    assert info["cancelled"][0]["said"] == "cancellation_requested"
    assert info["unanswered"] == {"calls": 1, "cost_usd_max": PRICE}  # it may have run: its charge is kept
    jobs.script.clear()
    assert run(jobs, src, out).exit_code == 0
    assert jobs.submits["job prompt 0"] == 2 and jobs.submits["job prompt 1"] == 1
    assert cli("cancel", out, env={"LOOP_KEY": KEY}).output.strip().endswith("no live remote jobs to cancel")
