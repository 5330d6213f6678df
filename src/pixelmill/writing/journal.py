"""The journal: one SQLite file (WAL) per run directory, the single source of truth for what was done.

Tables:
- `meta`: the run's configuration fingerprint and snapshot, its source, and spend set aside.
- `records`: one entry per source row ever seen, found by the row's identity (its `--id-field` value, else its
  content), never by its position: `row` is the entry's number (the results' key), `key` the stem of its image
  files (unique, assigned once), `digest` its content when last seen, `position` where it stood in the source at
  the last read that reached it (NULL: not in the source any more), `claimed` the number of that read.
- `results`: one row per (step, entry): status, outputs (image paths), attempts, calls done, cost, the most
  that its calls of unknown outcome may have cost (`unanswered`, also in the metadata as
  `unanswered: {calls, cost_usd_max}`), and the row's `pixelmill` metadata as JSON.
- `intents`: one row per (step, entry) whose call is in flight: the amount it reserved of the budget. Written
  before the call is sent, deleted in the transaction that records its outcome (`save`), so that a call whose
  answer a kill lost is still charged: the next run charges what is left at its reservation (`adopt_intents`).

Each run reads the source afresh (`begin_read`) and claims an entry for every row it reads (`claim`; the output
writer claims the rest when a run stopped early, then `end_read` forgets the positions of rows no longer in the
source). A read cut short by a kill leaves the positions of the rows it did not reach as they were. A row keeps
its results wherever it moved; identical rows without an id are told apart by order (the first takes the first
entry); an inserted row gets a new entry; a deleted row's entry stays (its spend still counts) but is no longer
in the output; a row whose id stayed but whose content changed has its results set aside and is sent again.
Journals of the first layout (rows keyed by position) are adopted row by row when content and position agree.

Commits happen per finished call, after the images are on disk: a kill loses at most the calls in flight, and
their intents keep their cost in the spend. `spent` = results' cost + unanswered + spend set aside + intents.
A write that fails for the disk's sake (full, quota, read-only, I/O error) raises `DiskFull`, the transaction
rolled back, so that the run can stop sending and record what it has once space is freed (writing/store.py keeps
a reserve for that).
WAL with synchronous=NORMAL survives a killed process (the OS keeps the log); it is the power-loss case that
it trades away, for speed.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pixelmill.errors import ConfigError, DiskFull
from pixelmill.reading import jsonio
from pixelmill.reading.records import Record, default_key, sanitize_key

SCHEMA_VERSION = "2"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (row INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, digest TEXT NOT NULL,
                                    identity TEXT, position INTEGER, claimed INTEGER);
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
    unanswered REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (step, row)
);
CREATE INDEX IF NOT EXISTS results_status ON results (step, status);
CREATE TABLE IF NOT EXISTS intents (step TEXT NOT NULL, row INTEGER NOT NULL, reserved REAL NOT NULL,
                                    sent REAL NOT NULL, PRIMARY KEY (step, row));
"""
# SQLite's primary result codes that mean the disk, not the journal, is at fault.
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL = 8, 10, 13

_INDEXES = """
CREATE INDEX IF NOT EXISTS records_identity ON records (identity);
CREATE INDEX IF NOT EXISTS records_position ON records (position);
"""
# What the journal reads: a table without these columns is another program's, or an older layout.
_COLUMNS = {
    "meta": ("key", "value"),
    "records": ("row", "key", "digest", "identity", "position", "claimed"),
    "results": ("step", "row", "status", "attempts", "calls_done", "outputs", "cost", "info", "updated",
                "unanswered"),
    "intents": ("step", "row", "reserved", "sent"),
}
UNANSWERED = "unanswered"  # a row's `pixelmill` field: {calls, cost_usd_max}


@dataclass(frozen=True, slots=True)
class RowIdentity:
    """What the journal needs of a source row to find its entry."""

    position: int  # where the row stands in the source now (0-based)
    key: str  # the file key it would like (its sanitised id, else row<position>)
    digest: str  # its content
    identity: str  # its id when it has one, else its content

    @classmethod
    def of(cls, record: Record, id_field: str | None) -> RowIdentity:
        """A row's identity is its `id_field` value when it has one (not missing, null or blank), else its
        content; the key its files would like is its sanitised id, else `row<index>`."""
        value = record.data.get(id_field) if id_field and record.data is not None else None
        if value is not None and str(value).strip():
            identity = "id:" + jsonio.dumps(value).decode("utf-8", "replace")
            return cls(record.index, sanitize_key(value), record.digest(), identity)
        return cls(record.index, default_key(record.index), record.digest(), "content:" + record.digest())


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one source row's results live: the entry number results are saved under, and its file key."""

    slot: int
    key: str


