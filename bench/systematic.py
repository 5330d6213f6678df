"""Benchmark: how soon a wrong `--base-url` stops a run (engine/systematic.py). The real command, as a user types
it, against a loopback port that refuses connections, for 96 and 10,000 rows: attempts made, seconds (the whole
process, start-up included), exit status and rows left pending. Before the watch: 96 rows made 576 attempts over
74 s and failed every row (exit 1).

    python -m bench.systematic
"""

from __future__ import annotations

import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import orjson

from bench.emulator import bench_env
from bench.harness import pixelmill_argv

SIZES = (96, 10_000)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def measure(rows: int, folder: Path) -> dict[str, object]:
    src = folder / f"in{rows}.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"prompt": f"prompt {i}"}) + b"\n" for i in range(rows)))
    out = folder / f"run{rows}"
    url = f"http://127.0.0.1:{closed_port()}/v1"
    started = time.perf_counter()
    proc = subprocess.run([*pixelmill_argv(), "generate", str(src), "-o", str(out), "--base-url", url],
                          env=bench_env(), capture_output=True, text=True, timeout=600, check=False)
    seconds = time.perf_counter() - started
    found = re.search(r"from (\d+) requests", proc.stderr + proc.stdout)
    pending = sum(1 for line in (out / "output.jsonl").read_bytes().splitlines()
                  if orjson.loads(line)["pixelmill"].get("status") == "pending")
    return {"rows": rows, "attempts": int(found.group(1)) if found else None, "seconds": round(seconds, 2),
            "exit": proc.returncode, "pending": pending}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for rows in SIZES:
            print(orjson.dumps(measure(rows, Path(tmp))).decode())


if __name__ == "__main__":
    main()
