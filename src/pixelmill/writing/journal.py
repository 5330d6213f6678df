"""The journal: one SQLite file (WAL) per run directory, the single source of truth for what was done.

Tables:
- `meta`: the run's configuration fingerprint and snapshot.
- `records`: row index -> record key (keys are unique; assigned once, so a resume names files the same way).
- `results`: one row per (step, row): status, outputs (image paths), attempts, calls done, cost, and the
  row's `pixelmill` metadata as JSON.

Commits happen per finished call, after the images are on disk: a kill loses at most the calls in flight.
WAL with synchronous=NORMAL survives a killed process (the OS keeps the log); it is the power-loss case that
it trades away, for speed.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pixelmill.errors import ConfigError

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (row INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    step TEXT NOT NULL,
    row INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    calls_done INTEGER NOT NULL DEFAULT 0,
    outputs TEXT NOT NULL DEFAULT '[]',
    cost REAL NOT NULL DEFAULT 0,
    info TEXT NOT NULL DEFAULT '{}',
    updated REAL NOT NULL,
    PRIMARY KEY (step, row)
);
CREATE INDEX IF NOT EXISTS results_status ON results (step, status);
"""
# What the journal reads: a table without these columns is another program's, or an older layout.
_COLUMNS = {
    "meta": ("key", "value"),
    "records": ("row", "key", "digest"),
    "results": ("step", "row", "status", "attempts", "calls_done", "outputs", "cost", "info", "updated"),
}


