"""The everyday hostile world around a run: a second process on the same folder, a terminal that closes, two
inputs with the same name, a damaged or foreign journal, impossible limits, a stderr that cannot be written.
Each one either stops with one clear line before anything is sent (exit 2), or drains like Ctrl-C (exit 3) and
still writes the output; none pays twice."""

from __future__ import annotations

import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pixelmill.testing import Emulator
from tests.reliability.invariants import assert_every_row_once
from tests.runs import TEST_KEY, cli, cli_process, read_output, write_jsonl


def _start(emu: Emulator, src: Path, run: Path, *extra: str, **popen: object) -> subprocess.Popen[bytes]:
    return cli_process("generate", src, "-o", run, "--base-url", emu.openai_base_url, "--concurrency", "4",
                       "--size", "512x512", "--quiet", *extra, **popen)


def _wait_for(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the run did not get there"
        time.sleep(0.01)


def _paid_per_prompt(emu: Emulator) -> collections.Counter[str]:
    return collections.Counter(r.prompt for r in emu.records(endpoint="generations", status=200))


# ---------------------------------------------------------------- one process per RUNDIR
def test_a_second_process_on_the_same_rundir_is_refused(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(latency=1.0)  # the first run lasts ~10 s: the second starts well inside it
    rows = [{"prompt": f"locked row {i}"} for i in range(40)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    run = tmp_path / "run"
    first = _start(emulator_thread, src, run)
    _wait_for(lambda: emulator_thread.count(status=200) >= 2)
    second = _start(emulator_thread, src, run)
    _, err = second.communicate(timeout=30)
    assert second.returncode == 2, err.decode()
    text = err.decode()
    assert "in use by another pixelmill process" in text and f"pid {first.pid}" in text
    assert text.count("\n") == 1 and "Traceback" not in text
    assert first.poll() is None  # refused while the first one runs, not after it
    assert first.wait(timeout=60) == 0
    paid = _paid_per_prompt(emulator_thread)
    assert sum(paid.values()) == len(rows) and max(paid.values()) == 1  # every row paid once


def test_a_killed_run_leaves_no_lock_behind(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(latency=0.2)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"killed row {i}"} for i in range(16)])
    run = tmp_path / "run"
    first = _start(emulator_thread, src, run)
    _wait_for(lambda: emulator_thread.count(status=200) >= 2)
    first.kill()
    first.wait(timeout=10)
    again = _start(emulator_thread, src, run)
    _, err = again.communicate(timeout=60)
    assert again.returncode == 0, err.decode()
    assert len(read_output(run)) == 16


# ---------------------------------------------------------------- signals
@pytest.mark.parametrize(("sig", "name"), [(signal.SIGHUP, "SIGHUP"), (signal.SIGTERM, "SIGTERM")])
def test_sighup_and_sigterm_drain_like_ctrl_c(emulator_thread: Emulator, tmp_path: Path, sig: int,
                                              name: str) -> None:
    """The terminal closed or the job was stopped: the calls in flight (paid) finish and are recorded, the output
    is written, exit 3 names the signal, and the re-run sends only what was never sent."""
    emulator_thread.configure(latency=0.3)
    rows = [{"prompt": f"{name} row {i}"} for i in range(40)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    run = tmp_path / "run"
    proc = _start(emulator_thread, src, run)
    _wait_for(lambda: emulator_thread.count(status=200) >= 4 and emulator_thread.in_flight >= 2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    text = err.decode()
    assert proc.returncode == 3, text
    assert f"interrupted ({name})" in text and "Ctrl-C" not in text and "Traceback" not in text
    out = read_output(run)
    assert_every_row_once(out, rows)
    assert {r["pixelmill"]["status"] for r in out} <= {"done", "pending"}
    again = _start(emulator_thread, src, run)
    assert again.wait(timeout=60) == 0
    paid = _paid_per_prompt(emulator_thread)
    assert sum(paid.values()) == len(rows) and max(paid.values()) == 1


def test_a_stderr_that_cannot_be_written_does_not_end_the_run(emulator_thread: Emulator, tmp_path: Path) -> None:
    """Messages are best effort: notices and the summary to a full disk (/dev/full) change nothing."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"quiet row {i}"} for i in range(6)])
    run = tmp_path / "run"
    env = {**os.environ, "OPENAI_API_KEY": TEST_KEY}
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([sys.executable, "-m", "pixelmill", "generate", str(src), "-o", str(run),
                               "--base-url", emulator_thread.openai_base_url, "--model", "gpt-image-1.5",
                               "--size", "1000x900"],
                              env=env, stderr=full, stdout=full, timeout=60)  # an approximated size: a notice
    assert proc.returncode == 0
    assert [r["pixelmill"]["status"] for r in read_output(run)] == ["done"] * 6


# ---------------------------------------------------------------- two inputs, one default folder
def test_same_named_inputs_do_not_share_a_default_rundir(emulator_thread: Emulator, tmp_path: Path) -> None:
    for batch in ("batch1", "batch2"):
        (tmp_path / batch).mkdir()
        write_jsonl(tmp_path / batch / "prompts.jsonl", [{"prompt": f"{batch} row {i}"} for i in range(3)])
    env = {**os.environ, "OPENAI_API_KEY": TEST_KEY}
    base = [sys.executable, "-m", "pixelmill", "generate", "--base-url", emulator_thread.openai_base_url, "-q"]
    first = subprocess.run([*base, "batch1/prompts.jsonl"], cwd=tmp_path, env=env, capture_output=True)
    assert first.returncode == 0, first.stderr.decode()
    images = sorted((tmp_path / "pixelmill-out" / "prompts" / "images").rglob("*.png"))
    before = {p: p.read_bytes() for p in images}
    second = subprocess.run([*base, "batch2/prompts.jsonl"], cwd=tmp_path, env=env, capture_output=True)
    text = second.stderr.decode()
    assert second.returncode == 2, text
    assert "holds the run of" in text and "batch1" in text and "--output" in text
    assert {p: p.read_bytes() for p in images} == before  # batch 1's paid images untouched
    assert emulator_thread.count(endpoint="generations") == 3  # batch 2 sent nothing


# ---------------------------------------------------------------- refused before sending, in one line
def _refused(result: object) -> str:
    code, output = result.code, result.output  # type: ignore[attr-defined]
    assert code == 2, output
    assert "Traceback" not in output and output.count("pixelmill: error:") == 1, output
    return str(output)


def test_output_naming_a_file_is_refused(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    (tmp_path / "afile").write_text("not a folder")
    text = _refused(cli("generate", src, "-o", tmp_path / "afile", "--base-url", emulator_thread.openai_base_url))
    assert "run directory" in text
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".pixelmill").write_text("a file where the journal's folder goes")
    _refused(cli("generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url))
    assert emulator_thread.count() == 0


@pytest.mark.parametrize("damage", ["garbage", "foreign", "truncated"])
def test_a_damaged_or_foreign_journal_is_one_clear_line(emulator_thread: Emulator, tmp_path: Path,
                                                        damage: str) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"row {i}"} for i in range(3)])
    run = tmp_path / "run"
    path = run / ".pixelmill" / "journal.sqlite"
    if damage == "truncated":
        assert cli("generate", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "-q").code == 0
        for extra in ("-wal", "-shm"):
            Path(f"{path}{extra}").unlink(missing_ok=True)
        path.write_bytes(path.read_bytes()[:1500])
    else:
        path.parent.mkdir(parents=True)
        if damage == "garbage":
            path.write_bytes(os.urandom(8192))
        else:
            db = sqlite3.connect(path)
            db.execute("CREATE TABLE results (x TEXT)")
            db.execute("INSERT INTO results VALUES ('someone else')")
            db.commit()
            db.close()
    sent = emulator_thread.count()
    text = _refused(cli("generate", src, "-o", run, "--base-url", emulator_thread.openai_base_url))
    assert str(run) in text
    assert emulator_thread.count() == sent
    _refused(cli("status", run))


@pytest.mark.parametrize("flag", [("--timeout", "inf"), ("--timeout", "nan"), ("--deadline", "inf"),
                                  ("--max-cost", "nan"), ("--rpm", "inf")])
def test_limits_that_disable_themselves_are_refused(emulator_thread: Emulator, tmp_path: Path,
                                                    flag: tuple[str, str]) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    text = _refused(cli("generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url,
                        *flag))
    assert flag[0] in text
    assert emulator_thread.count() == 0


def test_the_metadata_field_cannot_be_an_output_field(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    text = _refused(cli("generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url,
                        "--output-field", "pixelmill"))
    assert "metadata" in text
    assert emulator_thread.count() == 0


# ---------------------------------------------------------------- a rehearsal is never the real run
def test_a_rehearsal_on_the_emulator_is_never_delivered_as_the_real_run(server: Any, tmp_path: Path) -> None:
    """`-o out --provider emulator`, then `-o out --provider openai`: the real run sends every row (the rehearsal
    was never paid) and replaces the images; the rows say who made them. `server` (conftest.py) is a plain
    loopback server standing for the real provider: unlike the emulator it does not mark its answers."""
    rows = [{"prompt": f"rehearsed row {i}"} for i in range(5)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    run = tmp_path / "run"
    rehearsal = cli("generate", src, "-o", run, "--provider", "emulator", "--size", "1024x1024", "-q")
    assert rehearsal.code == 0, rehearsal.output
    assert {r["pixelmill"]["provider"] for r in read_output(run)} == {"emulator"}
    real = cli("generate", src, "-o", run, "--base-url", f"{server.url}/v1", "--size", "1024x1024")
    assert real.code == 0, real.output
    assert "rows made by the emulator are sent again" in real.output
    assert server.hits.count("/v1/images/generations") == 5
    out = read_output(run)
    assert {r["pixelmill"]["provider"] for r in out} == {"openai"}
    assert [r["pixelmill"]["status"] for r in out] == ["done"] * 5
    again = cli("generate", src, "-o", run, "--base-url", f"{server.url}/v1", "--size", "1024x1024", "-q")
    assert again.code == 0 and server.hits.count("/v1/images/generations") == 5  # the real results are done


def test_images_from_a_served_emulator_are_not_a_real_run_either(emulator_thread: Emulator, server: Any,
                                                                 tmp_path: Path) -> None:
    """`pixelmill emulate` and `--base-url`, then the real URL: the emulator marks its answers, so the rows it made
    are sent again to the real server."""
    rows = [{"prompt": f"served rehearsal {i}"} for i in range(4)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    run = tmp_path / "run"
    first = cli("generate", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "--size", "1024x1024",
                "-q")
    assert first.code == 0, first.output
    assert all(r["pixelmill"]["response"]["emulated"] for r in read_output(run))
    second = cli("generate", src, "-o", run, "--base-url", f"{server.url}/v1", "--size", "1024x1024", "-q")
    assert second.code == 0, second.output
    assert server.hits.count("/v1/images/generations") == 4  # every rehearsed row sent to the real server
    out = read_output(run)
    assert [r["pixelmill"]["status"] for r in out] == ["done"] * 4
    assert not any(r["pixelmill"].get("response", {}).get("emulated") for r in out)
    third = cli("generate", src, "-o", run, "--base-url", f"{server.url}/v1", "--size", "1024x1024", "-q")
    assert third.code == 0 and server.hits.count("/v1/images/generations") == 4  # real results are done


@pytest.mark.parametrize("field", ["prompt", "id"])
def test_an_output_field_that_is_an_input_column_is_refused(emulator_thread: Emulator, tmp_path: Path,
                                                            field: str) -> None:
    """Rows are promised unchanged: `--output-field prompt` would overwrite every row's prompt."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "a cat"}, {"id": "b", "prompt": "a dog"}])
    text = _refused(cli("generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url,
                        "--output-field", field))
    assert f"'{field}' is a column of the input" in text
    _refused(cli("estimate", src, "-o", tmp_path / "run", "--output-field", field))  # estimate agrees
    assert emulator_thread.count() == 0


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Any:
    """A real read-only file system (tmpfs remounted read-only): as root, permissions alone never refuse a write."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.parametrize("with_a_run", [False, True])
def test_a_read_only_rundir_is_one_clear_line(emulator_thread: Emulator, tmp_path: Path, read_only_folder: Path,
                                              with_a_run: bool) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"row {i}"} for i in range(3)])
    run = read_only_folder / "run"
    if with_a_run:
        assert cli("generate", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "-q").code == 0
        write_jsonl(src, [{"prompt": f"row {i}"} for i in range(4)])  # one more row to send
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_folder)], check=True)
    sent = emulator_thread.count()
    text = _refused(cli("generate", src, "-o", run, "--base-url", emulator_thread.openai_base_url))
    assert "Read-only" in text or "read-only" in text or "readonly" in text
    assert emulator_thread.count() == sent


