"""Start and steer the emulator process (`bench.emulator_server`) from a benchmark: sync, standard library."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of every process a benchmark starts: `bench` importable, a test key, no proxies."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    # Byte code cached as in a normal install (this sandbox sets PYTHONDONTWRITEBYTECODE).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["OPENAI_API_KEY"] = "sk-test-bench"
    env.pop("DF_API_KEY", None)
    env.pop("DF_BASE_URL", None)
    env.pop("OPENAI_BASE_URL", None)
    env.update(extra)
    return env


@dataclass(slots=True)
class Request:
    """One line of the emulator's log (bench.emulator_server.LOG_FIELDS)."""

    seq: int
    endpoint: str
    started: float  # time.monotonic() of the emulator process: one clock for the whole machine
    finished: float | None
    status: int | None
    fault: str | None
    prompt: str | None
    images: int
    latency: float
    bytes_out: int

    @property
    def ended(self) -> float:
        """When the answer was sent (answered requests only)."""
        assert self.finished is not None, f"request {self.seq} is still in flight"
        return self.finished

    @property
    def duration(self) -> float:
        return self.ended - self.started


class EmulatorProcess:
    """`with EmulatorProcess(latency=0.2, latency_sigma=0.5) as emu:` ... `emu.openai_url`, `emu.log()`."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.control = ""

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> EmulatorProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.emulator_server", "--config", orjson.dumps(self.config).decode()],
            cwd=REPO, env=bench_env(), stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the emulator process exited with {self.proc.wait()} before it was ready")
        ready = orjson.loads(line)
        self.url, self.control = ready["url"], ready["control"]
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------ control
    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(self.control + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            return orjson.loads(answer.read())

    def configure(self, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/configure", changes)
        return result

    def reset(self) -> None:
        self._call("POST", "/reset", {})

    def log(self) -> list[Request]:
        return [Request(**r) for r in self._call("GET", "/log")]

    def warm(self, prompts: int = 300) -> None:
        """Fill the emulator's image cache before a measured run: the first answer of each colour costs a
        PNG encode (and the very first a Pillow import), which would otherwise land in the measured latencies.
        Sent with latency 0 and no rate limit, then the settings are put back and the log is cleared."""
        keep = {k: v for k, v in self.configure().items() if k in ("latency", "rpm", "ipm", "faults")}
        self.configure(latency=0.0, rpm=None, ipm=None, faults={})
        for i in range(prompts):
            body = orjson.dumps({"model": "gpt-image-2", "prompt": f"warm-up {i}"})
            request = urllib.request.Request(self.openai_url + "/images/generations", data=body, method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": "Bearer sk-test-bench"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                answer.read()
        self.configure(**keep)
        self.reset()

    def stats(self) -> dict[str, int]:
        result: dict[str, int] = self._call("GET", "/stats")
        return result
