"""Remote jobs: polls per image and the engine's CPU per image, at job latencies of 2 s and 20 s.

    PYTHONPATH=src python -m bench.jobs_polls [--rows 200] [--concurrency 64] [--latencies 2,20]

A fal run (`--provider fal`, `fal-ai/flux/schnell`) against the emulator's fal queue in this process (a
thread), the measured client in its own process (`bench.client`: CPU of the command, imports excluded). Each job
runs `latency` seconds (25% jitter) once started. Figures per image: status polls (`GET status_url`), requests of
every kind (submit, status, result, media), client CPU in ms. The bound on wall time is a perfect pool of C slots
replayed on the run times the emulator drew for these jobs (bench/pool.py: no submit, poll or download cost);
the ratio says how much the client adds to the provider's own time, mostly the wait between a job's end and the
poll that finds it (engine/polling.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.emulator import REPO, bench_env
from bench.harness import Row
from bench.pool import perfect_pool_span
from pixelmill.testing import Emulator, EmulatorConfig, ThreadRunner

KEY = "fal-bench-key-0b9d2f6c4a"
MODEL = "fal-ai/flux/schnell"


def measure(workdir: Path, rows: int, concurrency: int, latency: float) -> dict[str, Any]:
    src = workdir / f"in-{latency:g}.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"prompt": f"polls {latency:g} row {i}"}) + b"\n" for i in range(rows)))
    out = workdir / f"out-{latency:g}"
    report = workdir / f"client-{latency:g}.json"
    emu = Emulator(EmulatorConfig(job_latency=latency, job_jitter=0.25, fal_concurrency=max(40, concurrency)))
    with ThreadRunner(emu):
        command = [sys.executable, "-m", "bench.client", "--report", str(report), "--", "generate", str(src),
                   "-o", str(out), "--provider", "fal", "--model", MODEL, "--base-url", emu.jobs_base_url,
                   "--concurrency", str(concurrency), "--quiet", "--restart"]
        started = time.monotonic()
        done = subprocess.run(command, cwd=REPO, env=bench_env(FAL_KEY=KEY), capture_output=True, text=True,
                              timeout=3600, check=False)
        wall = time.monotonic() - started
        if not report.exists():
            raise RuntimeError(f"the client wrote no report (exit {done.returncode}): {done.stderr[-2000:]}")
        client = orjson.loads(report.read_bytes())
        images = emu.count(endpoint="media", status=200)
        polls = emu.count(family="fal", endpoint="status")
        requests = len(emu.records(family="fal"))  # submits, polls, results and media
        submits = sum(emu.submits(family="fal").values())
        keyed_media = len(emu.records(endpoint="media", key_sent=True))
        # The jobs' own run times as the emulator drew them, in submit order (DESIGN 4: the same latencies).
        run_times = [job.latency for job in sorted(emu.jobs("fal"), key=lambda job: job.submitted)]
    bound = perfect_pool_span(run_times, concurrency)
    return {
        "rows": rows, "concurrency": concurrency, "job_latency_s": latency, "exit_code": client["exit_code"],
        "images": images, "submits": submits, "status_polls": polls,
        "polls_per_image": round(polls / max(1, images), 2),
        "requests_per_image": round(requests / max(1, images), 2),
        "cpu_ms_per_image": round(1000 * client["command_cpu_s"] / max(1, images), 2),
        "client_wall_s": round(client["command_wall_s"], 2), "wall_s": round(wall, 2),
        "bound_s": round(bound, 2), "ratio_to_bound": round(bound / max(client["command_wall_s"], 1e-9), 3),
        "peak_rss_mb": round(client["peak_rss_mb"], 1), "media_requests_with_key": keyed_media,
    }


def run(workdir: Path, rows: int = 256, concurrency: int = 64, latencies: tuple[float, ...] = (2.0, 20.0)
        ) -> list[Row]:
    out = []
    for latency in latencies:
        m = measure(workdir, rows, concurrency, latency)
        out.append(Row(bench="jobs", case=f"fal polls, job latency {latency:g} s, N={rows} C={concurrency}",
                       figure=m["polls_per_image"], unit="status polls / image", target="informational",
                       ok=None, details=m))
        out.append(Row(bench="jobs", case=f"fal CPU, job latency {latency:g} s", figure=m["cpu_ms_per_image"],
                       unit="ms CPU / image", target="<= 5", ok=m["cpu_ms_per_image"] <= 5.0, details={}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latencies", default="2,20")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for latency in (float(v) for v in args.latencies.split(",")):
            print(orjson.dumps(measure(Path(tmp), args.rows, args.concurrency, latency)).decode(), flush=True)


if __name__ == "__main__":
    main()
