"""--ray against one machine: the same API workload, throughput of each, and their ratio (target >= 0.9).

    PYTHONPATH=src .venv/bin/python -m bench.ray_throughput                # 640 rows, concurrency 64, latency 1 s
    PYTHONPATH=src .venv/bin/python -m bench.ray_throughput --rows 1280 --workers 2

The emulator (a thread of this process, loopback) answers every request after `--latency` seconds. The same
rows go through the engine twice, into two RUNDIRs: on one machine, then with --ray on a local cluster (a head
and `--workers` worker nodes on 127.0.0.1, started before the clock runs: a cluster is started once, not per
run). Throughput is rows / span, the span from the emulator's log (first request received to last answer sent);
each run's efficiency is a perfect pool of `--concurrency` slots replayed on its own realised latencies
(bench/pool.py) over its span. The ratio is Ray's throughput over one machine's. Both outputs are compared row
by row (statuses and image bytes) so that a fast wrong run cannot pass.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when Ray is imported: loopback only

import orjson

from bench.pool import perfect_pool_span
from pixelmill.api import run_config
from pixelmill.options import build_config, job_options
from pixelmill.testing import Emulator, EmulatorConfig

KEY = "sk-bench-ray-0123456789abcdef"


def one_run(emu: Emulator, src: Path, out: Path, concurrency: int, ray: bool) -> dict[str, Any]:
    emu.reset_log()
    config = build_config("generate", src, job_options(output=out, base_url=emu.openai_base_url, api_key=KEY,
                                                        concurrency=concurrency, ray=ray))
    wall = time.perf_counter()
    report = run_config(config)
    wall = time.perf_counter() - wall
    records = [r for r in emu.log if r.endpoint == "generations" and r.finished is not None]
    starts = [r.started for r in records]
    span = max(r.finished for r in records if r.finished is not None) - min(starts)
    bound = perfect_pool_span([(r.finished or 0.0) - r.started for r in sorted(records, key=lambda r: r.started)],
                              concurrency)
    return {"exit": report.exit_code, "requests": len(records), "span_s": round(span, 3), "wall_s": round(wall, 3),
            "images_per_s": round(len(records) / span, 2), "efficiency": round(bound / span, 3)}


def digest(rundir: Path) -> list[tuple[str, list[str]]]:
    rows = [orjson.loads(line) for line in (rundir / "output.jsonl").read_bytes().splitlines()]
    return [(r["pixelmill"]["status"], [hashlib.sha256((rundir / p).read_bytes()).hexdigest() for p in r["images"]])
            for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=640)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    work = Path(tempfile.mkdtemp(prefix="pixelmill-ray-bench-"))
    src = work / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"prompt": f"bench prompt {i}"}) + b"\n" for i in range(args.rows)))
    with Emulator(EmulatorConfig(latency=args.latency)).run_in_thread() as emu:
        alone = one_run(emu, src, work / "alone", args.concurrency, ray=False)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                                "include_dashboard": False})
        try:
            for _ in range(args.workers):
                cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, _node_ip_address="127.0.0.1", log_to_driver=False)
            spread = one_run(emu, src, work / "ray", args.concurrency, ray=True)
        finally:
            ray.shutdown()
            cluster.shutdown()
    same = digest(work / "alone") == digest(work / "ray")
    result = {"rows": args.rows, "concurrency": args.concurrency, "latency_s": args.latency,
              "nodes": 1 + args.workers, "one_machine": alone, "ray": spread,
              "ratio": round(spread["images_per_s"] / alone["images_per_s"], 3), "same_output": same,
              "load": [round(x, 2) for x in os.getloadavg()]}
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
