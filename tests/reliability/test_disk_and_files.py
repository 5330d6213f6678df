"""A full disk, image files broken after the run, and unexpected exceptions in one row: never a lost row, never a
run killed blindly.

- An exception pixelmill does not expect while handling one row (here: injected by monkeypatching a function of
  the row's handling for one row, in-process) fails that row with kind `internal` and the exception named (keys
  redacted); the calls it paid for stay recorded; the run goes on, and `--retry-failed` sends the row again.
- A disk that fills up (a real 3 MiB tmpfs, mounted for the test; root only) stops the run like a budget stop:
  exit 3 and one line that says to free space; every answer paid is in the journal (as done, or on its pending
  row); the output is written; the loss is bounded by the calls in flight; after freeing space, the same command
  finishes, paying again exactly for the answers it said it could not write.
- Done rows whose files were deleted or cut short are made again by a re-run (or with --report-broken only
  named in the output); --verify-images also catches a file of the right size with broken bytes.
"""

from __future__ import annotations

import errno
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pixelmill.testing import Emulator
from pixelmill.writing.store import TMP_MARK, ImageStore
from tests.reliability.hostile_runs import output_rows, run_process, status_of
from tests.runs import TEST_KEY, run_api, write_jsonl

# ---------------------------------------------------------------- a small real file system


def _mount(path: Path, size: str) -> bool:
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs mounted for the test (needs root, or CAP_SYS_ADMIN), unmounted afterwards."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if not _mount(mount_point, "3m"):
        pytest.skip("cannot mount a tmpfs here (needs root): the disk-full tests need a real small file system")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _grow(mount_point: Path, size: str) -> None:
    """Free space the way a user would get it: here, by growing the file system."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True, capture_output=True)


def _journal(rundir: Path, step: str = "generate") -> list[tuple[int, str, int, list[str], dict[str, Any]]]:
    """(position, status, attempts, outputs, info) of every result, read with plain sqlite."""
    db = sqlite3.connect(rundir / ".pixelmill" / "journal.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT r.position, s.status, s.attempts, s.outputs, s.info FROM results s "
                          "JOIN records r ON r.row = s.row WHERE s.step = ? ORDER BY r.position", (step,)).fetchall()
    finally:
        db.close()
    return [(p, st, a, orjson.loads(o), orjson.loads(i)) for p, st, a, o, i in rows]


def _answered(emu: Emulator) -> int:
    return len(emu.records(endpoint="generations", status=200))


# ---------------------------------------------------------------- 1. an unexpected exception fails one row


def test_unexpected_exception_fails_that_row_and_the_run_goes_on(emulator_thread: Emulator, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Two odd paths: an exception after row 3's call was answered (paid) and its image stored, and one while row
    5's inputs are gathered (before anything is sent). Before the fix the run ended with the exception and no
    output, and every re-run died on the same row."""
    import pixelmill.engine.row as row_module

    merge, gather = row_module.merge_result, row_module.gather_inputs

    def odd_merge(info: dict[str, Any], result: Any, params: Any, cost: Any, paths: list[str], *a: Any,
                  **k: Any) -> None:
        if any("row000003" in p for p in paths):
            raise TypeError(f"unsupported operand for usage value (seen with key {TEST_KEY})")
        merge(info, result, params, cost, paths, *a, **k)

    async def odd_gather(config: Any, spec: Any, data: dict[str, Any], **k: Any) -> Any:
        if data.get("prompt") == "row 5":
            raise ValueError("odd value in the row")
        return await gather(config, spec, data, **k)

    monkeypatch.setattr(row_module, "merge_result", odd_merge)
    monkeypatch.setattr(row_module, "gather_inputs", odd_gather)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"row {i}"} for i in range(8)])
    out = tmp_path / "run"
    report = run_api(emulator_thread, src, out, concurrency=2)

    assert report.exit_code == 1 and report.aborted is None
    rows = output_rows(out)
    assert status_of(rows) == ["done"] * 3 + ["failed", "done", "failed", "done", "done"]
    for index, kind in ((3, "TypeError"), (5, "ValueError")):
        error = rows[index]["pixelmill"]["error"]
        assert error["kind"] == "internal"
        assert kind in error["message"] and "--retry-failed" in error["message"]
        assert TEST_KEY not in orjson.dumps(rows[index]).decode()
        assert rows[index]["images"] == []
    assert rows[3]["pixelmill"]["attempts"] == 1  # the call it paid for is recorded
    assert rows[5]["pixelmill"]["attempts"] == 0  # nothing was sent for it
    assert _answered(emulator_thread) == 7

    monkeypatch.setattr(row_module, "merge_result", merge)
    monkeypatch.setattr(row_module, "gather_inputs", gather)
    again = run_api(emulator_thread, src, out, concurrency=2, retry_failed=True)
    assert again.exit_code == 0
    assert status_of(output_rows(out)) == ["done"] * 8
    assert _answered(emulator_thread) == 9  # rows 3 and 5 once more, nothing else


