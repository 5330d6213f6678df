"""`--ray` for API providers on a local cluster (a head and two worker nodes, tests/cluster/conftest.py) against
the emulator: the same output as one machine, keys kept, limits and budget kept across the cluster, and the
failures of issue 16 (a node lost, the driver killed, Ctrl-C) bounded by the emulator's own request counts."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pixelmill.api import RunReport, run_config
from pixelmill.options import build_config, job_options
from pixelmill.testing import Emulator
from tests.cluster.conftest import RayCluster
from tests.runs import TEST_KEY, cli_process, prompts, read_output, write_jsonl

pytest.importorskip("ray")

# Rows whose fate the emulator forces (prompt markers): errors must come back from the actors as they are.
FATES = {7: "moderation", 19: "truncated", 23: "reset", 31: "server_error"}


def run(emu: Emulator, src: Path, out: Path, notes: list[str] | None = None, **options: Any) -> RunReport:
    engine = {"retry_base": 0.01, "retry_cap": 0.05}
    config = build_config("generate", src, job_options(output=out, base_url=emu.openai_base_url, api_key=TEST_KEY,
                                                        engine=engine, **options))
    return run_config(config, notice=(notes if notes is not None else []).append)


def summary(run_dir: Path) -> list[dict[str, Any]]:
    """What two runs of the same command must agree on: each row, its status, error, files and their bytes."""
    out = []
    for row in read_output(run_dir):
        meta = row["pixelmill"]
        out.append({
            "prompt": row["prompt"], "images": row["images"], "status": meta["status"],
            "error": _no_ids(meta.get("error")), "attempts": meta.get("attempts"), "cost": meta.get("cost_usd"),
            "usage": meta.get("usage"), "model": meta.get("model"), "parameters": meta.get("parameters"),
            "files": [hashlib.sha256((run_dir / p).read_bytes()).hexdigest() for p in row["images"]],
        })
    return out


def _no_ids(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """An error without the request ids the emulator drew for it (each run's own)."""
    if error is None:
        return None
    return {k: re.sub(r"req_[0-9a-f]+", "req_*", v) if isinstance(v, str) else v for k, v in error.items()}


def in_flight(emu: Emulator, start: float, end: float) -> int:
    """Requests the emulator had started and not answered at some moment between `start` and `end`."""
    return sum(1 for r in emu.log if r.started <= end and (r.finished is None or r.finished >= start))


def repeats(emu: Emulator) -> Counter[str]:
    counts = Counter(r.prompt for r in emu.records(endpoint="generations"))
    return Counter({p: c - 1 for p, c in counts.items() if p is not None and c > 1})


def test_a_run_on_the_cluster_matches_one_machine(ray_cluster: RayCluster, emulator_thread: Emulator,
                                                  tmp_path: Path) -> None:
    """500 rows, errors among them: rows, statuses, errors and image bytes as on one machine; every node sends
    calls; the key is in no file of RUNDIR, no line shown and no log of the cluster."""
    emulator_thread.configure(latency=0.02)
    rows = [{"prompt": f"{p['prompt']} [[fault:{FATES[i]}]]" if i in FATES else p["prompt"]}
            for i, p in enumerate(prompts(500))]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    alone = run(emulator_thread, src, tmp_path / "alone", concurrency=32, max_billed_retries=1)
    sent_alone = emulator_thread.count(endpoint="generations")
    emulator_thread.reset_log()
    notes: list[str] = []
    spread = run(emulator_thread, src, tmp_path / "ray", notes, concurrency=32, max_billed_retries=1, ray=True)
    assert any("--ray: the Ray cluster" in n or "--ray: a local Ray cluster" in n for n in notes), notes
    assert any("calls go out from 3 actors on 3 nodes" in n for n in notes), notes
    assert emulator_thread.count(endpoint="generations") == sent_alone
    assert (spread.exit_code, alone.exit_code) == (1, 1)
    assert summary(tmp_path / "ray") == summary(tmp_path / "alone")
    ray_rows = read_output(tmp_path / "ray")
    assert [r["pixelmill"]["status"] for r in ray_rows].count("done") == 500 - len(FATES)
    kinds = {i: ray_rows[i]["pixelmill"]["error"]["kind"] for i in FATES}
    assert kinds[7] == "refused" and ray_rows[23]["pixelmill"]["attempts"] == 2, kinds
    # The key: nowhere in RUNDIR, in what the run said, or in what the cluster's processes logged.
    key = TEST_KEY.encode()
    assert not [p for p in (tmp_path / "ray").rglob("*") if p.is_file() and key in p.read_bytes()]
    assert not [n for n in notes if TEST_KEY in n]
    logs = [p for p in ray_cluster.session_dir.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]
    assert logs and not [p for p in logs if key in p.read_bytes()]


def test_a_node_lost_mid_run(ray_cluster: RayCluster, emulator_thread: Emulator, tmp_path: Path) -> None:
    """A worker node removed while its actor has calls in flight: the run completes, every row once, and the
    rows sent twice are the calls that were in flight on it (charged as possibly billed), no more."""
    node = ray_cluster.add_worker()
    emulator_thread.configure(latency=1.0)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(64))
    box: list[RunReport] = []
    notes: list[str] = []
    runner = threading.Thread(target=lambda: box.append(run(emulator_thread, src, tmp_path / "run", notes,
                                                             concurrency=16, ray=True)))
    runner.start()
    deadline = time.monotonic() + 120
    while emulator_thread.count(endpoint="generations") < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    start = time.monotonic()
    ray_cluster.remove(node)
    end = time.monotonic()
    runner.join(180)
    assert box and box[0].exit_code == 0, (box, notes)
    assert any("from 4 actors on 4 nodes" in n for n in notes), notes
    rows = read_output(tmp_path / "run")
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in prompts(64)]
    assert all(r["pixelmill"]["status"] == "done" for r in rows)
    again = repeats(emulator_thread)
    twice = {r["prompt"] for r in rows if r["pixelmill"]["attempts"] == 2}
    # The calls lost with the node were charged as possibly billed and sent again (twice: two attempts); those
    # that had reached the provider are the emulator's repeats. At most the node's calls in flight: its actor,
    # one of four, held a quarter of the 16 calls in flight (one more at most).
    assert twice and set(again) <= twice and set(again.values()) <= {1}
    assert len(twice) <= 16 // 4 + 1
    assert len(again) <= in_flight(emulator_thread, start, end)


