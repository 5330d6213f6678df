"""`python -m tests.reliability.launch ARGS...`: the `pixelmill` command with one kill point armed.

`PIXELMILL_TEST_KILL=PHASE:N[:K]` makes the process SIGKILL itself at the N-th event of PHASE, inside pixelmill's
own code path (the functions are wrapped, not replaced), so that a crash test can land a kill in the few
microseconds that matter instead of hoping a timer hits them:

- `write`: half-way through writing the N-th image to its temporary file (`store.ImageStore.write`);
- `rename`: the N-th image written whole to its temporary file, just before the rename to its final name;
- `journal`: at the N-th journal save, after the images it records are in place, before it is written;
- `commit`: inside the N-th journal save, while SQLite executes it (at its K-th virtual-machine instruction,
  before its transaction commits);
- `keys`: inside the N-th record-key assignment, a multi-statement transaction (at its K-th instruction);
- `output`: after N rows of the output file were written to its temporary file (`sinks.write_output`).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _Counter:
    def __init__(self, nth: int) -> None:
        self.left = nth

    def hit(self) -> bool:
        self.left -= 1
        return self.left == 0


class _KillingFile:
    """A binary file that dies on its N-th `write` call, after writing `fraction` of that call's bytes."""

    def __init__(self, f: Any, counter: _Counter, fraction: float) -> None:
        self._f = f
        self._counter = counter
        self._fraction = fraction

    def write(self, data: bytes) -> int:
        if self._counter.hit():
            self._f.write(data[: int(len(data) * self._fraction)])
            self._f.flush()  # the half-written bytes reach the file, as in a crash mid-write
            die()
        return int(self._f.write(data))

    def __enter__(self) -> _KillingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _killing_open(counter: _Counter, fraction: float) -> Any:
    def opener(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115 (closed by the wrapper)
        return _KillingFile(f, counter, fraction) if "w" in mode else f

    return opener


class _OsWithKillingReplace:
    def __init__(self, counter: _Counter) -> None:
        self._counter = counter

    def replace(self, src: Any, dst: Any) -> None:
        if self._counter.hit():
            die()
        os.replace(src, dst)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def _kill_inside_sql(db: Any, instruction: int) -> None:
    """SIGKILL from SQLite's progress handler: in the middle of executing a statement (before it commits)."""
    db.set_progress_handler(die, instruction)


class _KillAfterBegin:
    """A connection that arms the kill once its transaction begins (not in the SELECTs before it)."""

    def __init__(self, db: Any, instruction: int) -> None:
        self._db = db
        self._instruction = instruction

    def execute(self, sql: str, *args: Any) -> Any:
        result = self._db.execute(sql, *args)
        if sql == "BEGIN":
            _kill_inside_sql(self._db, self._instruction)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def arm(spec: str) -> None:
    import pixelmill.writing.output
    import pixelmill.writing.store
    from pixelmill.writing.journal import Journal

    phase, _, rest = spec.partition(":")
    nth_text, _, k_text = rest.partition(":")
    counter = _Counter(int(nth_text))
    instruction = int(k_text or 1)
    if phase == "write":
        pixelmill.writing.store.open = _killing_open(counter, 0.5)  # type: ignore[attr-defined]
    elif phase == "rename":
        pixelmill.writing.store.os = _OsWithKillingReplace(counter)  # type: ignore[assignment]
    elif phase == "output":
        pixelmill.writing.output.open = _killing_open(counter, 0.3)  # type: ignore[attr-defined]
    elif phase in ("journal", "commit"):
        save = Journal.save

        def killing_save(self: Journal, *args: Any, **kwargs: Any) -> None:
            if counter.hit():
                if phase == "journal":
                    die()
                _kill_inside_sql(self.db, instruction)
            save(self, *args, **kwargs)

        Journal.save = killing_save  # type: ignore[method-assign]
    elif phase == "keys":
        claim = Journal.claim

        def killing_claim(self: Journal, rows: list[Any]) -> Any:
            if counter.hit():
                self.db = _KillAfterBegin(self.db, instruction)  # type: ignore[assignment]
            return claim(self, rows)

        Journal.claim = killing_claim  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown kill phase {phase!r}")


def main() -> None:
    spec = os.environ.get("PIXELMILL_TEST_KILL")
    if spec:
        arm(spec)
    from pixelmill.cli import main as pixelmill_main

    sys.argv = ["pixelmill", *sys.argv[1:]]
    pixelmill_main()


if __name__ == "__main__":
    main()
