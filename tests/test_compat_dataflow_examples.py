"""The two DataFlow example scripts, run as a user runs them: a process with the seed documents' flags and
environment variables, against the emulator over loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from tests.runs import TEST_KEY, write_jsonl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "dataflow"
T2I = EXAMPLES / "text_to_image_generation_api_pipeline.py"
EDIT = EXAMPLES / "image_editing_api_pipeline.py"


def script(path: Path, *args: str | Path, cwd: Path, base_url: str | None, key: str | None = TEST_KEY,
           wait: bool = True) -> Any:
    env = {k: v for k, v in os.environ.items() if k not in ("DF_API_KEY", "DF_BASE_URL")}
    if key is not None:
        env["DF_API_KEY"] = key
    if base_url is not None:
        env["DF_BASE_URL"] = base_url
    command = [sys.executable, str(path), *[str(a) for a in args]]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def rows(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_text_to_image_script_openai(tmp_path: Path, emulator_thread: Any) -> None:
    emu = emulator_thread
    done = script(T2I, "--api_format", "openai", "--model_name", "gpt-image-2", "--batch_size", "2",
                  "--cache_path", "out", cwd=tmp_path, base_url=emu.url)  # no /v1: it is added once
    assert done.returncode == 0, done.stderr
    assert {r.path for r in emu.log} == {"/v1/images/generations"}
    assert emu.count() == 5  # the example data: four rows, one of them with two messages
    out = rows(tmp_path / "out" / "dataflow_cache_step_step1.jsonl")
    assert [len(r["images"]) for r in out] == [1, 1, 2, 1]
    assert out[2]["images"][1] == "out/sample2_condition1/sample2_condition1_0.png"  # under --cache_path
    assert all((tmp_path / p).exists() for r in out for p in r["images"])
    assert "4 rows: 4 done, 0 failed" in done.stderr


def test_image_editing_script_gemini_with_example_data(tmp_path: Path, emulator_thread: Any) -> None:
    emu = emulator_thread
    done = script(EDIT, "--api_format", "gemini", "--batch_size", "4", "--cache_path", tmp_path / "out",
                  cwd=tmp_path, base_url=emu.gemini_base_url)
    assert done.returncode == 0, done.stderr
    assert emu.count() == 4 and {r.family for r in emu.log} == {"gemini"}
    assert all(r.model.startswith("gemini-3-pro-image") for r in emu.log)
    out = rows(tmp_path / "out" / "dataflow_cache_step_step1.jsonl")
    assert [r["output_image"] for r in out] == [
        [str(tmp_path / "out" / f"sample_{i}" / f"sample_{i}_0.png")] for i in range(3)]
    assert len(out[2]["pixelmill"]["output_image"]["turns"]) == 2  # the multi-turn row


def test_image_editing_script_openai_and_rerun(tmp_path: Path, emulator_thread: Any) -> None:
    emu = emulator_thread
    args = ("--api_format", "openai", "--model_name", "gpt-image-2", "--cache_path", "out")
    assert script(EDIT, *args, cwd=tmp_path, base_url=emu.openai_base_url).returncode == 0
    assert emu.count() == 4 and {r.endpoint for r in emu.log} == {"edits"}
    again = script(EDIT, *args, cwd=tmp_path, base_url=emu.openai_base_url)
    assert again.returncode == 0 and emu.count() == 4  # resumed: nothing sent again
    assert "this run: 0 images from 0 requests" in again.stderr


def test_scripts_need_DF_API_KEY(tmp_path: Path) -> None:
    for path in (T2I, EDIT):
        done = script(path, cwd=tmp_path, base_url=None, key=None)
        assert done.returncode == 2 and "DF_API_KEY" in done.stderr
        assert not (tmp_path / "cache_local").exists()


def test_killed_script_resumes_paying_only_for_calls_in_flight(tmp_path: Path, emulator_thread: Any) -> None:
    emu = emulator_thread
    emu.configure(latency=0.3)
    src = write_jsonl(tmp_path / "p.jsonl",
                      [{"conversations": [{"role": "user", "content": f"prompt {i}"}]} for i in range(10)])
    args = ("--api_format", "openai", "--model_name", "gpt-image-2", "--batch_size", "2",
            "--first_entry_file_name", src, "--cache_path", "out")
    proc = script(T2I, *args, cwd=tmp_path, base_url=emu.openai_base_url, wait=False)
    try:
        deadline = time.monotonic() + 30
        while emu.count(status=200) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (tmp_path / "out" / "dataflow_cache_step_step1.jsonl").exists()  # killed before the end
    answered = emu.count(status=200)
    emu.configure(latency=0.0)
    done = script(T2I, *args, cwd=tmp_path, base_url=emu.openai_base_url)
    assert done.returncode == 0, done.stderr
    out = rows(tmp_path / "out" / "dataflow_cache_step_step1.jsonl")
    assert all(len(r["images"]) == 1 for r in out)
    # Every answered call before the kill was kept, except the ones whose answer was still being written;
    # at most `batch_size` calls are paid twice.
    assert emu.count() <= 10 + 2
    assert answered >= 4


def test_ctrl_c_stops_cleanly_and_the_rerun_pays_nothing_twice(tmp_path: Path, emulator_thread: Any) -> None:
    """The first Ctrl-C stops sending, lets the calls in flight finish, writes the step file with the rest
    pending and exits 3; the re-run sends exactly the rest."""
    emu = emulator_thread
    emu.configure(latency=0.3)
    src = write_jsonl(tmp_path / "p.jsonl",
                      [{"conversations": [{"role": "user", "content": f"prompt {i}"}]} for i in range(10)])
    args = ("--api_format", "openai", "--model_name", "gpt-image-2", "--batch_size", "2",
            "--first_entry_file_name", src, "--cache_path", "out")
    proc = script(T2I, *args, cwd=tmp_path, base_url=emu.openai_base_url, wait=False)
    try:
        deadline = time.monotonic() + 30
        while emu.count(status=200) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err
    assert b"stopped:" in err and b"run the pipeline again" in err
    out = rows(tmp_path / "out" / "dataflow_cache_step_step1.jsonl")
    done = [r for r in out if r["images"]]
    assert len(out) == 10 and len(done) == emu.count(status=200) < 10
    assert {r["images_error"]["kind"] for r in out if not r["images"]} == {"pending"}
    emu.configure(latency=0.0)
    assert script(T2I, *args, cwd=tmp_path, base_url=emu.openai_base_url).returncode == 0
    assert emu.count() == 10  # every call sent once