def test_exception_that_escapes_a_row_stops_the_run_with_a_reason(emulator_thread: Emulator, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception outside what a row handles itself (here: in the step loop) stops the run like an abort: exit
    3 with the exception named, the output written with every row; no traceback out of the run."""
    from pixelmill.engine.row import RowExecutor

    run_step = RowExecutor._run_step

    async def odd_step(self: RowExecutor, step: Any, row: Any, *a: Any) -> Any:
        if row.record.index == 4:
            raise KeyError("target")
        return await run_step(self, step, row, *a)

    monkeypatch.setattr(RowExecutor, "_run_step", odd_step)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"row {i}"} for i in range(30)])
    out = tmp_path / "run"
    report = run_api(emulator_thread, src, out, concurrency=1)
    assert report.exit_code == 3 and report.abort_kind == "internal"
    assert report.aborted is not None and "row 4" in report.aborted and "KeyError" in report.aborted
    rows = output_rows(out)
    assert len(rows) == 30 and set(status_of(rows)) <= {"done", "pending"}
    assert rows[4]["pixelmill"]["status"] == "pending"
    assert _answered(emulator_thread) == status_of(rows).count("done")  # calls in flight finished and recorded


# ---------------------------------------------------------------- 2. a full disk


def test_store_on_a_full_disk_raises_disk_full_and_leaves_no_temporary(small_disk: Path) -> None:
    from pixelmill.errors import DiskFull

    store = ImageStore(small_disk / "run")
    data = _png()
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # fill the disk to the last block
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with pytest.raises(DiskFull, match=r"disk full .* free space and run the same command again"):
        for i in range(50):
            store.write(f"generate/row{i:06d}_0", data * 40)
    assert not [p for p in (small_disk / "run").rglob("*") if p.name.endswith(TMP_MARK)]


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


ROWS = 120
CONCURRENCY = 4


def test_disk_full_stops_records_what_was_paid_and_resumes(emulator_thread: Emulator, small_disk: Path,
                                                           tmp_path: Path) -> None:
    """Before the fix: a traceback, exit 1, no output, and paid answers missing from the journal."""
    emulator_thread.configure(latency=0.01, image_bytes=40_000)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"disk row {i}"} for i in range(ROWS)])
    out = small_disk / "run"
    first = run_process(emulator_thread, "generate", src, out, "--concurrency", str(CONCURRENCY))

    assert first.code == 3, first.stderr
    assert "Traceback" not in first.stderr
    lines = [line for line in first.stderr.splitlines() if "free space and run the same command again" in line]
    assert len(lines) == 1 and "disk full" in lines[0], first.stderr
    rows = output_rows(out)  # the output was written, every row in it
    assert [r["prompt"] for r in rows] == [f"disk row {i}" for i in range(ROWS)]
    statuses = status_of(rows)
    assert set(statuses) == {"done", "pending"}, statuses  # nothing failed for the disk's sake
    done = statuses.count("done")

    journal = _journal(out)
    paid = _answered(emulator_thread)
    # Every answer paid is recorded: as a done row, or on its pending row (attempts, and `unstored` when its
    # images could not be written).
    assert sum(attempts for _, _, attempts, _, _ in journal) == paid
    unstored = sum(int(info.get("unstored", 0)) for *_, info in journal)
    assert unstored == paid - done
    assert unstored <= CONCURRENCY  # stopped at once: the loss is bounded by the calls in flight
    assert f"{unstored} paid answer(s) whose images could not be written" in lines[0] or unstored == 0
    from pixelmill.writing.store import check_files

    for _, status, _, outputs, info in journal:  # what the journal says is done is on disk, whole
        if status == "done":
            assert check_files(out, outputs, info["sizes"], decode=True) == []
    assert not list((out / ".pixelmill").glob("space-reserve*"))

    _grow(small_disk, "64m")  # the user frees space
    second = run_process(emulator_thread, "generate", src, out, "--concurrency", str(CONCURRENCY))
    assert second.code == 0, second.stderr
    assert status_of(output_rows(out)) == ["done"] * ROWS
    # Paid again: exactly the answers the first run said it could not write.
    assert _answered(emulator_thread) == ROWS + unstored
    for _, status, _, outputs, info in _journal(out):
        assert status == "done" and check_files(out, outputs, info["sizes"]) == []


# ---------------------------------------------------------------- 3. done rows whose files are gone or broken


def test_done_rows_with_missing_or_broken_files_are_made_again(emulator_thread: Emulator, tmp_path: Path) -> None:
    """Before the fix a re-run (and --retry-failed) sent nothing, and the output named a missing and a truncated
    file as done."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"file row {i}"} for i in range(6)])
    out = tmp_path / "run"
    assert run_process(emulator_thread, "generate", src, out).code == 0
    files = {i: out / output_rows(out)[i]["images"][0] for i in range(6)}
    files[1].unlink()
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) // 2])  # cut short, as a copy that stopped
    broken = bytearray(files[4].read_bytes())  # same size, broken bytes: only a decode sees it
    broken[len(broken) // 2: len(broken) // 2 + 64] = b"\xff" * 64
    files[4].write_bytes(bytes(broken))
    before = _answered(emulator_thread)

    # A re-run (here with --retry-failed) makes rows 1 and 3 again: a paid repeat the output shows.
    remade = run_process(emulator_thread, "generate", src, out, "--retry-failed")
    assert remade.code == 0, remade.stderr
    assert _answered(emulator_thread) == before + 2
    rows = output_rows(out)
    assert status_of(rows) == ["done"] * 6
    for i in (1, 3):
        assert "remade" in rows[i]["pixelmill"]
        assert (out / rows[i]["images"][0]).stat().st_size > 0
    assert rows[1]["pixelmill"]["attempts"] == 2  # both calls counted on the row
    assert "sizes" not in rows[0]["pixelmill"]  # journal bookkeeping stays out of the output
    assert "sent again" in remade.stderr

    # Row 4 has the right size: only --verify-images decodes it, and makes it again.
    assert run_process(emulator_thread, "generate", src, out).code == 0
    assert _answered(emulator_thread) == before + 2
    assert run_process(emulator_thread, "generate", src, out, "--verify-images").code == 0
    assert _answered(emulator_thread) == before + 3
    assert "remade" in output_rows(out)[4]["pixelmill"]
    assert run_process(emulator_thread, "generate", src, out, "--verify-images").code == 0
    assert _answered(emulator_thread) == before + 3  # all whole now: nothing more

    # --report-broken: nothing sent, the row stays done, and the output names the broken file.
    files[0].unlink()
    reported = run_process(emulator_thread, "generate", src, out, "--report-broken")
    assert reported.code == 0, reported.stderr
    assert _answered(emulator_thread) == before + 3
    rows = output_rows(out)
    assert status_of(rows) == ["done"] * 6
    assert [bool(r["pixelmill"].get("broken_files")) for r in rows] == [True] + [False] * 5
    assert "missing" in rows[0]["pixelmill"]["broken_files"][0]
    assert run_process(emulator_thread, "generate", src, out).code == 0  # and without the flag, made again
    assert _answered(emulator_thread) == before + 4
    assert "broken_files" not in output_rows(out)[0]["pixelmill"] and files[0].is_file()


def test_a_step_made_again_makes_the_steps_that_read_it_again(emulator_thread: Emulator, tmp_path: Path) -> None:
    """Two steps, the second editing the first's image: when the first's file is gone, both are made again (the
    second's image came from the file that is gone); the other rows send nothing."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"pipe row {i}"} for i in range(3)])
    pipeline = tmp_path / "pipe.yaml"
    model = {"provider": "openai", "model": "gpt-image-2", "base_url": emulator_thread.openai_base_url}
    pipeline.write_text(orjson.dumps({  # JSON is YAML
        "source": str(src), "output": str(tmp_path / "run"),
        "steps": [{"name": "first", "model": model, "output_field": "first"},
                  {"name": "second", "task": "edit", "images": "{first}", "prompt": "make it blue", "model": model,
                   "output_field": "second"}],
    }).decode())
    from tests.runs import cli

    assert cli("run", pipeline, "--quiet").code == 0
    out = tmp_path / "run"
    rows = output_rows(out)
    (out / rows[1]["first"][0]).unlink()
    before = len(emulator_thread.records(status=200))
    result = cli("run", pipeline, "--quiet")
    assert result.code == 0, result.output
    assert len(emulator_thread.records(status=200)) == before + 2
    assert len(emulator_thread.records(endpoint="edits", status=200)) == 4
    rows = output_rows(out)
    assert all(r["pixelmill"][s]["status"] == "done" for r in rows for s in ("first", "second"))
    assert "remade" in rows[1]["pixelmill"]["second"] and "remade" not in rows[0]["pixelmill"]["second"]
    assert (out / rows[1]["first"][0]).is_file()
