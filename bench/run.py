"""Run pixelmill's benchmarks against the emulator (in its own process, over loopback).

    .venv/bin/python -m bench.run --quick          # under 3 minutes on 2 cores
    .venv/bin/python -m bench.run                  # the full suite (about 15 minutes)
    .venv/bin/python -m bench.run --only latency,cpu --profile

Prints a table and writes everything measured to bench/results/<timestamp>.json (git-ignored).
What each figure means and how its bound is computed: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench import cpu, latency, memory, ratelimit, resume, startup
from bench.emulator import REPO
from bench.harness import Row

BENCHES = ("latency", "ratelimit", "cpu", "memory", "resume", "startup")


def plan(quick: bool, workdir: Path, profile: bool) -> dict[str, Callable[[], list[Row]]]:
    if quick:
        return {
            "latency": lambda: latency.run(workdir, [(400, 8), (400, 32), (400, 128)], profile=profile),
            "ratelimit": lambda: ratelimit.run(workdir, 300, profile=profile),
            "cpu": lambda: cpu.run(workdir, 200, profile=profile),
            "memory": lambda: memory.run(workdir, [2_000, 20_000], profile=profile),
            "resume": lambda: resume.run(workdir, 400, concurrency=32),
            "startup": lambda: startup.run(repeat=10),
        }
    return {
        "latency": lambda: latency.run(workdir, [(400, 8), (400, 32), (400, 128), (2000, 8), (2000, 32),
                                                 (2000, 128)], profile=profile),
        "ratelimit": lambda: ratelimit.run(workdir, 1200, profile=profile),
        "cpu": lambda: cpu.run(workdir, 1000, profile=profile),
        "memory": lambda: memory.run(workdir, [2_000, 20_000, 200_000], profile=profile),
        "resume": lambda: [*resume.run(workdir, 400, concurrency=32), *resume.run(workdir, 2000, concurrency=128)],
        "startup": lambda: startup.run(repeat=20),
    }


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=False).stdout.strip()
    # The tree changes under benchmarks while people work: a digest of the uncommitted source changes says
    # which code a result measured.
    diff = subprocess.run(["git", "diff", "HEAD", "--", "src"], cwd=REPO, capture_output=True, check=False).stdout
    return {"cpu_model": model, "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "git_commit": commit, "src_modified": bool(diff),
            "src_diff_sha1": hashlib.sha1(diff).hexdigest()[:12] if diff else None}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def table(rows: list[Row]) -> str:
    head = ("benchmark", "case", "figure", "unit", "target", "verdict")
    lines = [head]
    for r in rows:
        verdict = "-" if r.ok is None else ("ok" if r.ok else "MISS")
        lines.append((r.bench, r.case, f"{r.figure:g}", r.unit, r.target, verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def extra_lines(rows: list[Row]) -> list[str]:
    """The second figures each benchmark owes (DESIGN 4: report both)."""
    out = []
    for r in rows:
        d = r.details
        if r.bench == "latency":
            out.append(f"latency {r.case}: {d['images_per_s']} img/s = {d['achieved_over_c_div_mean']} of C/mean "
                       f"latency ({d['c_over_mean_latency_per_s']}/s; a perfect pool reaches "
                       f"{d['bound_over_c_div_mean']}); spans {d['achieved_span_s']} s vs bound "
                       f"{d['bound_span_s']} s; client CPU {d['client_cpu_ms_per_image']} ms/img")
        elif r.bench == "ratelimit":
            out.append(f"ratelimit {r.case}: {d['steady_images_per_s']}/s of {d['limit_images_per_s']}/s; "
                       f"{d['rate_limited_429']} x 429 in {d['requests']} requests ({100 * d['share_429']:.1f}%)")
        elif r.bench == "cpu":
            m = d["micro_ms"]
            out.append(f"cpu: small images {d['small_images']['cpu_ms_per_image']:.2f} ms/img; per ~1 MB image: "
                       f"base64 {m['base64_decode']} ms ({100 * d['share_base64']:.0f}%), file write "
                       f"{m['image_store_write']} ms ({100 * d['share_file_write']:.0f}%), JSON parse "
                       f"{m['json_parse']} ms ({100 * d['share_json_parse']:.0f}%)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short suite (under 3 minutes on 2 cores)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--profile", action="store_true", help="cProfile each client run (kept in the work dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (runs, reports, profiles)")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    chosen = BENCHES if not args.only else tuple(b.strip() for b in args.only.split(","))
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHES)}")
    workdir = Path(tempfile.mkdtemp(prefix="pixelmill-bench-"))
    started = dt.datetime.now(dt.UTC)
    result: dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "mode": "quick" if args.quick
                              else "full", "machine": machine(), "command": " ".join(sys.argv), "benches": {}}
    rows: list[Row] = []
    try:
        for name, bench in plan(args.quick, workdir, args.profile).items():
            if name not in chosen:
                continue
            before, t = load(), time.monotonic()
            print(f"... {name}", file=sys.stderr, flush=True)
            got = bench()
            rows.extend(got)
            result["benches"][name] = {"rows": [r.as_dict() for r in got], "seconds": round(time.monotonic() - t, 1),
                                       "loadavg_before": before, "loadavg_after": load()}
    finally:
        if args.keep or args.profile:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(rows))
    for line in extra_lines(rows):
        print(line)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    result["seconds"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"results: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
