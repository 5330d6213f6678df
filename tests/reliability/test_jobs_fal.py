"""Remote-job drills with real processes against the emulator's fal queue (`--provider fal --base-url <emulator>`):
SIGKILL at random moments then resume (a small `bench/jobs_kill.py`), Ctrl-C then re-run, a result that expires
before the resume. The emulator counts jobs created per row: none may be submitted twice except rows whose submit
was in flight at a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from bench.jobs_kill import drill

from pixelmill.testing import Emulator, EmulatorConfig, ThreadRunner
from tests.runs import read_output, write_jsonl

KEY = "fal-test-key-93b1d0c4a8e27f56"


@pytest.fixture
def emu() -> Iterator[Emulator]:
    emulator = Emulator(EmulatorConfig(job_latency=0.5))
    with ThreadRunner(emulator):
        yield emulator


def command(src: Path, out: Path, emu: Emulator, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pixelmill", "generate", str(src), "-o", str(out), "--provider", "fal", "--model",
            "fal-ai/flux/schnell", "--base-url", emu.jobs_base_url, "--concurrency", "4", *extra]


def start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env={**os.environ, "FAL_KEY": KEY}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_submits(emu: Emulator, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(emu.submits(family="fal").values()) < n:
        assert time.monotonic() < deadline, "the run submitted nothing"
        time.sleep(0.05)


def no_key_anywhere(emu: Emulator, out: Path, *texts: bytes) -> None:
    assert emu.records(endpoint="media", key_sent=True) == []
    assert emu.count(endpoint="media") > 0
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    for text in texts:
        assert KEY.encode() not in text


def test_sigkill_at_random_moments_then_resume_submits_twice_only_what_was_in_flight(tmp_path: Path) -> None:
    figures = drill(tmp_path, rows=40, concurrency=8, latency=0.5, kills=3, seed=7, wait=(0.0, 1.5))
    assert figures["done"] == 40
    assert figures["twice_without_lost_submit"] == []
    assert figures["extra_submits"] <= figures["submits_in_flight_at_kills"]
    assert figures["max_submits_per_row"] <= 2
    assert figures["key_on_media"] == 0 and figures["key_in_files"] == []


def test_ctrl_c_collects_the_jobs_in_flight_and_a_rerun_submits_none_again(emu: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"a kite {i}"} for i in range(16)])
    out = tmp_path / "out"
    process = start(command(src, out, emu))
    wait_for_submits(emu, 5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 3, err.decode()
    assert b"interrupted" in err
    before = emu.submits(family="fal")
    done = [r for r in read_output(out) if r["pixelmill"]["status"] == "done"]
    assert len(done) == sum(before.values())  # every job submitted was collected in the drain
    rerun = subprocess.run(command(src, out, emu), env={**os.environ, "FAL_KEY": KEY}, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr.decode()
    after = emu.submits(family="fal")
    assert set(after.values()) == {1} and len(after) == 16  # none submitted again
    no_key_anywhere(emu, out, err, rerun.stderr)


def test_a_second_ctrl_c_leaves_jobs_running_journaled_and_a_rerun_collects_them(emu: Emulator,
                                                                                  tmp_path: Path) -> None:
    emu.configure(job_latency=3.0)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"a lighthouse {i}"} for i in range(8)])
    out = tmp_path / "out"
    process = start(command(src, out, emu))
    wait_for_submits(emu, 4)
    time.sleep(0.3)  # the handles are journaled before anything polls
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 3, err.decode()
    submitted = sum(emu.submits(family="fal").values())
    assert f"{submitted} remote jobs still running stay journaled: run the same command again to collect them " \
           "(they are not submitted again)" in err.decode()
    status = subprocess.run([sys.executable, "-m", "pixelmill", "status", str(out)], capture_output=True)
    assert f"live remote jobs: {submitted} (generate: {submitted}" in status.stdout.decode()
    rerun = subprocess.run(command(src, out, emu), env={**os.environ, "FAL_KEY": KEY}, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr.decode()
    after = emu.submits(family="fal")
    assert set(after.values()) == {1} and len(after) == 8
    assert all(r["pixelmill"]["status"] == "done" for r in read_output(out))


def test_a_result_that_expires_before_the_resume_fails_paid_and_lost_and_nothing_is_resubmitted(
        emu: Emulator, tmp_path: Path) -> None:
    emu.configure(job_latency=1.0)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"a glacier {i}"} for i in range(4)])
    out = tmp_path / "out"
    process = start(command(src, out, emu))
    wait_for_submits(emu, 4)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    emu.configure(retention_scale=1e-6)  # every result and media object is gone by the resume
    time.sleep(1.5)
    rerun = subprocess.run(command(src, out, emu), env={**os.environ, "FAL_KEY": KEY}, capture_output=True)
    assert rerun.returncode == 1, rerun.stderr.decode()
    rows = read_output(out)
    lost = [r["pixelmill"] for r in rows if r["pixelmill"]["status"] == "failed"]
    assert lost and all(p["error"]["kind"] == "result_lost" for p in lost)
    assert all("was paid and its result lost" in p["error"]["message"] and "--retry-failed" in p["error"]["message"]
               for p in lost)
    assert set(emu.submits(family="fal").values()) == {1}
    again = subprocess.run(command(src, out, emu), env={**os.environ, "FAL_KEY": KEY}, capture_output=True)
    assert again.returncode == 1
    assert set(emu.submits(family="fal").values()) == {1}  # nothing resubmitted without --retry-failed
    status = orjson.loads(subprocess.run([sys.executable, "-m", "pixelmill", "status", str(out), "--json"],
                                         capture_output=True).stdout)
    assert any(g["kind"] == "result_lost" for g in status["failures"])
