"""Ctrl-C: the first one stops sending, lets the calls in flight finish, records them and exits 3; the journal is
consistent, `status` tells what is pending and how to go on, and the re-run completes without paying twice.
A second Ctrl-C, and a Ctrl-C while rows wait out a rate limit, must not make things worse."""

from __future__ import annotations

import collections
import signal
import subprocess
import time
from pathlib import Path

import orjson

from pixelmill.testing import Emulator
from tests.reliability.invariants import (
    assert_every_row_once,
    assert_journal_consistent,
    assert_no_corrupt_image,
    image_files,
)
from tests.runs import cli, cli_process, read_output, write_jsonl

CONCURRENCY = 8


def start(emu: Emulator, src: Path, run: Path) -> subprocess.Popen[bytes]:
    return cli_process("generate", src, "-o", run, "--base-url", emu.openai_base_url, "--concurrency",
                       str(CONCURRENCY), "--size", "512x512", "--quiet")


def wait_until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the run did not get there"
        time.sleep(0.005)


def paid_repeats(emu: Emulator) -> int:
    per_prompt = collections.Counter(r.prompt for r in emu.records(endpoint="generations", status=200))
    return sum(n - 1 for n in per_prompt.values())


def test_first_ctrl_c_stops_sending_records_calls_in_flight_and_resumes(emulator_thread: Emulator,
                                                                         tmp_path: Path) -> None:
    emulator_thread.configure(latency=0.3, latency_sigma=0.3, seed=4)
    sources = [{"prompt": f"interrupted row {i}"} for i in range(100)]
    src = write_jsonl(tmp_path / "in.jsonl", sources)
    run = tmp_path / "run"
    proc = start(emulator_thread, src, run)
    wait_until(lambda: emulator_thread.count(status=200) >= 12 and emulator_thread.in_flight >= 4)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    stopped = time.monotonic() - signalled
    text = err.decode()
    assert proc.returncode == 3, text
    assert "interrupted" in text and "to continue: pixelmill generate" in text
    assert "Traceback" not in text
    assert stopped < 5.0  # the calls in flight take about 0.3 s; nothing else is waited for

    sent = emulator_thread.records(endpoint="generations")
    late = [r for r in sent if r.started > signalled + 0.25]
    assert not late, f"{len(late)} requests were sent after Ctrl-C"
    assert all(r.status == 200 for r in sent), "a call in flight was cut instead of finished"

    # The journal holds every answered call; the output every row, done or pending; the images are whole.
    assert_no_corrupt_image(run)
    rows = assert_journal_consistent(run)
    out = read_output(run)
    assert_every_row_once(out, sources)
    statuses = collections.Counter(r["pixelmill"]["status"] for r in out)
    assert statuses["failed"] == 0 and statuses["pending"] > 0
    done = {r["prompt"] for r in out if r["pixelmill"]["status"] == "done"}
    assert done == {r.prompt for r in sent}
    assert sum(1 for status, _ in rows.values() if status == "done") == len(done)
    assert not image_files(run)[1]

    status = cli("status", run, "--json")
    assert status.code == 0
    state = orjson.loads(status.output)
    assert (state["done"], state["pending"], state["failed"]) == (len(done), statuses["pending"], 0)
    assert state["command"] and "--restart" not in state["command"]

    emulator_thread.configure(latency=0.01)
    proc = start(emulator_thread, src, run)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert paid_repeats(emulator_thread) == 0
    assert [r["pixelmill"]["status"] for r in read_output(run)] == ["done"] * len(sources)
    assert_no_corrupt_image(run)


def test_second_ctrl_c_stops_at_once_and_still_exits_3(emulator_thread: Emulator, tmp_path: Path) -> None:
    """The second Ctrl-C does not wait for slow calls in flight; it still ends as an interrupted run: exit 3, one
    clear line instead of a traceback, every row in the output (pending), a consistent journal."""
    emulator_thread.configure(latency=3.0)
    sources = [{"prompt": f"twice interrupted row {i}"} for i in range(30)]
    src = write_jsonl(tmp_path / "in.jsonl", sources)
    run = tmp_path / "run"
    proc = start(emulator_thread, src, run)
    wait_until(lambda: emulator_thread.in_flight >= CONCURRENCY)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - signalled < 2.0
    assert "Traceback" not in err.decode()
    assert proc.returncode == 3, err.decode()[-2000:]
    assert_journal_consistent(run)
    out = read_output(run)
    assert_every_row_once(out, sources)
    assert {r["pixelmill"]["status"] for r in out} == {"pending"}
    emulator_thread.configure(latency=0.0)
    proc = start(emulator_thread, src, run)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert paid_repeats(emulator_thread) <= CONCURRENCY


def test_ctrl_c_does_not_wait_out_a_rate_limit(emulator_thread: Emulator, tmp_path: Path) -> None:
    """Rows that wait out a 429's Retry-After are not calls in flight: Ctrl-C stops them at once."""
    emulator_thread.configure(latency=0.02, faults={"rate_limit": 0.3}, retry_after=3.0, seed=8)
    sources = [{"prompt": f"rate limited row {i}"} for i in range(40)]
    src = write_jsonl(tmp_path / "in.jsonl", sources)
    run = tmp_path / "run"
    proc = start(emulator_thread, src, run)
    wait_until(lambda: emulator_thread.count(status=429) >= 1)
    time.sleep(0.2)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err.decode()
    assert time.monotonic() - signalled < 2.0, "Ctrl-C waited for the rate limit to pass"
    out = read_output(run)
    assert_every_row_once(out, sources)
    assert "failed" not in {r["pixelmill"]["status"] for r in out}