def _driver(ray_cluster: RayCluster, emu: Emulator, src: Path, out: Path) -> subprocess.Popen[bytes]:
    return cli_process("generate", src, "-o", out, "--base-url", emu.openai_base_url, "--concurrency", "8",
                       "--ray", "-q", env=ray_cluster.env())


def _wait_for(emu: Emulator, requests: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while emu.count(endpoint="generations") < requests and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)


def test_the_driver_killed_then_run_again(ray_cluster: RayCluster, emulator_thread: Emulator,
                                          tmp_path: Path) -> None:
    """`pixelmill generate --ray` SIGKILLed mid-run, then the same command: it resumes from the journal and
    sends again at most the calls that were in flight when the driver died."""
    emulator_thread.configure(latency=0.5)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(60))
    first = _driver(ray_cluster, emulator_thread, src, tmp_path / "run")
    _wait_for(emulator_thread, 20, first)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    second = _driver(ray_cluster, emulator_thread, src, tmp_path / "run")
    _, err = second.communicate(timeout=180)
    assert second.returncode == 0, err.decode()
    rows = read_output(tmp_path / "run")
    assert len(rows) == 60 and all(r["pixelmill"]["status"] == "done" for r in rows)
    # The calls in flight when the driver died are its journaled intents (sent, never recorded), which the
    # re-run names and charges; the emulator's repeats are at most those (some may never have reached it).
    found = re.search(r"(\d+) calls of an earlier run were sent and never recorded", " ".join(err.decode().split()))
    flying = int(found.group(1)) if found else 0
    again = sum(repeats(emulator_thread).values())
    assert again <= flying <= 8, err.decode()


def test_ctrl_c_drains_the_cluster_calls(ray_cluster: RayCluster, emulator_thread: Emulator, tmp_path: Path) -> None:
    """SIGINT to the driver: the calls in flight on the actors finish and are recorded (exit 3); the same command
    again completes, and no row was requested twice."""
    emulator_thread.configure(latency=0.5)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(60))
    first = _driver(ray_cluster, emulator_thread, src, tmp_path / "run")
    _wait_for(emulator_thread, 20, first)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 3, err.decode()
    pending = [r for r in read_output(tmp_path / "run") if r["pixelmill"]["status"] == "pending"]
    assert pending
    second = _driver(ray_cluster, emulator_thread, src, tmp_path / "run")
    _, err = second.communicate(timeout=180)
    assert second.returncode == 0, err.decode()
    assert all(r["pixelmill"]["status"] == "done" for r in read_output(tmp_path / "run"))
    assert emulator_thread.count(endpoint="generations") == 60 and not repeats(emulator_thread)


