"""What every benchmark shares: prompt files, running the measured client, and the result row."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.emulator import REPO, bench_env


@dataclass(slots=True)
class Row:
    """One line of the results table: a figure, what it is measured against, and the details behind it."""

    bench: str
    case: str
    figure: float
    unit: str
    target: str  # e.g. ">= 0.95"
    ok: bool | None  # None: informational, no target
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"bench": self.bench, "case": self.case, "figure": self.figure, "unit": self.unit,
                "target": self.target, "ok": self.ok, "details": self.details}


def write_prompts(path: Path, n: int, tag: str) -> Path:
    """`n` distinct prompts (the emulator's log tells rows apart by prompt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"prompt": f"{tag} prompt {i}"}) + b"\n")
    return path


@dataclass(slots=True)
class ClientRun:
    exit_code: int
    report: dict[str, Any]
    stderr: str


def client_command(input: Path, output: Path, base_url: str, *extra: str) -> list[str]:
    """The `pixelmill generate` command line every benchmark runs (quiet: no progress thread)."""
    return ["generate", str(input), "--output", str(output), "--base-url", base_url, "--quiet", "--restart", *extra]


def run_client(workdir: Path, command: list[str], *, name: str = "client", profile: bool = False,
               timeout: float = 1800) -> ClientRun:
    """Run `pixelmill <command>` in the measured client process (bench.client) and read its report."""
    report = workdir / f"{name}.report.json"
    args = [sys.executable, "-m", "bench.client", "--report", str(report)]
    if profile:
        args += ["--profile", str(workdir / f"{name}.prof")]
    proc = subprocess.run([*args, "--", *command], cwd=REPO, env=bench_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
    if not report.exists():
        raise RuntimeError(f"the client wrote no report (exit {proc.returncode}): {proc.stderr[-2000:]}")
    data = orjson.loads(report.read_bytes())
    return ClientRun(int(data["exit_code"]), data, proc.stderr)


def pixelmill_argv() -> list[str]:
    """How to start the real `pixelmill` command: the console script beside this interpreter."""
    script = Path(sys.executable).parent / "pixelmill"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pixelmill"]