@dataclass(frozen=True, slots=True)
class Place:
    """A row's identity (`id:...`, `content:...`), the file key of its entry, and the time its results last
    changed (key and time None when the journal has no entry for it)."""

    identity: str
    key: str | None = None
    updated: float | None = None


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
        self._read: int | None = None  # the number of the current read of the source (begin_read)
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
            self._adopt_first_layout()
            self._add_unanswered_column()
            self.db.executescript(_INDEXES)
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

    def _adopt_first_layout(self) -> None:
        """A journal of the first layout keyed results by position: its entries get no identity (NULL) and their
        old position, and `claim` adopts each one for the row that stands there with the same content."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(records)")}
        if "claimed" in columns or not columns:
            return
        self.db.execute("BEGIN")
        self.db.execute("ALTER TABLE records ADD COLUMN identity TEXT")
        self.db.execute("ALTER TABLE records ADD COLUMN position INTEGER")
        self.db.execute("ALTER TABLE records ADD COLUMN claimed INTEGER")
        self.db.execute("UPDATE records SET position = row")
        self.db.execute("COMMIT")

    def _add_unanswered_column(self) -> None:
        """Journals written before calls of unknown outcome were charged have no `unanswered` column."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(results)")}
        if columns and "unanswered" not in columns:
            self.db.execute("ALTER TABLE results ADD COLUMN unanswered REAL NOT NULL DEFAULT 0")

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
        with self._disk():
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @contextmanager
    def _disk(self) -> Iterator[None]:
        """Turn SQLite's "database or disk is full" (and read-only or I/O errors) into `DiskFull`; an open
        transaction is rolled back first (SQLite may have done it already)."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code not in (_SQLITE_FULL, _SQLITE_IOERR, _SQLITE_READONLY):
                raise
            if self.db.in_transaction:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the transaction is gone either way
            what = "disk full (no space left on device)" if code == _SQLITE_FULL else f"cannot write ({exc})"
            advice = "free space" if code == _SQLITE_FULL else "make the disk writable"
            raise DiskFull(f"{what} writing the journal {self.path}: {advice} and run the same command again") \
                from None

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
        self.db.execute("DELETE FROM intents")
        self.db.execute("DELETE FROM records")
        self.db.execute("DELETE FROM meta")
        self.db.execute("COMMIT")

    # ------------------------------------------------------------ entries: rows found by identity
    def begin_read(self) -> None:
        """A new read of the source: every entry waits to be claimed again by the row that is its own."""
        self._read = int(self.get_meta("read") or 0) + 1
        self.set_meta("read", str(self._read))

    def end_read(self) -> None:
        """The read reached the end of the source: entries it did not claim are no longer in it."""
        with self._disk():
            self._end_read()

    def _end_read(self) -> None:
        self.db.execute("UPDATE records SET position = NULL WHERE position IS NOT NULL AND identity IS NOT NULL "
                        "AND (claimed IS NULL OR claimed < ?)", (self._current_read(),))

    def _current_read(self) -> int:
        if self._read is None:
            self._read = int(self.get_meta("read") or 0)
        return self._read

    def claim(self, rows: list[RowIdentity]) -> tuple[dict[int, Entry], list[int]]:
        """The entries of a batch of source rows, by identity; new rows get a new entry and its file key (the
        wanted key, or `<key>-<position>` when another entry has it: two rows never share a file). A row whose id
        was seen with other content has that entry's results set aside (their spend still counts) and is listed
        in the second value. Claiming the same position again in one read gives the same entry."""
        entries: dict[int, Entry] = {}
        changed: list[int] = []
        with self._disk():
            self.db.execute("BEGIN")
            try:
                for row in rows:
                    entry, was_changed = self._claim_one(row, create=True)
                    assert entry is not None
                    entries[row.position] = entry
                    if was_changed:
                        changed.append(row.position)
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        return entries, changed

    def match(self, rows: list[RowIdentity]) -> dict[int, int]:
        """position -> entry for the rows that have an entry with their content (the output's look-up): claims
        what the run did not read (it stopped early), never creates an entry nor sets results aside."""
        found: dict[int, int] = {}
        with self._disk():
            self.db.execute("BEGIN")
            try:
                for row in rows:
                    entry, _ = self._claim_one(row, create=False)
                    if entry is not None:
                        found[row.position] = entry.slot
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        return found

    def _claim_one(self, row: RowIdentity, *, create: bool) -> tuple[Entry | None, bool]:
        db = self.db
        read = self._current_read()
        here = db.execute("SELECT row, key, digest, identity FROM records WHERE position = ? AND claimed = ?",
                          (row.position, read)).fetchone()
        if here is not None and here[3] == row.identity:  # claimed already in this read
            if here[2] == row.digest:
                return Entry(here[0], here[1]), False
            if not create:
                return None, False
            self._set_aside(here[0], row.digest)
            return Entry(here[0], here[1]), True
        free = db.execute("SELECT row, key, digest FROM records WHERE identity = ? AND (claimed IS NULL OR "
                          "claimed < ?) ORDER BY (digest = ?) DESC, row LIMIT 1",
                          (row.identity, read, row.digest)).fetchone()
        if free is None:  # a journal of the first layout: the entry at this position, if its content agrees
            free = db.execute("SELECT row, key, digest FROM records WHERE identity IS NULL AND position = ? AND "
                              "digest = ?", (row.position, row.digest)).fetchone()
        if free is not None:
            slot, key, digest = free
            if digest != row.digest:
                if not create:
                    return None, False
                self._set_aside(slot, row.digest)
            self._place(slot, row, read)
            return Entry(slot, key), digest != row.digest
        if not create:
            return None, False
        key = row.key
        attempt = 1
        while db.execute("SELECT 1 FROM records WHERE key = ?", (key,)).fetchone():
            # `<key>-<position>` may itself be another row's id: count on until the name is free.
            key = f"{row.key}-{row.position}" if attempt == 1 else f"{row.key}-{row.position}-{attempt}"
            attempt += 1
        cursor = db.execute("INSERT INTO records (key, digest, identity) VALUES (?, ?, ?)",
                            (key, row.digest, row.identity))
        slot = int(cursor.lastrowid or 0)
        self._place(slot, row, read)
        return Entry(slot, key), False

    def _place(self, slot: int, row: RowIdentity, read: int) -> None:
        """The entry is the row's at its position now; whichever entry stood there before is not."""
        self.db.execute("UPDATE records SET position = NULL WHERE position = ? AND row != ?", (row.position, slot))
        self.db.execute("UPDATE records SET identity = ?, position = ?, claimed = ? WHERE row = ?",
                        (row.identity, row.position, read, slot))

    def _set_aside(self, slot: int, digest: str) -> None:
        """The entry's results no longer belong to its row (same id, other content): keep what they cost."""
        cost = self.db.execute("SELECT COALESCE(SUM(cost + unanswered), 0) FROM results WHERE row = ?",
                               (slot,)).fetchone()[0]
        if cost:
            before = float(self.get_meta("spent_set_aside") or 0.0)
            self.set_meta("spent_set_aside", repr(before + float(cost)))
        self.db.execute("DELETE FROM results WHERE row = ?", (slot,))
        self.db.execute("UPDATE records SET digest = ? WHERE row = ?", (digest, slot))

    def slots_at(self, positions: list[int]) -> dict[int, int]:
        """position -> entry, as the last read claimed them (read only)."""
        return {int(p): int(s) for p, s in self._select_in(
            "SELECT position, row FROM records WHERE position IN ({})", positions)}

    # ------------------------------------------------------------ results
    def states(self, step: str, rows: list[int]) -> dict[int, StepState]:
        out: dict[int, StepState] = {}
        query = ("SELECT row, status, attempts, calls_done, outputs, cost, info FROM results "
                 "WHERE step = ? AND row IN ({})")
        for row, status, attempts, calls, outputs, cost, info in self._select_in(query, rows, (step,)):
            out[row] = StepState(status, attempts, calls, orjson.loads(outputs), cost, orjson.loads(info))
        return out

    def save(self, step: str, row: int, state: StepState) -> None:
        """Record a row's step, and resolve the intent of its call in flight in the same transaction: the
        saved state holds that call's outcome (its answer, its failure, its charge when unknown)."""
        db = self.db
        with self._disk():
            db.execute("BEGIN")
            try:
                self._write(step, row, state)
                db.execute("DELETE FROM intents WHERE step = ? AND row = ?", (step, row))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _write(self, step: str, row: int, state: StepState) -> None:
        unanswered = state.info.get(UNANSWERED)
        charged = float(unanswered.get("cost_usd_max", 0.0)) if isinstance(unanswered, dict) else 0.0
        self.db.execute(
            "INSERT OR REPLACE INTO results (step, row, status, attempts, calls_done, outputs, cost, info, updated,"
            " unanswered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                charged,
            ),
        )

    # ------------------------------------------------------------ calls in flight
    def intend(self, step: str, row: int, reserved: float) -> None:
        """A call of (step, row) is about to be sent, holding `reserved` of the budget (one write)."""
        with self._disk():
            self.db.execute("INSERT OR REPLACE INTO intents (step, row, reserved, sent) VALUES (?, ?, ?, ?)",
                            (step, row, reserved, time.time()))

    def drop_intent(self, step: str, row: int) -> None:
        """The call was answered with an error: nothing was billed."""
        with self._disk():
            self.db.execute("DELETE FROM intents WHERE step = ? AND row = ?", (step, row))

    def adopt_intents(self) -> int:
        """Charge the calls an earlier run sent and never recorded (it was killed) at their reservation, on their
        rows (`unanswered`), in one transaction. Returns how many there were."""
        db = self.db
        left = db.execute("SELECT step, row, reserved FROM intents").fetchall()
        if not left:
            return 0
        db.execute("BEGIN")
        try:
            for step, row, reserved in left:
                state = self.states(step, [row]).get(row) or StepState()
                add_unanswered(state.info, 1, float(reserved))
                self._write(step, row, state)
            db.execute("DELETE FROM intents")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return len(left)

    def unanswered(self) -> tuple[int, float]:
        """(calls, most they cost) of the calls that may have been billed without an answer, intents included."""
        calls, cost = 0, 0.0
        for (info,) in self.db.execute("SELECT info FROM results WHERE unanswered > 0"):
            entry = orjson.loads(info).get(UNANSWERED) or {}
            calls += int(entry.get("calls", 0))
            cost += float(entry.get("cost_usd_max", 0.0))
        n, reserved = self.db.execute("SELECT COUNT(*), COALESCE(SUM(reserved), 0) FROM intents").fetchone()
        return calls + int(n), cost + float(reserved)

    def spent(self) -> float:
        """Everything this RUNDIR has spent, across resumes (what `--max-cost` is measured against), the results
        of rows since changed or deleted included, and calls that may have been billed without an answer at
        their reservation (those recorded on rows, and intents not yet resolved)."""
        results = float(self.db.execute("SELECT COALESCE(SUM(cost + unanswered), 0) FROM results").fetchone()[0])
        intents = float(self.db.execute("SELECT COALESCE(SUM(reserved), 0) FROM intents").fetchone()[0])
        return results + intents + float(self.get_meta("spent_set_aside") or 0.0)

    def places(self, identities: list[str]) -> dict[str, Place]:
        """identity -> its entry's file key and the time its results last changed (None before any), for the
        identities the journal knows (where identical rows share one, the entry that stands first)."""
        out: dict[str, Place] = {}
        query = ("SELECT r.identity, r.key, MAX(s.updated) FROM records r LEFT JOIN results s ON s.row = r.row "
                 "WHERE r.identity IN ({}) GROUP BY r.row ORDER BY r.position IS NULL, r.position DESC")
        for identity, key, updated in self._select_in(query, identities):
            out[identity] = Place(identity, key, None if updated is None else float(updated))
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for step, status, n in self.db.execute("SELECT step, status, COUNT(*) FROM results GROUP BY step, status"):
            out.setdefault(step, {})[status] = n
        return out

    def _select_in(self, query: str, values: list[Any], prefix: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        prefix = tuple(prefix)
        for start in range(0, len(values), 500):
            chunk = values[start : start + 500]
            sql = query.format(",".join("?" * len(chunk)))
            out.extend(self.db.execute(sql, (*prefix, *chunk)).fetchall())
        return out


def add_unanswered(info: dict[str, Any], calls: int, cost: float) -> None:
    """Count `calls` that may have been billed without an answer, at most `cost`, on a row's metadata."""
    entry = info.get(UNANSWERED)
    entry = entry if isinstance(entry, dict) else {}
    info[UNANSWERED] = {"calls": int(entry.get("calls", 0)) + calls,
                        "cost_usd_max": round(float(entry.get("cost_usd_max", 0.0)) + cost, 6)}


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