def test_rpm_holds_across_the_cluster(ray_cluster: RayCluster, emulator_thread: Emulator, tmp_path: Path) -> None:
    """--rpm is the driver's: the emulator, limiting 3 requests a second, never answers 429 to --rpm 120 sent from
    three nodes, and sees no second with more than 3 requests (the pace leaves room for the hop to the actors)."""
    emulator_thread.configure(latency=0.05, rpm=3, rate_window=1.0)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(12))
    report = run(emulator_thread, src, tmp_path / "run", concurrency=16, rpm=120, ray=True)
    assert report.exit_code == 0
    assert emulator_thread.count(status=429) == 0
    starts = sorted(r.started for r in emulator_thread.records(endpoint="generations"))
    assert len(starts) == 12
    assert max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts) <= 3


def test_max_cost_holds_across_the_cluster(ray_cluster: RayCluster, emulator_thread: Emulator,
                                           tmp_path: Path) -> None:
    """--max-cost is the driver's: 16 calls in flight on three nodes never pass it together."""
    emulator_thread.configure(latency=0.2)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(80))
    budget = 0.1
    report = run(emulator_thread, src, tmp_path / "run", concurrency=16, quality="low", size="1024x1024",
                 max_cost=budget, ray=True)
    assert report.exit_code == 3 and report.abort_kind == "budget"
    rows = read_output(tmp_path / "run")
    done = sum(1 for r in rows if r["pixelmill"]["status"] == "done")
    answered = emulator_thread.count(endpoint="generations", status=200)
    assert answered == done > 0
    assert sum(r["pixelmill"].get("cost_usd", 0.0) for r in rows) <= budget
    assert answered * 272 * 30.0 / 1e6 <= budget


def test_deployments_are_spread_from_the_cluster_each_with_its_limits(
        ray_cluster: RayCluster, make_emulator: Any, tmp_path: Path) -> None:
    """A step over two keys (two emulators): with --ray both deployments' calls go out from the cluster's actors,
    each under its own limit (no 429 from either), every row once, and neither key in RUNDIR or the notices."""
    key_a, key_b = "sk-cluster-a-7c1e9b2f4d6a8e0c3b5d", "sk-cluster-b-2e4c6a8b0d1f3e5a7c9b"
    a = make_emulator(api_keys={key_a}, ipm=10, rate_window=2.0, latency=0.05)
    b = make_emulator(api_keys={key_b}, ipm=20, rate_window=2.0, latency=0.05)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(24))
    notes: list[str] = []
    config = build_config("generate", src, job_options(
        output=tmp_path / "run", concurrency=8, ray=True, engine={"retry_base": 0.01, "retry_cap": 0.05},
        deployment=[f"name=a,base_url={a.openai_base_url},api_key_env=CLUSTER_KEY_A,ipm=240",
                    f"name=b,base_url={b.openai_base_url},api_key_env=CLUSTER_KEY_B,ipm=480"]))
    os.environ.update(CLUSTER_KEY_A=key_a, CLUSTER_KEY_B=key_b)
    try:
        report = run_config(config, notice=notes.append)
    finally:
        for name in ("CLUSTER_KEY_A", "CLUSTER_KEY_B"):
            os.environ.pop(name, None)
    assert report.exit_code == 0, notes
    rows = read_output(tmp_path / "run")
    assert [r["pixelmill"]["status"] for r in rows] == ["done"] * 24
    served = Counter(r["pixelmill"]["response"]["deployment"] for r in rows)
    assert served["a"] == a.count(endpoint="generations", status=200) > 0
    assert served["b"] == b.count(endpoint="generations", status=200) > 0
    assert a.count(status=429) == 0 and b.count(status=429) == 0
    assert sum("calls go out from" in note for note in notes) == 2, notes  # one actor pool per deployment
    text = "\n".join(notes)
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key_a.encode() not in data and key_b.encode() not in data, path
    assert key_a not in text and key_b not in text
