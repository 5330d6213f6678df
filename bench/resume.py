"""Benchmark 5: the cost of a killed run. A real `pixelmill generate` is SIGKILLed half-way, then the same
command is run again; the emulator's log says which prompts the second run asked for that the first run had
already been answered (paid) for. DESIGN 4: at most the calls in flight, so at most the concurrency.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import orjson

from bench.emulator import REPO, EmulatorProcess, bench_env
from bench.harness import Row, client_command, pixelmill_argv, write_prompts


def run(workdir: Path, n: int, *, concurrency: int = 32, kill_at: float = 0.5) -> list[Row]:
    tag = f"resume-n{n}-c{concurrency}"
    prompts = write_prompts(workdir / f"{tag}.jsonl", n, tag)
    command = client_command(prompts, workdir / tag, "", "--concurrency", str(concurrency))
    with EmulatorProcess(latency=0.2, latency_sigma=0.5, seed=0) as emu:
        emu.warm()
        command[command.index("--base-url") + 1] = emu.openai_url
        first_cmd = [*pixelmill_argv(), *command]
        again_cmd = [a for a in first_cmd if a != "--restart"]  # the same command again: resume
        proc = subprocess.Popen(first_cmd, cwd=REPO, env=bench_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        answered_at_kill = _wait_answered(emu, int(n * kill_at), proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)  # let the emulator see the cut connections
        first = emu.log()
        boundary = max(r.seq for r in first)
        t = time.monotonic()
        again = subprocess.run(again_cmd, cwd=REPO, env=bench_env(), capture_output=True, text=True, check=False)
        again_wall = time.monotonic() - t
        second = [r for r in emu.log() if r.seq > boundary]
    paid_first = {r.prompt for r in first if r.status == 200}
    cut_first = sum(1 for r in first if r.status != 200)
    repeats = sum(1 for r in second if r.prompt in paid_first and r.status == 200)
    output = workdir / tag / "output.jsonl"
    statuses = [orjson.loads(line)["pixelmill"].get("status") for line in output.read_bytes().splitlines()]
    done = statuses.count("done")
    images = sum(1 for _ in (workdir / tag / "images").rglob("*.png"))
    return [Row(
        bench="resume", case=f"N={n} C={concurrency}, SIGKILL at {answered_at_kill} answered", figure=repeats,
        unit="paid repeats", target=f"<= {concurrency} (the calls in flight)", ok=repeats <= concurrency,
        details={
            "answered_before_kill": len(paid_first), "cut_in_flight_at_kill": cut_first,
            "second_run_requests": len(second), "paid_repeats": repeats, "repeats_over_concurrency":
            round(repeats / concurrency, 3), "second_run_exit_code": again.returncode,
            "second_run_wall_s": round(again_wall, 2), "rows_done_after_resume": done, "rows": n,
            "image_files": images,
        },
    )]


def _wait_answered(emu: EmulatorProcess, count: int, proc: subprocess.Popen[bytes]) -> int:
    """Poll the emulator until `count` requests have been answered (or the client exited)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        answered = sum(1 for r in emu.log() if r.status == 200)
        if answered >= count:
            return answered
        time.sleep(0.05)
    raise RuntimeError("the first run ended before it could be killed half-way")
