"""The journal: one SQLite file (WAL) per run directory, the single source of truth for what was done.

Tables:
- `meta`: the run's configuration fingerprint (whole, and per step: `step_fingerprints`, writing/fingerprints.py)
  and snapshot, its source, and spend set aside.
- `records`: one entry per source row ever seen, found by the row's identity (its `--id-field` value, else its
  content), never by its position: `row` is the entry's number (the results' key), `key` the stem of its image
  files (unique, assigned once), `digest` its content when last seen, `position` where it stood in the source at
  the last read that reached it (NULL: not in the source any more), `claimed` the number of that read.
- `results`: one row per (step, entry): status, outputs (image paths), attempts, calls done, cost, the most
  that its calls of unknown outcome may have cost (`unanswered`, also in the metadata as
  `unanswered: {calls, cost_usd_max}`), and the row's `pixelmill` metadata as JSON.
- `intents`: one row per (step, entry) whose call is in flight: the amount it reserved of the budget. Written
  before the call is sent, deleted in the transaction that records its outcome (`save`), so that a call whose
  answer a kill lost is still charged: the next run charges what is left at its reservation (`adopt_intents`),
  and notes on the row when it was sent (`lost_submits`: a remote job's submit can then be looked for by
  listing the provider's jobs, engine/jobs.py).
- remote jobs (submit-and-poll providers): a job submitted and not yet collected is journaled on its row's step
  (`pixelmill.job`: the provider's handle, the call number and the amount it reserved) by the save that also
  resolves the submit's intent; `results.live` holds that reservation, so a live job counts in the spend until
  its outcome is recorded, across runs (`live_jobs` lists them: a re-run polls them, `pixelmill cancel`
  cancels them).

Each run reads the source afresh (`begin_read`) and claims an entry for every row it reads (`claim`; the run's
output pass places the rest when a run stopped early and forgets the positions of rows no longer in the source:
`settle_lookup`). Reports find rows the same way (`begin_lookup`, `match`) without writing anything. A read cut
short by a kill leaves the positions of the rows it did not reach as they were. A row keeps its results wherever
it moved; identical rows without an id are told apart by order (the first takes the first entry); an inserted row
gets a new entry; a deleted row's entry stays (its spend still counts) but is no longer in the output; a row whose
id stayed but whose content changed has its results set aside and is sent again.
Journals of the first layout (rows keyed by position) are adopted row by row when content and position agree.

A RUNDIR is bound to one configuration (`bind`), judged per step (writing/fingerprints.py): a step whose
fingerprint changed has its results discarded when nothing of it was paid for, or when `--restart-step` names it
or a step it reads (their image files are listed for the runner to remove; their cost stays in the spend), and
is refused otherwise, the refusal naming the narrowest way on; `--restart` clears the whole run.

Commits happen per finished call, after the images are on disk: a kill loses at most the calls in flight, and
their intents keep their cost in the spend. `spent` = results' cost + unanswered + live jobs' reservations + live
batch lines' reservations (writing/batches.py) + spend set aside + intents.
A write that fails for the disk's sake (full, quota, read-only, I/O error) raises `DiskFull`, the transaction
rolled back, so that the run can stop sending and record what it has once space is freed (writing/store.py keeps
a reserve for that).
WAL with synchronous=NORMAL survives a killed process (the OS keeps the log); it is the power-loss case that
it trades away, for speed.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pixelmill.errors import ConfigError, DiskFull
from pixelmill.reading import jsonio
from pixelmill.reading.records import Record, default_key, sanitize_key
from pixelmill.writing import fingerprints as fp

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
    live REAL NOT NULL DEFAULT 0,
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
                "unanswered", "live"),
    "intents": ("step", "row", "reserved", "sent"),
}
UNANSWERED = "unanswered"  # a row's `pixelmill` field: {calls, cost_usd_max}
JOB = "job"  # a row's `pixelmill` field while its remote job is live: {id, urls, submitted, data, call, reserved}
LOST_SUBMITS = "lost_submits"  # a row's `pixelmill` field: [{sent, reserved, call}] of calls a kill left unanswered


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


@dataclass(slots=True)
class Rebinding:
    """What binding a configuration to a RUNDIR changed (`Journal.bind`)."""

    restart: bool = False  # --restart: the whole run was discarded (`paid` says what it held)
    changes: str = ""  # what changed, as `steps.s.prompt: 'a' -> 'b'`; "" when nothing did
    steps: list[str] = field(default_factory=list)  # the steps whose results were discarded, in step order
    paid: dict[str, tuple[int, float]] = field(default_factory=dict)  # step -> (paid rows discarded, their cost)
    cleared: list[str] = field(default_factory=list)  # discarded steps that held nothing paid
    kept: dict[str, int] = field(default_factory=dict)  # step -> done rows kept
    dropped: dict[str, int] = field(default_factory=dict)  # steps no longer configured -> their paid rows
    files: list[str] = field(default_factory=list)  # image files (relative to RUNDIR) of the discarded results
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)  # what the journal keeps

    def lines(self) -> list[str]:
        """What a user is told of it (nothing when nothing was discarded)."""
        rows, cost = _total(self.paid.values())
        if self.restart:
            return [f"--restart: discarded the earlier run: {_paid_rows(self.paid)} are made and paid again"] \
                if rows else []
        out = []
        if self.paid:
            kept = "; kept: " + ", ".join(f"{n}'s {k} done rows" for n, k in self.kept.items()) if self.kept else ""
            out.append(f"--restart-step: discarded {rows} paid rows of {', '.join(self.paid)} (${cost:.4f}, still "
                       f"counted in this folder's spend) and removed their images: they are made again{kept}")
        if self.cleared and self.changes:
            out.append(f"the configuration changed ({self.changes}); nothing of {', '.join(self.cleared)} had been "
                       "paid for: it runs with the new one")
        elif self.cleared:
            out.append(f"--restart-step: nothing of {', '.join(self.cleared)} had been paid for: it is made again")
        if self.dropped:
            steps = ", ".join(f"{n} ({k} paid rows)" for n, k in self.dropped.items())
            out.append(f"no longer in the configuration: {steps}; the journal keeps their results (and their spend), "
                       "the output leaves them out")
        return out


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
            self._add_column("unanswered")
            self._add_column("live")
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

    def _add_column(self, name: str) -> None:
        """Journals written before calls of unknown outcome were charged have no `unanswered` column; before
        remote jobs, no `live` column."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(results)")}
        if columns and name not in columns:
            self.db.execute(f"ALTER TABLE results ADD COLUMN {name} REAL NOT NULL DEFAULT 0")

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

    def bind(self, fingerprint: dict[str, Any], snapshot: dict[str, Any], *, restart: bool,
             restart_steps: Iterable[str] = ()) -> Rebinding:
        """Tie this RUNDIR to one configuration (`RunConfig.fingerprint()` and `snapshot()`). What changed is
        judged per step (writing/fingerprints.py): steps whose results the change invalidates are discarded when
        nothing of them was paid, or when `restart_steps` names them (or a step they read); else the binding is
        refused with the narrowest way on. `restart` clears the whole run. Returns what was discarded."""
        plan = self.plan_binding(fingerprint, snapshot, restart=restart, restart_steps=restart_steps)
        if plan.restart:
            self.clear()
        elif plan.steps:
            self._discard(plan.steps)
        self.set_meta("schema", SCHEMA_VERSION)
        source = _source_of(snapshot)
        if source is not None:
            self.set_meta("source", source)
        self.set_meta("fingerprint", fp.canonical(fingerprint))
        self.set_meta("step_fingerprints", fp.canonical(plan.fingerprints))
        self.set_meta("config", orjson.dumps(snapshot, option=orjson.OPT_SORT_KEYS).decode())
        return plan

    def plan_binding(self, fingerprint: dict[str, Any], snapshot: dict[str, Any], *, restart: bool,
                     restart_steps: Iterable[str] = ()) -> Rebinding:
        """What `bind` would do, without writing anything (`estimate` asks too); a `ConfigError` when it would
        refuse."""
        if not restart:
            self._check_source(_source_of(snapshot))
        mine = fp.from_whole(fingerprint, _step_order(snapshot))
        paid = self._paid()
        if restart:
            return Rebinding(restart=True, paid=paid, fingerprints=mine)
        theirs_whole = self._stored_whole()
        if theirs_whole is None:  # a new RUNDIR (or one cleared): nothing to keep or discard
            return Rebinding(fingerprints=mine)
        theirs = self._stored_steps(theirs_whole)
        present = {str(s) for (s,) in self.db.execute("SELECT step FROM results UNION SELECT step FROM intents")}
        identity_changed = theirs_whole.get("id_field") != fingerprint.get("id_field")
        if identity_changed:  # every row has another identity: no step keeps its rows
            changed = [n for n in mine if n in present or n in theirs]
            changes = _diff(theirs_whole.get("id_field"), fingerprint.get("id_field"), "id_field")
        else:
            changed = [n for n in mine if (n in theirs and not fp.same(theirs[n], mine[n]))
                       or (n not in theirs and n in present)]
            changes = "; ".join(_step_diff(n, theirs.get(n), mine[n]) for n in fp.roots(mine, changed))
        asked = fp.readers(mine, restart_steps)
        invalid = fp.readers(mine, [*changed, *asked])
        blocked = [n for n in invalid if n in paid and n not in asked]
        if blocked:
            raise self._refusal(changes, mine, changed, blocked, paid,
                                narrow=bool(snapshot.get("pipeline")) and not identity_changed)
        dropped = [n for n in _step_order(self._stored_snapshot()) if n not in mine and n in paid]
        for new in (n for n in mine if n not in theirs and n not in present and n not in asked):
            for old in dropped:  # a renamed step: results are kept by step name, so all its rows would be paid again
                if fp.same(theirs.get(old, {}).get("config"), mine[new]["config"]):
                    raise ConfigError(
                        f"{self.path.parent.parent}: step {new!r} is new, and step {old!r}, made with the same "
                        f"settings ({paid[old][0]} paid rows), is no longer in the configuration: renaming a step "
                        f"makes all its rows again. Keep the name {old!r}, or --restart-step {new} to make them "
                        "again under the new name."
                    )
        done = self._done_counts()
        return Rebinding(
            dropped={n: paid[n][0] for n in dropped},
            changes=changes if changed else "",
            steps=[n for n in invalid if n in present],
            paid={n: paid[n] for n in invalid if n in paid},
            cleared=[n for n in invalid if n in present and n not in paid],
            kept={n: done[n] for n in mine if n not in invalid and done.get(n)},
            files=self._files_of([n for n in invalid if n in present]),
            fingerprints={**theirs, **mine},  # a step dropped from the configuration keeps its own
        )

    def _stored_whole(self) -> dict[str, Any] | None:
        raw = self.get_meta("fingerprint")
        value = orjson.loads(raw) if raw is not None else None
        return value if isinstance(value, dict) else None

    def _stored_steps(self, whole: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The step fingerprints this RUNDIR was made with; a journal that kept only the whole configuration's
        fingerprint (the first layout) has them derived from it, its steps in the order of its snapshot."""
        raw = self.get_meta("step_fingerprints")
        if raw is not None:
            stored = orjson.loads(raw)
            if isinstance(stored, dict):
                return stored
        return fp.from_whole(whole, _step_order(self._stored_snapshot()))

    def _stored_snapshot(self) -> dict[str, Any]:
        try:
            snapshot = orjson.loads(self.get_meta("config") or "{}")
        except orjson.JSONDecodeError:
            return {}
        return snapshot if isinstance(snapshot, dict) else {}

    def _paid(self) -> dict[str, tuple[int, float]]:
        """Per step, the rows whose results hold paid work (done, or charged: calls billed or that may have
        been), with what they cost; calls still in flight when a run was killed (intents) count too."""
        out: dict[str, tuple[int, float]] = {}
        query = ("SELECT step, COUNT(*), SUM(cost + unanswered) FROM results WHERE status = 'done' OR "
                 "cost + unanswered > 0 GROUP BY step UNION ALL SELECT step, COUNT(*), SUM(reserved) FROM intents "
                 "GROUP BY step")
        for step, rows, cost in self.db.execute(query):
            before = out.get(step, (0, 0.0))
            out[step] = (before[0] + int(rows), before[1] + float(cost or 0.0))
        return out

    def _done_counts(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in self.db.execute(
            "SELECT step, COUNT(*) FROM results WHERE status = 'done' GROUP BY step")}

    def _files_of(self, steps: list[str]) -> list[str]:
        """The image files (relative to RUNDIR) that the results of `steps` wrote: outputs, every turn's."""
        files: set[str] = set()
        for outputs, info in self._select_in("SELECT outputs, info FROM results WHERE step IN ({})", steps):
            files.update(p for p in orjson.loads(outputs) if isinstance(p, str))
            meta = orjson.loads(info)
            if isinstance(meta.get("sizes"), dict):
                files.update(str(p) for p in meta["sizes"])
            for turn in meta.get("turns") or []:
                if isinstance(turn, dict):
                    files.update(p for p in turn.get("images") or [] if isinstance(p, str))
        return sorted(files)

    def _discard(self, steps: list[str]) -> None:
        """Delete the results of `steps` (they are made again), and the failures they caused in later steps;
        what they cost stays in the RUNDIR's spend."""
        with self._disk():
            self.db.execute("BEGIN")
            try:
                cost = 0.0
                for (part,) in self._select_in("SELECT SUM(cost + unanswered) FROM results WHERE step IN ({})",
                                               steps):
                    cost += float(part or 0.0)
                if cost:
                    before = float(self.get_meta("spent_set_aside") or 0.0)
                    self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('spent_set_aside', ?)",
                                    (repr(before + cost),))
                self._select_in("DELETE FROM results WHERE step IN ({})", steps)  # in chunks, like any IN
                # A row stops at its first failed step and marks the later ones failed "upstream" (engine/row.py),
                # which costs nothing: those are made again once the step before them is.
                self.db.execute("DELETE FROM results WHERE status = 'failed' AND cost + unanswered = 0 AND "
                                "json_extract(info, '$.error.kind') = 'upstream'")
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def _refusal(self, changes: str, mine: dict[str, dict[str, Any]], changed: list[str], blocked: list[str],
                 paid: dict[str, tuple[int, float]], *, narrow: bool) -> ConfigError:
        """The refusal of a configuration that would discard paid work, with the narrowest way on: the steps
        to redo (a pipeline), else --restart, which says what it discards."""
        rundir = self.path.parent.parent
        everything = f"--restart to discard all {_paid_rows(paid)} and start over"
        if not narrow:
            return ConfigError(f"{rundir} holds a run of another configuration ({changes}). Use another --output "
                               f"folder, or {everything}.")
        names = [n for n in fp.roots(mine, changed) if set(fp.readers(mine, [n])) & set(blocked)]
        redo = fp.readers(mine, names)
        redo_rows, redo_cost = _total(paid[n] for n in redo if n in paid)
        done = self._done_counts()
        kept = [f"{n}'s {done[n]} done rows" for n in mine if n not in redo and done.get(n)]
        flags = " ".join(f"--restart-step {n}" for n in names)
        steps = ", ".join(n for n in redo if n in paid)
        keeps = f"; keeps {', '.join(kept)}" if kept else ""
        return ConfigError(
            f"{rundir} holds a run of another configuration ({changes}). To redo only what changed: {flags} "
            f"(discards the {redo_rows} paid rows of {steps}, ${redo_cost:.4f}{keeps}). Or {everything}, or use "
            "another --output folder."
        )

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

    def begin_lookup(self) -> None:
        """A new pass of `match` over the source (an output, a report): no entry is matched yet."""
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS matched (row INTEGER PRIMARY KEY, position INTEGER)")
        self.db.execute("DELETE FROM temp.matched")

    def match(self, rows: list[RowIdentity]) -> dict[int, int]:
        """position -> entry for the rows that have an entry with their identity and content: the output's and
        the reports' look-up, made after `begin_lookup`, in source order. It reads the journal only (what it has
        matched in this pass lives in a TEMP table, outside the journal's file), so a source edited since the
        last run (rows moved, removed, added) still finds every result by its row's identity, never by where the
        row stood when the run read it. Identical rows (same identity and content) take their entries in order."""
        found: dict[int, int] = {}
        db = self.db
        for row in rows:
            hit = db.execute(
                "SELECT row, digest FROM records WHERE identity = ? AND row NOT IN (SELECT row FROM temp.matched) "
                "ORDER BY (digest = ?) DESC, (position = ?) DESC, row LIMIT 1",
                (row.identity, row.digest, row.position)).fetchone()
            if hit is None:  # a journal of the first layout: the entry at this position, if its content agrees
                hit = db.execute("SELECT row, digest FROM records WHERE identity IS NULL AND position = ? AND "
                                 "digest = ?", (row.position, row.digest)).fetchone()
            if hit is None or hit[1] != row.digest:  # unknown, or its id now holds other content: not its results
                continue
            db.execute("INSERT INTO temp.matched (row, position) VALUES (?, ?)", (hit[0], row.position))
            found[row.position] = int(hit[0])
        return found

    def settle_lookup(self) -> None:
        """The run's own output pass read the whole source: each entry it matched stands where its row stands
        now (claimed in this read), and entries it did not match are no longer in the source (what `end_read`
        does for a run's read, here for the rows a run stopped early never reached). Only the run that holds
        RUNDIR calls this: reports never write the journal."""
        db = self.db
        read = self._current_read()
        with self._disk():
            db.execute("BEGIN")
            try:
                db.execute("UPDATE records SET position = NULL WHERE position IS NOT NULL AND identity IS NOT NULL "
                           "AND row NOT IN (SELECT row FROM temp.matched)")
                db.execute("UPDATE records SET position = (SELECT m.position FROM temp.matched m WHERE m.row = "
                           "records.row), claimed = ? WHERE row IN (SELECT row FROM temp.matched)", (read,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

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
        cost = self.db.execute("SELECT COALESCE(SUM(cost + unanswered + live), 0) FROM results WHERE row = ?",
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
        job = state.info.get(JOB)
        live = float(job.get("reserved", 0.0)) if isinstance(job, dict) else 0.0
        self.db.execute(
            "INSERT OR REPLACE INTO results (step, row, status, attempts, calls_done, outputs, cost, info, updated,"
            " unanswered, live) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                live,
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
        rows (`unanswered`), in one transaction; each is noted on its row with the time it was sent
        (`lost_submits`), so that a remote job's submit can be looked for later. Returns how many there were."""
        db = self.db
        left = db.execute("SELECT step, row, reserved, sent FROM intents").fetchall()
        if not left:
            return 0
        db.execute("BEGIN")
        try:
            for step, row, reserved, sent in left:
                state = self.states(step, [row]).get(row) or StepState()
                add_unanswered(state.info, 1, float(reserved))
                state.info.setdefault(LOST_SUBMITS, []).append(
                    {"sent": float(sent), "reserved": float(reserved), "call": state.calls_done})
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
        of rows since changed or deleted included, calls that may have been billed without an answer at
        their reservation (those recorded on rows, and intents not yet resolved), and remote jobs and batch lines
        submitted and not yet collected, at their reservation."""
        results = float(self.db.execute(
            "SELECT COALESCE(SUM(cost + unanswered + live), 0) FROM results").fetchone()[0])
        intents = float(self.db.execute("SELECT COALESCE(SUM(reserved), 0) FROM intents").fetchone()[0])
        return results + intents + self.batch_reserved() + float(self.get_meta("spent_set_aside") or 0.0)

    def batch_reserved(self) -> float:
        """What the lines of batches not yet collected reserved (`--batch --max-cost`: writing/batches.py keeps
        them): part of `spent` until their batch is collected and its bills are in the results."""
        try:
            found = self.db.execute("SELECT COALESCE(SUM(reserved), 0) FROM batch_lines WHERE live = 1").fetchone()
        except sqlite3.OperationalError:  # no batch was ever built here (or only before lines had reservations)
            return 0.0
        return float(found[0])

    def live(self) -> float:
        """The reservations of the remote jobs submitted and not yet collected (part of `spent`)."""
        return float(self.db.execute("SELECT COALESCE(SUM(live), 0) FROM results").fetchone()[0])

    def live_jobs(self, step: str | None = None) -> list[tuple[str, int, StepState]]:
        """(step, entry, state) of every row-step whose remote job is live (submitted, not yet collected)."""
        query = "SELECT step, row, status, attempts, calls_done, outputs, cost, info FROM results WHERE " \
                "info LIKE '%\"job\":%'" + (" AND step = ?" if step is not None else "") + " ORDER BY step, row"
        out = []
        for name, row, status, attempts, calls, outputs, cost, info in self.db.execute(
                query, (step,) if step is not None else ()):
            state = StepState(status, attempts, calls, orjson.loads(outputs), cost, orjson.loads(info))
            if isinstance(state.info.get(JOB), dict):
                out.append((str(name), int(row), state))
        return out

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

    def _select_in(self, query: str, values: Sequence[Any], prefix: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
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


def _step_order(snapshot: dict[str, Any]) -> list[str]:
    steps = snapshot.get("steps")
    return [str(s["name"]) for s in steps if isinstance(s, dict) and "name" in s] if isinstance(steps, list) else []


def _step_diff(name: str, old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """What changed in one step: its own configuration, else the steps whose outputs it reads."""
    if old is None:
        return f"steps.{name}: new"
    if not fp.same(old.get("config"), new["config"]):
        return _diff(old.get("config"), new["config"], f"steps.{name}")
    return f"steps.{name} reads: {sorted(old.get('reads') or {})} -> {sorted(new['reads'])}"


def _paid_rows(paid: dict[str, tuple[int, float]]) -> str:
    """`9 paid rows of 3 steps ($0.4543)`: what --restart discards."""
    rows, cost = _total(paid.values())
    steps = f" of {len(paid)} steps" if len(paid) > 1 else ""
    return f"{rows} paid rows{steps} (${cost:.4f})"


def _total(items: Iterable[tuple[int, float]]) -> tuple[int, float]:
    rows, cost = 0, 0.0
    for n, c in items:
        rows, cost = rows + n, cost + c
    return rows, cost


def _diff(old: Any, new: Any, path: str = "") -> str:
    """What changed between two fingerprints, as `steps.generate.params.quality: 'low' -> 'high'`."""
    if isinstance(old, dict) and isinstance(new, dict):
        parts = [_diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
                 for k in sorted(set(old) | set(new), key=str) if old.get(k) != new.get(k)]
        return "; ".join(p for p in parts if p) or "changed"
    return f"{path or 'configuration'}: {old!r} -> {new!r}"
