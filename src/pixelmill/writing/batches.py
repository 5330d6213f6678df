"""The journal's table of provider batches (`--batch`): every batch a run built, uploaded and created, and the
row of every line, in the run's journal file (writing/journal.py), so that a re-run, another process or a
crashed one knows exactly what is on the provider's side.

Tables:
- `batches`: one per batch, numbered in order (`seq`, also in the name given to the provider, so that a batch
  whose creation answer a crash lost is found again by listing the provider's batches): its step, provider,
  `task` (its one endpoint: generate or edit; a step's conversations generate, then edit), `state`, the input
  `file_id`, the provider's `batch_id`, its line count, when it was created, and `info` (the provider's last
  word: state, counts, output and error file ids, expiry).
- `batch_lines`: one per line: the batch, the step and row it belongs to, its `custom_id`, the most it may cost
  (`reserved`, at the batch rate: --max-cost, engine/batch/budget.py) and `live` (1 until the batch is collected
  or given up). The reservations of live lines count in the journal's spend (`Journal.spent`), across runs and
  processes, until their batch is collected (its lines' bills are then in the results). A partial unique index
  on (step, row) WHERE live = 1 makes "a row is in at most one live batch" a fact SQLite enforces, not a hope:
  adding a row that is already live fails.

States, in order: `building` (lines recorded, the file being written or uploaded: nothing the provider knows of
can be billed), `uploaded` (the input file's id recorded; a crash here may have created the batch: the next run
looks for it by its name before creating one), `submitted` (the batch's id recorded: from here it is only
polled), `collected` (its lines mapped to their rows; its rows no longer live). A `building` batch found by a
later run is dropped (`drop`), its rows free again.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from pixelmill.writing.journal import Journal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    step TEXT NOT NULL,
    provider TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('building', 'uploaded', 'submitted', 'collected')),
    file_id TEXT,
    batch_id TEXT,
    lines INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    info TEXT NOT NULL DEFAULT '{}',
    task TEXT
);
CREATE TABLE IF NOT EXISTS batch_lines (
    seq INTEGER NOT NULL,
    step TEXT NOT NULL,
    row INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    live INTEGER NOT NULL DEFAULT 1,
    reserved REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (seq, custom_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS batch_lines_live ON batch_lines (step, row) WHERE live = 1;
"""
LIVE_STATES = ("building", "uploaded", "submitted")


class RowAlreadyLive(Exception):
    """A row was added to a batch while another live batch holds it (a bug: the caller checks `live_rows`)."""


@dataclass(slots=True)
class BatchEntry:
    seq: int
    step: str
    provider: str
    state: str
    file_id: str | None
    batch_id: str | None
    lines: int
    created: float
    info: dict[str, Any] = field(default_factory=dict)
    task: str | None = None  # generate | edit; None in a journal written before batches had one (the step's)


