"""Batch benchmark (`--batch`, issue 13): peak memory of a batch run against the size of the dataset, and the cost
and requests of the same rows sync vs batch on the emulator's prices.

Run: `PYTHONPATH=src python -m bench.batch_memory [--sizes 2000,20000] [--compare 1000]`.
Peak RSS is the client process's own `ru_maxrss` (bench/client.py). Flat is the goal: the largest run within
1.25x of the smallest (lines go to disk as they are made; output files are streamed to disk and read a line at
a time). The comparison prints each mode's total cost (from the output's `cost_usd`) and the HTTP requests the
emulator saw.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench.emulator import EmulatorProcess
from bench.harness import client_command, run_client, write_prompts

TARGET_GROWTH = 1.25


def _cost(rundir: Path) -> float:
    total = 0.0
    with (rundir / "output.jsonl").open("rb") as fh:
        for line in fh:
            total += float(orjson.loads(line)["pixelmill"].get("cost_usd") or 0.0)
    return total


def memory(workdir: Path, sizes: list[int]) -> list[dict[str, Any]]:
    runs = []
    with EmulatorProcess(latency=0.0, seed=0, max_log=1000, batch_latency=1.0) as emu:
        for n in sizes:
            tag = f"batch-n{n}"
            prompts = write_prompts(workdir / f"{tag}.jsonl", n, tag)
            emu.reset()
            client = run_client(workdir, client_command(prompts, workdir / tag, emu.openai_url, "--batch",
                                                        "--quality", "low"), name=tag)
            report = client.report
            runs.append({"rows": n, "exit_code": client.exit_code, "peak_rss_mb": round(report["peak_rss_mb"], 1),
                         "wall_s": round(report["command_wall_s"], 1)})
    base = runs[0]["peak_rss_mb"]
    for entry in runs:
        entry["growth"] = round(entry["peak_rss_mb"] / base, 3)
        entry["ok"] = entry["growth"] <= TARGET_GROWTH
    return runs


def compare(workdir: Path, n: int) -> list[dict[str, Any]]:
    out = []
    with EmulatorProcess(latency=0.0, seed=0, max_log=100_000, batch_latency=1.0) as emu:
        prompts = write_prompts(workdir / f"compare-{n}.jsonl", n, "compare")
        for mode, extra in (("sync", ("--concurrency", "64")), ("batch", ("--batch",))):
            emu.reset()
            rundir = workdir / f"compare-{mode}"
            client = run_client(workdir, client_command(prompts, rundir, emu.openai_url, "--quality", "low", *extra),
                                name=f"compare-{mode}")
            out.append({"mode": mode, "rows": n, "exit_code": client.exit_code, "cost_usd": round(_cost(rundir), 4),
                        "requests": len(emu.log()), "peak_rss_mb": round(client.report["peak_rss_mb"], 1)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--compare", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for row in compare(workdir, args.compare):
            print(orjson.dumps(row).decode())
        for row in memory(workdir, [int(s) for s in args.sizes.split(",")]):
            print(orjson.dumps(row).decode())


if __name__ == "__main__":
    main()
