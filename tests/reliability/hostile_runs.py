"""Running `pixelmill generate|edit` as a real process for the hostile-input tests, bounded in time and memory: a
run that hangs (a FIFO read for ever) is killed, and one that reads without end (`/dev/zero`) runs out of its
own address space, so either fails its test instead of hanging the suite or taking the machine down."""

from __future__ import annotations

import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pixelmill.testing import Emulator
from tests.runs import cli_process


@dataclass
class Finished:
    code: int
    stderr: str


def run_process(emu: Emulator, task: str, src: Path, out: Path, *extra: str | Path,
                timeout: float = 120) -> Finished:
    proc = cli_process(task, src, "-o", out, "--base-url", emu.openai_base_url, "--quiet", *extra,
                       preexec_fn=_bounded_memory)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"pixelmill {task} {src.name} did not finish within {timeout} s") from None
    return Finished(proc.returncode, stderr.decode("utf-8", "replace"))


MEMORY_LIMIT = 6 * 1024**3  # address space: far above what a run of a few rows needs


def _bounded_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def output_rows(rundir: Path) -> list[dict[str, Any]]:
    """output.jsonl, parsed strictly (orjson refuses invalid UTF-8 and lone surrogates)."""
    return [orjson.loads(line) for line in (rundir / "output.jsonl").read_bytes().splitlines()]


def status_of(rows: list[dict[str, Any]]) -> list[str]:
    return [row["pixelmill"]["status"] for row in rows]


def error_of(row: dict[str, Any]) -> dict[str, Any]:
    error = row["pixelmill"].get("error")
    assert isinstance(error, dict), row["pixelmill"]
    return error
