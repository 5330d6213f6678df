"""A killed run, re-run, pays again at most for the calls that were in flight; Ctrl-C stops cleanly."""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path

from PIL import Image

from pixelmill.testing import Emulator
from tests.runs import cli_process, prompts, read_output, write_jsonl

CONCURRENCY = 8


def _wait_for(emu: Emulator, answered: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while emu.count(status=200) < answered:
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.01)


def _repeats(emu: Emulator) -> int:
    per_prompt = collections.Counter(r.prompt for r in emu.records(endpoint="generations"))
    return sum(n - 1 for n in per_prompt.values() if n > 1)


def _check_images(rundir: Path, rows: list[dict]) -> None:
    for row in rows:
        for path in row["images"]:
            with Image.open(rundir / path) as img:
                img.load()
    leftovers = [p for p in (rundir / "images").rglob("*") if p.name.endswith(".pixelmill-tmp")]
    assert not leftovers


def test_sigkill_then_resume_pays_at_most_the_calls_in_flight(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(latency=0.1, latency_sigma=0.5, seed=11)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(120))
    run = tmp_path / "run"
    args = ("generate", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "--concurrency",
            str(CONCURRENCY), "--quiet")
    for answered in (15, 50):  # kill twice, at different points
        proc = cli_process(*args)
        _wait_for(emulator_thread, answered)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    proc = cli_process(*args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    rows = read_output(run)
    assert len(rows) == 120
    assert all(r["pixelmill"]["status"] == "done" and len(r["images"]) == 1 for r in rows)
    assert len({r["images"][0] for r in rows}) == 120
    _check_images(run, rows)
    assert _repeats(emulator_thread) <= 2 * CONCURRENCY  # two kills, each losing at most the calls in flight


def test_first_ctrl_c_stops_cleanly_and_resume_completes(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(latency=0.2)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(80))
    run = tmp_path / "run"
    args = ("generate", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "--concurrency",
            str(CONCURRENCY))
    proc = cli_process(*args)
    _wait_for(emulator_thread, 10)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err.decode()
    assert "interrupted" in err.decode()
    rows = read_output(run)
    assert len(rows) == 80
    statuses = collections.Counter(r["pixelmill"]["status"] for r in rows)
    assert statuses["failed"] == 0 and statuses["pending"] > 0
    # Every call that was answered was recorded: nothing in the log is missing from the output.
    assert statuses["done"] == emulator_thread.count(status=200)
    proc = cli_process(*args)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert _repeats(emulator_thread) == 0
    _check_images(run, read_output(run))