@dataclass(slots=True)
class StepState:
    status: str = "pending"
    attempts: int = 0
    calls_done: int = 0
    outputs: list[str] = field(default_factory=list)
    cost: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        rundir = path.parent.parent
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use {rundir} as a run directory: {exc.strerror or exc}") from None
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the journal {path}: {exc}") from None
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=10000")
            self.db.executescript(_SCHEMA)
            for table, columns in _COLUMNS.items():  # a file of another program passes CREATE IF NOT EXISTS
                self.db.execute(f"SELECT {', '.join(columns)} FROM {table} LIMIT 0")
        except sqlite3.Error as exc:
            self.db.close()
            if "readonly" in str(exc) or "read-only" in str(exc) or "unable to open" in str(exc):
                raise ConfigError(f"cannot write the journal {path}: {exc}. The run directory must be "
                                  "writable.") from None
            raise ConfigError(
                f"{path} is damaged or is not a pixelmill journal ({exc}). Move {rundir} aside (or use another "
                f"--output) to start a new run; nothing was sent."
            ) from None

    @classmethod
    def open(cls, rundir: Path) -> Journal:
        return cls(rundir / ".pixelmill" / "journal.sqlite")

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------ configuration
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def bind(self, fingerprint: dict[str, Any], snapshot: dict[str, Any], *, restart: bool) -> None:
        """Tie this RUNDIR to one configuration: refuse another one unless `restart` (which clears the run)."""
        mine = orjson.dumps(fingerprint, option=orjson.OPT_SORT_KEYS).decode()
        theirs = self.get_meta("fingerprint")
        source = _source_of(snapshot)
        if not restart:
            self._check_source(source)
        if theirs is not None and theirs != mine:
            if not restart:
                changed = _diff(orjson.loads(theirs), orjson.loads(mine))
                raise ConfigError(
                    f"{self.path.parent.parent} holds a run of another configuration ({changed}). Use another "
                    "--output folder, or --restart to discard that run and start over."
                )
            self.clear()
        elif restart:
            self.clear()
        self.set_meta("schema", SCHEMA_VERSION)
        if source is not None:
            self.set_meta("source", source)
        self.set_meta("fingerprint", mine)
        self.set_meta("config", orjson.dumps(snapshot, option=orjson.OPT_SORT_KEYS).decode())

    def _check_source(self, source: str | None) -> None:
        """Refuse a RUNDIR that holds the run of another input file that still exists (`batch1/prompts.jsonl`
        then `batch2/prompts.jsonl` share the default folder `pixelmill-out/prompts`). An input that was moved
        (its old path is gone) is taken as the same data: rows are matched by identity anyway."""
        theirs = self.get_meta("source")
        if source is None or theirs is None or theirs == source or theirs.startswith("hf:"):
            return
        if Path(theirs).exists():
            raise ConfigError(
                f"{self.path.parent.parent} holds the run of {theirs}, not of {source}: give this input its own "
                "--output folder (or --restart to discard that run)."
            )

    def clear(self) -> None:
        self.db.execute("BEGIN")
        self.db.execute("DELETE FROM results")
        self.db.execute("DELETE FROM records")
        self.db.execute("DELETE FROM meta")
        self.db.execute("COMMIT")

    # ------------------------------------------------------------ record keys
    def assign_keys(self, wanted: list[tuple[int, str, str]]) -> tuple[dict[int, str], list[int]]:
        """Keys for a batch of (row, wanted key, content digest). Rows the journal knows keep their key. A row
        whose content changed since the last run is forgotten (its results no longer belong to it) and listed
        in the second value. New rows get the wanted key, or `<key>-<row>` when another row has it already
        (two rows never share a file)."""
        rows = [r for r, _, _ in wanted]
        known = {r: (k, d) for r, k, d in self._select_in("SELECT row, key, digest FROM records WHERE row IN ({})",
                                                          rows)}
        changed = [r for r, _, d in wanted if r in known and known[r][1] != d]
        fresh = [(r, k, d) for r, k, d in wanted if r not in known or r in changed]
        keys = {r: kd[0] for r, kd in known.items()}
        if fresh:
            self.db.execute("BEGIN")
            try:
                for r in changed:
                    self.db.execute("DELETE FROM results WHERE row = ?", (r,))
                    self.db.execute("DELETE FROM records WHERE row = ?", (r,))
                for r, k, d in fresh:
                    key = k
                    attempt = 1
                    while self.db.execute("SELECT 1 FROM records WHERE key = ?", (key,)).fetchone():
                        # `<key>-<row>` may itself be another row's id: count on until the name is free.
                        key = f"{k}-{r}" if attempt == 1 else f"{k}-{r}-{attempt}"
                        attempt += 1
                    self.db.execute("INSERT INTO records (row, key, digest) VALUES (?, ?, ?)", (r, key, d))
                    keys[r] = key
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return keys, changed

    # ------------------------------------------------------------ results
    def states(self, step: str, rows: list[int]) -> dict[int, StepState]:
        out: dict[int, StepState] = {}
        query = ("SELECT row, status, attempts, calls_done, outputs, cost, info FROM results "
                 "WHERE step = ? AND row IN ({})")
        for row, status, attempts, calls, outputs, cost, info in self._select_in(query, rows, (step,)):
            out[row] = StepState(status, attempts, calls, orjson.loads(outputs), cost, orjson.loads(info))
        return out

    def save(self, step: str, row: int, state: StepState) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO results (step, row, status, attempts, calls_done, outputs, cost, info, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                step,
                row,
                state.status,
                state.attempts,
                state.calls_done,
                orjson.dumps(state.outputs).decode(),
                state.cost,
                orjson.dumps(state.info, default=str).decode(),
                time.time(),
            ),
        )

    def spent(self) -> float:
        """Everything this RUNDIR has spent, across resumes (what `--max-cost` is measured against)."""
        return float(self.db.execute("SELECT COALESCE(SUM(cost), 0) FROM results").fetchone()[0])

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for step, status, n in self.db.execute("SELECT step, status, COUNT(*) FROM results GROUP BY step, status"):
            out.setdefault(step, {})[status] = n
        return out

    def iter_results(self, steps: list[str]) -> Iterator[tuple[int, str, dict[str, StepState]]]:
        """(row, content digest, {step: state}) for every row the journal knows, in row order: the sink's merge
        input (the digest tells it whether the results still belong to the row it reads)."""
        cursor = self.db.execute(
            "SELECT r.row, r.digest, s.step, s.status, s.attempts, s.calls_done, s.outputs, s.cost, s.info "
            "FROM records r LEFT JOIN results s ON s.row = r.row ORDER BY r.row"
        )
        current: int | None = None
        key: str = ""
        states: dict[str, StepState] = {}
        for row, k, step, status, attempts, calls, outputs, cost, info in cursor:
            if row != current:
                if current is not None:
                    yield current, key, states
                current, key, states = row, k, {}
            if step is not None and step in steps:
                states[step] = StepState(status, attempts, calls, orjson.loads(outputs), cost, orjson.loads(info))
        if current is not None:
            yield current, key, states

    def _select_in(self, query: str, values: list[int], prefix: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        prefix = tuple(prefix)
        for start in range(0, len(values), 500):
            chunk = values[start : start + 500]
            sql = query.format(",".join("?" * len(chunk)))
            out.extend(self.db.execute(sql, (*prefix, *chunk)).fetchall())
        return out


def _source_of(snapshot: dict[str, Any]) -> str | None:
    """The input a configuration reads, as an absolute path (or `hf:name:split`)."""
    source = snapshot.get("source")
    if not isinstance(source, str):
        return None
    return source if source.startswith("hf:") else str(Path(source).resolve())


def _diff(old: Any, new: Any, path: str = "") -> str:
    """What changed between two fingerprints, as `steps.generate.params.quality: 'low' -> 'high'`."""
    if isinstance(old, dict) and isinstance(new, dict):
        parts = [_diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
                 for k in sorted(set(old) | set(new), key=str) if old.get(k) != new.get(k)]
        return "; ".join(p for p in parts if p) or "changed"
    return f"{path or 'configuration'}: {old!r} -> {new!r}"
