"""Helpers for tests that run pixelmill end to end: input files, CLI calls, reading outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from typer.testing import CliRunner

from pixelmill.cli import app

TEST_KEY = "sk-test-4f9a1c2b7d3e8f60a5b4c3d2"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    with path.open("wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else orjson.dumps(row))
            f.write(b"\n")
    return path


def read_output(rundir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (rundir / "output.jsonl").read_bytes().splitlines()]


@dataclass
class CliResult:
    code: int
    output: str


def cli(*args: str | Path, env: dict[str, str] | None = None) -> CliResult:
    """Run the CLI in-process (fast), with OPENAI_API_KEY set to the test key unless `env` says otherwise."""
    runner = CliRunner()
    environ = {"OPENAI_API_KEY": TEST_KEY, **(env or {})}
    result = runner.invoke(app, [str(a) for a in args], env=environ, catch_exceptions=False)
    return CliResult(result.exit_code, result.output)


def cli_process(*args: str | Path, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen[bytes]:
    """The CLI as a real process (for kills and signals)."""
    environ = {**os.environ, "OPENAI_API_KEY": TEST_KEY, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "pixelmill", *[str(a) for a in args]], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def prompts(n: int, prefix: str = "prompt") -> list[dict[str, Any]]:
    return [{"prompt": f"{prefix} number {i}"} for i in range(n)]


def run_api(emu: Any, src: Path, out: Path, task: str = "generate", **options: Any) -> Any:
    """A run through the Python API with fast retries (backoff of 10-50 ms), against `emu` over HTTP."""
    from pixelmill.api import run_config
    from pixelmill.options import build_config, job_options

    engine = {"retry_base": 0.01, "retry_cap": 0.05, **options.pop("engine", {})}
    config = build_config(task, src, job_options(output=out, base_url=emu.openai_base_url, api_key=TEST_KEY,
                                                 engine=engine, **options))
    return run_config(config)
