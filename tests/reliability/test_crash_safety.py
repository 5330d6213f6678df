"""SIGKILL at 10 points of one run, each followed by a check; then the re-run completes.

How the kills land where they matter: a random timer rarely hits the microseconds in which an image is half
written or a journal transaction is open. So most kills are armed inside pixelmill's own code path by
`tests/reliability/launch.py` (the process SIGKILLs itself at the N-th event, N drawn at random): half-way
through an image's temporary file, just before its rename, between the rename and the journal save, inside
SQLite while it executes a save (at a random virtual-machine instruction, before the commit), inside the
multi-statement transaction that assigns record keys, and half-way through the output file. Three more kills
come from outside at random moments of the run (the test's own SIGKILL after a random number of answers).

After every kill: no image under a final name is corrupt (every pixel decodes, CRCs hold, the colour is its
row's), the journal passes SQLite's integrity check, every row it records has its files on disk and owns them
alone, nothing recorded before is lost, and the calls sent but not recorded are at most the calls in flight
(--concurrency). At the end: every row once, in order, done; the files on disk are exactly the ones the output
names; the paid repeats are no more than the calls lost to the kills.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from PIL import Image

from pixelmill.testing import Emulator
from pixelmill.testing.images import colour_for
from tests.reliability.invariants import (
    assert_every_row_once,
    assert_journal_consistent,
    assert_no_corrupt_image,
    image_files,
    journal_rows,
)
from tests.runs import TEST_KEY, run_api, write_jsonl

REPO = Path(__file__).resolve().parents[2]
ROWS = 400
CONCURRENCY = 8
FIRST = 20


def launch(args: list[str], kill: str | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OPENAI_API_KEY": TEST_KEY,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("PIXELMILL_TEST_KILL", None)
    if kill:
        env["PIXELMILL_TEST_KILL"] = kill
    return subprocess.Popen([sys.executable, "-m", "tests.reliability.launch", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_plan(rng: random.Random) -> list[str]:
    """Ten kill points: the key transaction first (only the first run assigns the keys of the first chunk), the
    output file last (only a run that finishes the rows writes it), the rest in random order."""
    middle = [f"write:{rng.randint(3, 30)}", f"rename:{rng.randint(3, 30)}", f"journal:{rng.randint(5, 80)}",
              f"commit:{rng.randint(5, 80)}:{rng.randint(1, 40)}", f"commit:{rng.randint(5, 80)}:{rng.randint(1, 40)}",
              f"external:{rng.randint(5, 40)}", f"external:{rng.randint(5, 40)}", f"external:{rng.randint(5, 40)}"]
    rng.shuffle(middle)
    return [f"keys:1:{rng.randint(50, 3000)}", *middle, f"output:{rng.randint(2, 300)}"]


def wait_idle(emu: Emulator) -> None:
    """The killed client's connections are gone: no request of it is still being answered."""
    deadline = time.monotonic() + 10
    while emu.in_flight:
        assert time.monotonic() < deadline, "the emulator still answers a dead client"
        time.sleep(0.01)


def recorded(rundir: Path) -> dict[int, list[str]]:
    """Rows whose call is recorded in the journal (done, or its call's images saved), with their files."""
    return {row: outputs for row, (_, outputs) in journal_rows(rundir).items() if outputs}


def journal_keys(rundir: Path) -> list[tuple[int, str]]:
    db = sqlite3.connect(rundir / ".pixelmill" / "journal.sqlite")
    try:
        return db.execute("SELECT row, key FROM records").fetchall()
    finally:
        db.close()


def assert_right_colour(rundir: Path, path: str, prompt: str) -> None:
    """The emulator paints each image in a colour chosen by its prompt: a file holds its own row's image."""
    with Image.open(rundir / path) as img:
        assert img.getpixel((0, 0))[:3] == colour_for(f"{prompt}#0"), f"{path} is not {prompt!r}'s"