class BatchBook:
    """The batch tables of one journal (opened on the journal's connection)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.db = journal.db
        self.db.executescript(_SCHEMA)
        if "task" not in _columns(journal):  # a journal from before batches had a task
            self.db.execute("ALTER TABLE batches ADD COLUMN task TEXT")
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(batch_lines)")}
        if "reserved" not in columns:  # a journal of the first layout: its lines reserved nothing
            with journal._disk():
                self.db.execute("ALTER TABLE batch_lines ADD COLUMN reserved REAL NOT NULL DEFAULT 0")

    # ------------------------------------------------------------ building
    def start(self, step: str, provider: str, task: str | None = None) -> int:
        """A new batch of `task` lines, `building`: returns its number."""
        with self.journal._disk():
            cur = self.db.execute("INSERT INTO batches (step, provider, state, created, task) "
                                  "VALUES (?, ?, 'building', ?, ?)", (step, provider, time.time(), task))
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def add_lines(self, seq: int, step: str, lines: Iterable[tuple[int, str] | tuple[int, str, float]]) -> None:
        """Record (row, custom_id[, reserved]) lines of batch `seq`, in one transaction. Raises `RowAlreadyLive`
        (nothing recorded) when a row is live in another batch."""
        db = self.db
        with self.journal._disk():
            db.execute("BEGIN")
            try:
                n = 0
                for line in lines:
                    row, custom_id, reserved = line[0], line[1], (line[2] if len(line) > 2 else 0.0)
                    db.execute("INSERT INTO batch_lines (seq, step, row, custom_id, reserved) VALUES (?, ?, ?, ?, ?)",
                               (seq, step, row, custom_id, reserved))
                    n += 1
                db.execute("UPDATE batches SET lines = lines + ? WHERE seq = ?", (n, seq))
                db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                db.execute("ROLLBACK")
                raise RowAlreadyLive(str(exc)) from None
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def uploaded(self, seq: int, file_id: str) -> None:
        self._set(seq, "uploaded", file_id=file_id)

    def submitted(self, seq: int, batch_id: str, info: dict[str, Any]) -> None:
        """The batch exists at the provider: from now on its age (`created`, which `pixelmill status` shows) is
        counted from its creation, not from when its file began."""
        self._set(seq, "submitted", batch_id=batch_id, info=info)
        with self.journal._disk():
            self.db.execute("UPDATE batches SET created = ? WHERE seq = ?", (time.time(), seq))

    def note(self, seq: int, info: dict[str, Any]) -> None:
        """The provider's latest word on a live batch (state, counts, file ids)."""
        with self.journal._disk():
            self.db.execute("UPDATE batches SET info = ? WHERE seq = ?", (orjson.dumps(info).decode(), seq))

    def collected(self, seq: int, info: dict[str, Any]) -> None:
        """The batch's lines are mapped to their rows: its rows are free (for a later batch, if not done)."""
        db = self.db
        with self.journal._disk():
            db.execute("BEGIN")
            try:
                db.execute("UPDATE batches SET state = 'collected', info = ? WHERE seq = ?",
                           (orjson.dumps(info).decode(), seq))
                db.execute("UPDATE batch_lines SET live = 0 WHERE seq = ?", (seq,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def drop(self, seq: int) -> None:
        """A batch that never reached the provider (`building`, or `uploaded` and not found there by its name):
        forgotten, its rows free."""
        db = self.db
        with self.journal._disk():
            db.execute("BEGIN")
            try:
                db.execute("DELETE FROM batch_lines WHERE seq = ?", (seq,))
                db.execute("DELETE FROM batches WHERE seq = ? AND state IN ('building', 'uploaded')", (seq,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _set(self, seq: int, state: str, *, file_id: str | None = None, batch_id: str | None = None,
             info: dict[str, Any] | None = None) -> None:
        with self.journal._disk():
            self.db.execute(
                "UPDATE batches SET state = ?, file_id = COALESCE(?, file_id), batch_id = COALESCE(?, batch_id), "
                "info = COALESCE(?, info) WHERE seq = ?",
                (state, file_id, batch_id, None if info is None else orjson.dumps(info).decode(), seq))

    # ------------------------------------------------------------ reading
    def batches(self, *, live_only: bool = False) -> list[BatchEntry]:
        found = read_batches(self.journal)
        return [b for b in found if b.state in LIVE_STATES] if live_only else found

    def lines(self, seq: int) -> Iterator[tuple[str, int]]:
        """(custom_id, row) of every line of batch `seq`, read in pages (a batch may hold 50,000)."""
        last = ""
        while True:
            page = self.db.execute("SELECT custom_id, row FROM batch_lines WHERE seq = ? AND custom_id > ? "
                                   "ORDER BY custom_id LIMIT 1000", (seq, last)).fetchall()
            if not page:
                return
            for custom_id, row in page:
                yield str(custom_id), int(row)
            last = page[-1][0]

    def row_of(self, seq: int, custom_id: str) -> int | None:
        found = self.db.execute("SELECT row FROM batch_lines WHERE seq = ? AND custom_id = ?",
                                (seq, custom_id)).fetchone()
        return None if found is None else int(found[0])

    def reserved_of(self, seq: int, custom_id: str) -> float:
        """What line `custom_id` of batch `seq` reserved of the budget (0 when unknown)."""
        found = self.db.execute("SELECT reserved FROM batch_lines WHERE seq = ? AND custom_id = ?",
                                (seq, custom_id)).fetchone()
        return 0.0 if found is None else float(found[0])

    def reserved(self, seq: int | None = None) -> float:
        """The reservations of batch `seq`'s lines (all of them), or of every live line."""
        if seq is None:
            found = self.db.execute("SELECT COALESCE(SUM(reserved), 0) FROM batch_lines WHERE live = 1").fetchone()
        else:
            found = self.db.execute("SELECT COALESCE(SUM(reserved), 0) FROM batch_lines WHERE seq = ?",
                                    (seq,)).fetchone()
        return float(found[0])

    def left_by(self, step: str, rows: list[int]) -> dict[int, int]:
        """row -> how many collected batches of `step` held it (for rows pending again: how many batches left
        it unanswered, expired, cancelled or failed)."""
        query = "SELECT row, COUNT(*) FROM batch_lines WHERE live = 0 AND step = ? AND row IN ({}) GROUP BY row"
        return {int(r[0]): int(r[1]) for r in self.journal._select_in(query, rows, (step,))}

    def live_rows(self, step: str, rows: list[int]) -> set[int]:
        """Which of `rows` a live batch of `step` holds."""
        query = "SELECT row FROM batch_lines WHERE live = 1 AND step = ? AND row IN ({})"
        return {int(r[0]) for r in self.journal._select_in(query, rows, (step,))}

    def run_id(self) -> str:
        """This RUNDIR's id, made once: the provider-side name of its batches carries it (with the batch's
        number), so that a batch whose creation answer was lost is found again by listing."""
        found = self.journal.get_meta("batch_run_id")
        if found is None:
            found = secrets.token_hex(8)
            self.journal.set_meta("batch_run_id", found)
        return found

    def provider_name(self, seq: int) -> str:
        """The provider-side name of batch `seq`: this RUNDIR's id and the batch's number, unique to it."""
        return f"pixelmill-{self.run_id()}-{seq:05d}"

    def next_seq(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM batches").fetchone()[0])


def read_batches(journal: Journal) -> list[BatchEntry]:
    """Every batch of a journal, for reports: reads only (a journal without the table has none)."""
    found = journal.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'batches'").fetchone()
    if found is None:
        return []
    task = "task" if "task" in _columns(journal) else "NULL"
    rows = journal.db.execute("SELECT seq, step, provider, state, file_id, batch_id, lines, created, info, "
                              f"{task} FROM batches ORDER BY seq")
    return [BatchEntry(int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], r[5], int(r[6]), float(r[7]),
                       orjson.loads(r[8]), r[9]) for r in rows]


def _columns(journal: Journal) -> set[str]:
    return {str(r[1]) for r in journal.db.execute("PRAGMA table_info(batches)")}
