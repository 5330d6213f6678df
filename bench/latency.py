"""Benchmark 1: latency-bound throughput.

N requests at lognormal latency (median 0.2 s, sigma 0.5), concurrency C. The achieved span runs from the
first request's arrival to the last answer sent (emulator log); the bound is a perfect C-slot pool replayed
on the same realised latencies (each request's own duration in the log, in arrival order).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.emulator import EmulatorProcess, Request
from bench.harness import Row, client_command, run_client, write_prompts
from bench.pool import perfect_pool_span, span

MEDIAN, SIGMA = 0.2, 0.5
TARGET = 0.95


def run(workdir: Path, cases: list[tuple[int, int]], *, median: float = MEDIAN, warm: int = 300,
        profile: bool = False) -> list[Row]:
    """`cases`: (N requests, concurrency C) pairs."""
    rows = []
    with EmulatorProcess(latency=median, latency_sigma=SIGMA, seed=0) as emu:
        emu.warm(warm)
        for n, c in cases:
            tag = f"latency-n{n}-c{c}"
            prompts = write_prompts(workdir / f"{tag}.jsonl", n, tag)
            emu.configure(seed=0)  # the same latency draws for every case, in arrival order
            emu.reset()
            client = run_client(workdir, client_command(prompts, workdir / tag, emu.openai_url,
                                                        "--concurrency", str(c)), name=tag, profile=profile)
            log = [r for r in emu.log() if r.endpoint == "generations"]
            ok = [r for r in log if r.status == 200]
            rows.append(_row(n, c, log, ok, client.report, client.exit_code, emu.stats()["max_in_flight"]))
    return rows


def _row(n: int, c: int, log: list[Request], ok: list[Request], report: dict[str, Any], exit_code: int,
         max_in_flight: int) -> Row:
    log.sort(key=lambda r: r.seq)
    # Each request's own time as the emulator served it (its drawn latency plus the server's own handling,
    # under a millisecond when warm): what a perfect client would have waited for.
    durations = [r.duration for r in ok]
    achieved = span([r.started for r in ok], [r.ended for r in ok])
    bound = perfect_pool_span(durations, c)
    mean = statistics.fmean(durations)
    rate = len(ok) / achieved
    ideal_rate = c / mean
    efficiency = bound / achieved
    return Row(
        bench="latency", case=f"N={n} C={c}", figure=round(efficiency, 3), unit="bound span / achieved span",
        target=f">= {TARGET}" if c == 32 else "(info)", ok=efficiency >= TARGET if c == 32 else None,
        details={
            "requests": len(log), "answered": len(ok), "exit_code": exit_code,
            "achieved_span_s": round(achieved, 3), "bound_span_s": round(bound, 3),
            "mean_latency_s": round(mean, 4), "images_per_s": round(rate, 2),
            "c_over_mean_latency_per_s": round(ideal_rate, 2), "achieved_over_c_div_mean": round(rate / ideal_rate, 3),
            "bound_span_injected_latency_s": round(perfect_pool_span([r.latency for r in ok], c), 3),
            "bound_over_c_div_mean": round((len(ok) / bound) / ideal_rate, 3),
            "emulator_max_in_flight": max_in_flight,
            "client_cpu_s": round(report["command_cpu_s"], 3), "client_wall_s": round(report["command_wall_s"], 3),
            "client_cpu_ms_per_image": round(1000 * report["command_cpu_s"] / max(1, len(ok)), 3),
        },
    )