def test_ten_sigkills_then_resume(emulator_thread: Emulator, tmp_path: Path) -> None:
    seed = int(os.environ.get("PIXELMILL_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    plan = kill_plan(rng)
    why = f"(PIXELMILL_CRASH_SEED={seed}, kills {plan})"
    # Small, quick answers with a real body to decode and write (150 kB), so that writing images and saving the
    # journal take a real share of a run's time for the external kills too.
    emulator_thread.configure(latency=0.02, latency_sigma=0.3, image_bytes=150_000, seed=seed % 1000)
    sources = [{"prompt": f"crash test row {i}: a red kite over hills"} for i in range(ROWS)]
    prompt_of = {i: s["prompt"] for i, s in enumerate(sources)}
    src = write_jsonl(tmp_path / "in.jsonl", sources)
    run = tmp_path / "run"
    args = ["generate", str(src), "-o", str(run), "--base-url", emulator_thread.openai_base_url, "--concurrency",
            str(CONCURRENCY), "--size", "512x512", "--quiet"]

    # A first, complete run of a few rows (in-process: quicker), so that an output file exists before the kills.
    assert run_api(emulator_thread, src, run, limit=FIRST, concurrency=CONCURRENCY, size="512x512").exit_code == 0
    old_output = (run / "output.jsonl").read_bytes()
    answered: list[Any] = list(emulator_thread.records(endpoint="generations"))

    lost_per_kill: list[int] = []
    lost_rows: set[int] = set()
    temporaries_seen = 0
    checked: dict[Path, tuple[int, int]] = {}
    for number, point in enumerate(plan, start=1):
        before = recorded(run)
        keys_before = len(journal_keys(run))
        emulator_thread.reset_log()
        external = point.startswith("external:")
        proc = launch(args, None if external else point)
        if external:
            target = int(point.split(":")[1])
            deadline = time.monotonic() + 30
            while emulator_thread.count(status=200) < target and proc.poll() is None:
                assert time.monotonic() < deadline, f"kill {number} ({point}): the run did not get going {why}"
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.02))
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, f"kill {number} ({point}) missed: {err.decode()[-2000:]} {why}"
        wait_idle(emulator_thread)
        sent = emulator_thread.records(endpoint="generations")
        answered += sent

        # No corrupt image; a consistent journal whose files are whole and unshared; nothing recorded is lost.
        temporaries = assert_no_corrupt_image(run, checked)
        temporaries_seen += temporaries
        assert_journal_consistent(run, decode=False)
        # The armed kills landed where they were meant to.
        if point.startswith(("write:", "rename:")):
            assert temporaries, f"kill {number} ({point}) left no temporary image file {why}"
        if point.startswith("keys:"):  # inside the key transaction: rolled back whole
            assert len(journal_keys(run)) == keys_before, why
        if point.startswith("output:"):
            assert (run / ".output.jsonl.tmp").is_file(), why
        now = recorded(run)
        assert set(before) <= set(now), f"kill {number} ({point}) lost recorded rows {why}"
        new = set(now) - set(before)
        paid = {r.prompt for r in sent if r.status == 200}
        assert {prompt_of[row] for row in new} <= paid, f"a row recorded without an answer {why}"
        # The calls that a kill can lose (sent, maybe paid, not recorded) are at most the calls in flight.
        lost = len(sent) - len(new)
        assert 0 <= lost <= CONCURRENCY, f"kill {number} ({point}): {lost} calls lost {why}"
        lost_per_kill.append(lost)
        lost_rows |= {row for row, prompt in prompt_of.items() if prompt in {r.prompt for r in sent}} - set(new)
        # Files that no journal row names yet are those of lost calls (the re-run writes them again).
        finals, _ = image_files(run)
        named = {p for outputs in now.values() for p in outputs}
        orphans = {p.relative_to(run).as_posix() for p in finals} - named
        assert {int(Path(p).stem.split("_")[0][3:]) for p in orphans} <= lost_rows, why
        if point.startswith("output:"):  # killed writing the output: the old output is intact, not half new
            assert (run / "output.jsonl").read_bytes() == old_output, why

    emulator_thread.reset_log()
    final = launch(args, None)
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()
    answered += emulator_thread.records(endpoint="generations")

    rows = [orjson.loads(line) for line in (run / "output.jsonl").read_bytes().splitlines()]
    assert_every_row_once(rows, sources)
    assert [r["pixelmill"]["status"] for r in rows] == ["done"] * ROWS, why
    paths = [p for r in rows for p in r["images"]]
    assert len(paths) == len(set(paths)) == ROWS
    finals, temporaries = image_files(run)
    assert not temporaries, "the re-run sweeps what killed writes left"
    assert {p.relative_to(run).as_posix() for p in finals} == set(paths), "files on disk are the output's"
    assert_no_corrupt_image(run, checked)
    for row, path in zip(rows, paths, strict=True):
        assert_right_colour(run, path, row["prompt"])
    paid = collections.Counter(r.prompt for r in answered if r.status == 200)
    assert set(paid) == set(prompt_of.values())
    repeats = sum(n - 1 for n in paid.values())
    assert repeats <= sum(lost_per_kill) <= len(plan) * CONCURRENCY, (lost_per_kill, why)
    print(f"kills {plan}: lost {lost_per_kill}, {repeats} paid repeats, {temporaries_seen} half-written "
          f"temporary files seen")
