"""Running `pixelmill generate|edit` as a real process for the hostile-input tests, bounded in time: a run that
hangs (a FIFO read for ever) is killed and fails its test instead of hanging the suite."""

from __future__ import annotations

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
    proc = cli_process(task, src, "-o", out, "--base-url", emu.openai_base_url, "--quiet", *extra)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"pixelmill {task} {src.name} did not finish within {timeout} s") from None
    return Finished(proc.returncode, stderr.decode("utf-8", "replace"))


def output_rows(rundir: Path) -> list[dict[str, Any]]:
    """output.jsonl, parsed strictly (orjson refuses invalid UTF-8 and lone surrogates)."""
    return [orjson.loads(line) for line in (rundir / "output.jsonl").read_bytes().splitlines()]


def status_of(rows: list[dict[str, Any]]) -> list[str]:
    return [row["pixelmill"]["status"] for row in rows]


def error_of(row: dict[str, Any]) -> dict[str, Any]:
    error = row["pixelmill"].get("error")
    assert isinstance(error, dict), row["pixelmill"]
    return error
