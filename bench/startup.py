"""Benchmark 6: start-up. Wall time of `pixelmill --help` (a fresh process each time, as a user types it), of
`import pixelmill`, and of importing the engine (`pixelmill.api`, what every run loads). Heavy modules that
`import pixelmill` pulls in are listed: it must stay light (DESIGN: Pillow, pyarrow, the openai SDK lazily)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import orjson

from bench.emulator import REPO, bench_env
from bench.harness import Row, pixelmill_argv

TARGET_HELP_S = 0.5
HEAVY = ("aiohttp", "pydantic", "PIL", "pyarrow", "openai", "google.genai", "rich", "yaml", "typer")

_IMPORT = """
import sys, time
t = time.perf_counter()
import {module}
elapsed = time.perf_counter() - t
import orjson
heavy = [m for m in {heavy!r} if m in sys.modules]
sys.stdout.write(orjson.dumps({{"s": elapsed, "heavy": heavy}}).decode())
"""


def _wall(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + sys) of one fresh process. CPU does not depend on what else the
    machine is doing; wall does (a shared 2-core machine): both are reported."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=bench_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def _import(module: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _IMPORT.format(module=module, heavy=HEAVY)], cwd=REPO,
                         env=bench_env(), capture_output=True, check=True)
    result: dict[str, object] = orjson.loads(out.stdout)
    return result


def run(repeat: int = 10) -> list[Row]:
    _wall([*pixelmill_argv(), "--help"])  # warm: byte code compiled, files in the page cache
    help_runs = [_wall([*pixelmill_argv(), "--help"]) for _ in range(repeat)]
    help_times = [w for w, _ in help_runs]
    bare = [_wall([sys.executable, "-c", "pass"])[0] for _ in range(repeat)]
    imports = [_import("pixelmill") for _ in range(repeat)]
    engine = [_import("pixelmill.api") for _ in range(repeat)]
    help_s = statistics.median(help_times)
    import_s = statistics.median(float(i["s"]) for i in imports)  # type: ignore[arg-type]
    engine_s = statistics.median(float(i["s"]) for i in engine)  # type: ignore[arg-type]
    return [
        Row(bench="startup", case="pixelmill --help", figure=round(help_s, 3), unit="s wall (median)",
            target=f"< {TARGET_HELP_S}", ok=help_s < TARGET_HELP_S,
            details={"runs_s": [round(t, 3) for t in help_times], "min_s": round(min(help_times), 3),
                     "cpu_s_median": round(statistics.median(c for _, c in help_runs), 3),
                     "bare_interpreter_s": round(statistics.median(bare), 3)}),
        Row(bench="startup", case="import pixelmill", figure=round(import_s * 1000, 1), unit="ms (median)",
            target="(info)", ok=None, details={"heavy_modules_loaded": imports[0]["heavy"]}),
        Row(bench="startup", case="import pixelmill.api (engine)", figure=round(engine_s * 1000, 1),
            unit="ms (median)", target="(info)", ok=None, details={"heavy_modules_loaded": engine[0]["heavy"]}),
    ]
