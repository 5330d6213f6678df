"""Benchmark 4: peak memory of the client against the size of the dataset.

Latency 0, high concurrency, small images: the client runs flat out, so anything it keeps per row shows up.
Peak RSS is the client process's own `ru_maxrss` (start-up included). Flat is the goal: the 20k-row run within
1.25x of the 2k-row one.
"""

from __future__ import annotations

from pathlib import Path

from bench.emulator import EmulatorProcess
from bench.harness import Row, client_command, run_client, write_prompts

TARGET_GROWTH = 1.25


def run(workdir: Path, sizes: list[int], *, concurrency: int = 128, profile: bool = False) -> list[Row]:
    runs: list[dict[str, float]] = []
    with EmulatorProcess(latency=0.0, seed=0, max_log=1000) as emu:  # the log is not needed here
        emu.warm()
        for n in sizes:
            tag = f"memory-n{n}"
            prompts = write_prompts(workdir / f"{tag}.jsonl", n, tag)
            emu.reset()
            client = run_client(workdir, client_command(prompts, workdir / tag, emu.openai_url, "--concurrency",
                                                        str(concurrency)), name=tag, profile=profile)
            report = client.report
            runs.append({
                "rows": n, "exit_code": client.exit_code, "peak_rss_mb": round(report["peak_rss_mb"], 1),
                "client_wall_s": round(report["command_wall_s"], 2), "client_cpu_s": round(report["command_cpu_s"], 2),
                "images_per_s": round(n / report["command_wall_s"], 1),
                "cpu_ms_per_image": round(1000 * report["command_cpu_s"] / n, 3),
            })
    base = runs[0]["peak_rss_mb"]
    rows = []
    for entry in runs:
        growth = entry["peak_rss_mb"] / base
        rows.append(Row(
            bench="memory", case=f"{entry['rows']:,} rows C={concurrency}", figure=entry["peak_rss_mb"],
            unit="MB peak RSS",
            target=f"<= {TARGET_GROWTH}x the {runs[0]['rows']:,}-row run" if entry is not runs[0] else "(base)",
            ok=(growth <= TARGET_GROWTH) if entry is not runs[0] else None,
            details={**entry, "growth_vs_first": round(growth, 3)},
        ))
    return rows
