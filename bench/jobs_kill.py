"""The remote-job crash drill: a fal run (against the emulator's fal queue) SIGKILLed at random moments, then
resumed to the end; the emulator counts the jobs created per row.

    PYTHONPATH=src python -m bench.jobs_kill [--rows 200] [--concurrency 16] [--latency 2] [--kills 5] [--seed 1]

What must hold (checked, and printed): every row done; no row submitted twice except rows whose submit was in
flight at a kill (its intent journaled, its answer not: the journal notes each as a lost submit); at most one
extra submit per such row (--max-billed-retries 1); the key on no media request and in no file of the RUNDIR.
`tests/reliability/test_jobs_fal.py` runs a small version.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from pixelmill.testing import Emulator, EmulatorConfig, ThreadRunner

KEY = "fal-drill-key-5e0c2a91d7b34f68"
MODEL = "fal-ai/flux/schnell"


def _journal(out: Path, query: str) -> list[tuple[Any, ...]]:
    path = out / ".pixelmill" / "journal.sqlite"
    if not path.is_file():
        return []
    db = sqlite3.connect(path)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def _command(src: Path, out: Path, emu: Emulator, concurrency: int) -> list[str]:
    return [sys.executable, "-m", "pixelmill", "generate", str(src), "-o", str(out), "--provider", "fal", "--model",
            MODEL, "--base-url", emu.jobs_base_url, "--concurrency", str(concurrency), "-q"]


def drill(workdir: Path, *, rows: int = 200, concurrency: int = 16, latency: float = 2.0, kills: int = 5,
          seed: int = 1, wait: tuple[float, float] = (0.0, 3.0)) -> dict[str, Any]:
    """Run the drill in `workdir`: each of `kills` runs is SIGKILLed `wait` seconds (uniform) after its first
    submit reached the emulator, then one run goes to the end."""
    rng = random.Random(seed)
    src = workdir / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"prompt": f"drill row {i}"}) + b"\n" for i in range(rows)))
    out = workdir / "out"
    env = {**os.environ, "FAL_KEY": KEY}
    emu = Emulator(EmulatorConfig(job_latency=latency, job_jitter=0.25))
    with ThreadRunner(emu):
        command = _command(src, out, emu, concurrency)
        in_flight = 0  # submits whose intent was journaled and answer not, at each kill
        live_at_kills = 0
        started = time.monotonic()
        for _ in range(kills):
            before = sum(emu.submits(family="fal").values())
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            limit = time.monotonic() + 60
            while sum(emu.submits(family="fal").values()) == before and process.poll() is None \
                    and time.monotonic() < limit:
                time.sleep(0.01)
            time.sleep(rng.uniform(*wait))
            process.kill()
            process.wait()
            in_flight += len(_journal(out, "SELECT row FROM intents"))
            live_at_kills += len(_journal(out, "SELECT row FROM results WHERE live > 0"))
        runs = []
        for _ in range(3):  # a run whose jobs outlive their deadline exits 4: the next collects them
            result = subprocess.run(command, env=env, capture_output=True)
            runs.append(result.returncode)
            if result.returncode != 4:
                break
        elapsed = time.monotonic() - started
        submits = emu.submits(family="fal")
        # Rows the journal says had a submit in flight at a kill (an intent whose answer was never recorded).
        lost = {f"drill row {position}" for position, info in _journal(
            out, "SELECT r.position, s.info FROM results s JOIN records r ON r.row = s.row")
            if "lost_submits" in orjson.loads(info)}
        output = [orjson.loads(line) for line in (out / "output.jsonl").read_bytes().splitlines()]
        twice = {p: n for p, n in submits.items() if n > 1}
        leaked_media = emu.records(endpoint="media", key_sent=True)
        leaked_files = [str(p) for p in out.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
        polls = emu.count(family="fal", endpoint="status")
    return {
        "rows": rows, "concurrency": concurrency, "latency": latency, "kills": kills, "final_exit": runs,
        "done": sum(1 for r in output if r["pixelmill"]["status"] == "done"),
        "jobs_created": sum(submits.values()), "rows_submitted": len(submits),
        "rows_submitted_twice": len(twice), "extra_submits": sum(n - 1 for n in twice.values()),
        "max_submits_per_row": max(submits.values(), default=0),
        "submits_in_flight_at_kills": in_flight, "live_jobs_at_kills": live_at_kills,
        "rows_with_lost_submits": len(lost), "twice_without_lost_submit": sorted(set(twice) - lost),
        "polls": polls,
        "polls_per_image": round(polls / max(1, sum(submits.values())), 2),
        "key_on_media": len(leaked_media), "key_in_files": leaked_files, "seconds": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = drill(Path(tmp), rows=args.rows, concurrency=args.concurrency, latency=args.latency,
                        kills=args.kills, seed=args.seed)
    for key, value in figures.items():
        print(f"{key}: {value}")
    ok = (figures["done"] == args.rows and not figures["twice_without_lost_submit"]
          and figures["extra_submits"] <= figures["submits_in_flight_at_kills"]
          and figures["max_submits_per_row"] <= 2 and not figures["key_on_media"] and not figures["key_in_files"])
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
