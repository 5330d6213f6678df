"""One process per run directory: an exclusive lock on `RUNDIR/.pixelmill/lock`, held for the length of a run.

Two processes on one RUNDIR would both send every pending row (each paid) while the journal keeps one result per
row, so the budget and `status` would never see the second payment. The lock is an `flock` on a file that names
its holder (pid, host, command, start time), so the refusal can name the first process. The system releases an
`flock` when its process dies, however it dies: a killed run leaves no lock behind, and nothing has to guess
whether a lock file is stale.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

import orjson

from pixelmill.errors import ConfigError


class RunLock:
    """`with RunLock(rundir):` holds RUNDIR for this process, or raises `ConfigError` naming the holder."""

    def __init__(self, rundir: Path) -> None:
        self.path = rundir / ".pixelmill" / "lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot use {self.path.parent.parent} as a run directory: "
                              f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(
                f"{self.path.parent.parent} is in use by another pixelmill process{holder}: two runs on one folder "
                "would pay for every row twice. Wait for it to finish (or stop it), or use another --output."
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, orjson.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                       "command": " ".join(sys.argv[:2])}))
        except OSError:
            pass  # the lock holds without its note (a full disk): the refusal then names no process
        self._fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _holder(fd: int) -> str:
    """`(pid 123 on host, started 5 min ago: pixelmill generate)` from the lock file's note, or ''."""
    try:
        note = orjson.loads(os.pread(fd, 4096, 0))
        pid, host, started = int(note["pid"]), str(note["host"])[:64], float(note["started"])
        command = str(note.get("command", ""))[:80]
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return ""
    ago = max(0.0, time.time() - started)
    since = f"{ago:.0f} s ago" if ago < 120 else f"{ago / 60:.0f} min ago"
    return f" (pid {pid} on {host}, started {since}{': ' + command if command else ''})"
