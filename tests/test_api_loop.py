"""The sync API inside a running event loop (as in Jupyter), the async twins, and typed keyword arguments."""

from __future__ import annotations

import gc
import inspect
import threading
import typing
import warnings
from pathlib import Path

import pytest

import pixelmill
from pixelmill.options import JobOptions, PipelineOptions
from tests.runs import prompts, write_jsonl


async def test_the_sync_api_works_inside_a_running_event_loop(tmp_path: Path) -> None:
    threads = set(threading.enumerate())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = pixelmill.generate([{"prompt": "a fox"}, {"prompt": "a hare"}], output=tmp_path / "run",
                                    provider="emulator")
        gc.collect()  # a coroutine never awaited warns when it is collected
    assert report.exit_code == 0 and report.counts.done == 2
    assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]
    assert [t for t in threading.enumerate() if t not in threads and t.name.startswith("pixelmill")] == []


async def test_async_twins_run_on_the_callers_loop_with_the_emulator(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    report = await pixelmill.agenerate(src, output=tmp_path / "gen", provider="emulator", n=2)
    assert report.exit_code == 0 and report.stats.images == 4
    edited = await pixelmill.aedit(
        [{"prompt": "make it night", "images": str(tmp_path / "gen" / row["images"][0])}
         for row in report.iter_rows()],
        output=tmp_path / "edit", provider="emulator", allow_path=[tmp_path])
    assert edited.exit_code == 0 and edited.counts.done == 2
    piped = await pixelmill.arun({"source": str(src), "output": str(tmp_path / "pipe"),
                                  "steps": [{"name": "one", "model": {"provider": "emulator",
                                                                      "model": "gpt-image-1-mini"}}]})
    assert piped.exit_code == 0 and piped.counts.done == 2
    assert {row["pixelmill"]["one"]["provider"] for row in piped.iter_rows()} == {"emulator"}


def test_options_are_typed_keyword_arguments_with_help() -> None:
    hints = typing.get_type_hints(JobOptions)
    for function in (pixelmill.generate, pixelmill.edit, pixelmill.agenerate, pixelmill.aedit):
        params = inspect.signature(function).parameters
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        assert params["size"].annotation == hints["size"] == str | None
        assert params["max_cost"].annotation == float | None and params["concurrency"].default == 16
        assert params["provider"].kind is inspect.Parameter.KEYWORD_ONLY
        assert set(hints) <= set(params)
        assert "max_cost: Budget in USD" in (function.__doc__ or "")
    for function in (pixelmill.run, pixelmill.arun, pixelmill.Pipeline.run, pixelmill.Pipeline.arun):
        params = inspect.signature(function).parameters
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        assert set(typing.get_type_hints(PipelineOptions)) <= set(params)
        assert params["limit"].annotation == int | None


def test_an_unknown_option_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="sizes"):
        pixelmill.generate([{"prompt": "x"}], output=tmp_path / "run", sizes="1024x1024")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="quality"):
        pixelmill.run({"source": "x.jsonl", "steps": [{}]}, quality="high")  # type: ignore[call-arg]


INTERRUPTED = """
import asyncio, os, signal, sys, threading, pixelmill
async def main():
    threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    report = pixelmill.generate([{"prompt": f"p{i}"} for i in range(2000)], output=sys.argv[1],
                                provider="emulator", concurrency=2)
    print("report", report.exit_code, report.counts.pending > 0, report.aborted)
asyncio.new_event_loop().run_until_complete(main())  # a loop that, like a kernel's, lets SIGINT raise
"""


def test_an_interrupt_inside_a_running_loop_stops_the_run_cleanly(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", INTERRUPTED, str(tmp_path / "run")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "report 3 True interrupted: run the same call again to continue" in done.stdout
    assert "stopping: waiting for the calls in flight" not in done.stderr  # notices are the caller's to show
