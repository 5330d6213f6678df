"""The batch APIs' shared machinery: uploaded and generated files kept on disk, batches on an accelerated clock,
and the counters a client's drills read (batches created, lines billed per key, files uploaded).

Files live in one temporary directory (created on the first file, removed when the store is dropped), never in
memory, so a 20,000-line batch costs its lines' byte offsets and keys, not its bytes. A batch is advanced lazily:
whoever reads it (`advance(now)`, run in a worker thread by the routes) answers the lines that are due by now,
appending them to the output files. Each API's route module supplies the two things that differ: how a line is
answered (`LineAnswerer`, through the same validation and answer builders as the synchronous routes) and how
the input file is checked (`FileChecker`); the wire shapes of files and batches stay in the route modules.

The clock, for a batch with latency L (`batch_latency`, ten times that for the `slow` fate) and window W (the
API's completion window, `batch_window` standing for 24 h):

    created ─ 0.1 L validating ─▶ in progress: lines answered evenly over 0.8 L ─▶ finalizing 0.1 L ─▶ completed
    validating ─(the checker found errors, or the `fail` fate)─▶ failed        (no line answered)
    not done at created + W ─▶ expired     (lines answered by then are kept and billed, the rest are left over)
    cancel ─▶ cancelling (the API's delay) ─▶ cancelled   (lines answered before the cancel are kept)

Lines are answered in a seeded random order (`shuffle`; OpenAI) or in input order (Gemini), so OpenAI's output
files are not in input order and a partial batch holds a random subset. What a route makes of expired and
cancelled leftovers, and whether an expired batch keeps or discards its answers, is the route's
(`Batch.discard_on`): OpenAI keeps them, Gemini discards.
"""

from __future__ import annotations

import array
import contextlib
import math
import random
import shutil
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VALIDATING, IN_PROGRESS, FINALIZING, COMPLETED = "validating", "in_progress", "finalizing", "completed"
FAILED, EXPIRED, CANCELLING, CANCELLED = "failed", "expired", "cancelling", "cancelled"
TERMINAL = frozenset({COMPLETED, FAILED, EXPIRED, CANCELLED})


@dataclass(slots=True)
class LineResult:
    """One answered line: where it goes, whether it succeeded, and what it bills."""

    data: bytes  # the JSONL line, newline included
    ok: bool  # a success line (output file) or an error line (error file; Gemini keeps both in one file)
    billed: str | None = None  # the key billed for it (None: not billed, e.g. a 400)
    usage: dict[str, int] = field(default_factory=dict)  # token counts to add to the batch's usage


LineAnswerer = Callable[[bytes], LineResult]
# (batch) -> (byte offset of every line of its input, the batch-level errors); errors fail the batch. A checker
# may also fill in what it learns (the batch's model).
FileChecker = Callable[["Batch"], tuple["array.array[int]", list[dict[str, Any]]]]


@dataclass(slots=True)
class StoredFile:
    id: str  # `file-…` (OpenAI) or `files/…` (Gemini)
    api: str  # "openai" | "gemini"
    path: Path
    size: int
    created: float  # unix seconds
    filename: str = ""
    purpose: str = ""
    mime: str = "application/jsonl"
    display_name: str | None = None
    expires: float | None = None
    generated: bool = False  # written by a batch (downloadable on Gemini), not uploaded
    sha256: bytes = b""


@dataclass(slots=True)
class Batch:
    id: str
    api: str
    input_file: str
    input_path: Path  # a hard link (or copy) of the input file: deleting the file does not break the batch
    answer: LineAnswerer
    check: FileChecker
    created: float
    latency: float
    window: float
    cancel_delay: float
    fate: str = "normal"
    endpoint: str = ""
    model: str | None = None
    metadata: dict[str, str] | None = None
    display_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # wire fields the route keeps (output_expires_after, …)
    discard_on: frozenset[str] = frozenset()  # end states whose answers are dropped and not billed (Gemini)
    on_end: Callable[[Batch], None] | None = None  # the route's publishing of output files, under the lock
    shuffled: bool = True  # answer lines in a random order (OpenAI) or in input order (Gemini)
    one_file: bool = False  # error lines go to the output file too (Gemini)
    status: str = VALIDATING
    times: dict[str, float] = field(default_factory=dict)  # state -> when it was entered
    errors: list[dict[str, Any]] = field(default_factory=list)  # batch-level (validation) errors
    offsets: array.array[int] = field(default_factory=lambda: array.array("q"))
    order: array.array[int] = field(default_factory=lambda: array.array("l"))  # answering order (indices)
    answered: int = 0  # lines of `order` answered so far
    completed: int = 0
    failed: int = 0
    usage: Counter[str] = field(default_factory=Counter)
    billed: list[str] = field(default_factory=list)  # keys billed, committed to the counters when terminal
    output_path: Path | None = None
    error_path: Path | None = None
    output_file: str | None = None  # file ids, set when the batch ends
    error_file: str | None = None
    cancel_requested: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def total(self) -> int:
        return len(self.offsets)

    @property
    def leftovers(self) -> list[int]:
        """Indices of the lines never answered (after an expiry or a cancel)."""
        return list(self.order[self.answered:])


@dataclass(slots=True)
class BatchCounters:
    """What a client's drills check: no row in two live batches, no line billed twice."""

    batches_created: Counter[str] = field(default_factory=Counter)  # api -> batches created
    files_uploaded: Counter[str] = field(default_factory=Counter)  # api -> files uploaded (finalized)
    lines_billed: dict[str, Counter[str]] = field(default_factory=dict)  # api -> key -> times billed
    lines_answered: Counter[str] = field(default_factory=Counter)  # api -> lines answered (billed or not)

    def billed(self, api: str) -> Counter[str]:
        return self.lines_billed.setdefault(api, Counter())

    def billed_twice(self, api: str) -> list[str]:
        """Keys billed more than once, sorted: what a client that never pays twice must keep empty."""
        return sorted(key for key, n in self.billed(api).items() if n > 1)


class BatchStore:
    """Files and batches of both APIs, and the counters. Ids do not collide across APIs (`file-…` vs `files/…`,
    `batch_…` vs `batches/…`)."""

    def __init__(self, seed: int | None = 0) -> None:
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, Batch] = {}
        self.counters = BatchCounters()
        self.fates_used = 0  # how many of the configured `batch_fates` have been handed out
        self.lost_creates = 0  # creates whose answer was cut (`batch_lost_creates`)
        self._rng = random.Random(seed)
        self._dir: Path | None = None
        self._seq = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------ disk

    def new_path(self, suffix: str = ".jsonl") -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="pixelmill-emulator-"))
                weakref.finalize(self, shutil.rmtree, self._dir, True)
            self._seq += 1
            return self._dir / f"{self._seq:08d}{suffix}"

    def add_file(self, stored: StoredFile) -> StoredFile:
        self.files[stored.id] = stored
        return stored

    def delete_file(self, file_id: str) -> bool:
        stored = self.files.pop(file_id, None)
        if stored is None:
            return False
        with contextlib.suppress(OSError):
            stored.path.unlink()
        return True

    def link_input(self, stored: StoredFile) -> Path:
        """The batch's own name for its input file, so that deleting the file does not pull it from under it."""
        path = self.new_path()
        try:
            path.hardlink_to(stored.path)
        except OSError:
            shutil.copyfile(stored.path, path)
        return path

    def reset(self) -> None:
        """Forget every file, batch and count (the files on disk are removed)."""
        for stored in list(self.files.values()):
            self.delete_file(stored.id)
        for batch in list(self.batches.values()):
            for path in (batch.input_path, batch.output_path, batch.error_path):
                if path is not None:
                    with contextlib.suppress(OSError):
                        path.unlink()
        self.batches.clear()
        self.counters = BatchCounters()
        self.fates_used = 0
        self.lost_creates = 0

    def next_fate(self, fates: tuple[str, ...]) -> str:
        """The fate of the batch being created: the configured fates in order, then `normal`."""
        index = self.fates_used
        self.fates_used += 1
        return fates[index] if index < len(fates) else "normal"

    def lose_create_answer(self, lost: int) -> bool:
        """Whether the batch just created has its answer cut (the first `lost` creates since configured)."""
        if self.lost_creates >= lost:
            return False
        self.lost_creates += 1
        return True

    def shuffle(self, count: int) -> array.array[int]:
        order = list(range(count))
        self._rng.shuffle(order)
        return array.array("l", order)

    # ------------------------------------------------------------ the clock

    def advance(self, batch: Batch, now: float | None = None) -> None:
        """Bring `batch` up to `now`: validate it, answer the lines due, end it. Blocking (file I/O and image
        encoding): the routes call it in a worker thread. Safe to call from several threads at once."""
        now = time.time() if now is None else now
        with batch.lock:
            if batch.status in TERMINAL:
                return
            self._advance(batch, now)

    def _advance(self, batch: Batch, now: float) -> None:
        lat = batch.latency * (10 if batch.fate == "slow" else 1)
        start = batch.created + 0.1 * lat  # validation ends
        deadline = batch.created + batch.window
        if batch.fate == "expire":
            deadline = min(deadline, start + 0.4 * lat)  # half the lines get answered, then the window closes
        cancel = batch.cancel_requested
        # Until when lines are answered: now, the cancel or the deadline, whichever comes first.
        stop = min(now, deadline, cancel if cancel is not None else now)
        if batch.status == VALIDATING:
            if stop < start and cancel is None and now < deadline:
                return
            if cancel is not None and cancel < start:
                self._end(batch, CANCELLED, cancel + batch.cancel_delay, now)
                return
            batch.offsets, batch.errors = batch.check(batch)
            if batch.fate == "fail" and not batch.errors:
                batch.errors = [{"code": "token_limit_exceeded", "line": None, "param": None,
                                 "message": "Enqueued token limit reached for this model. Try again later."}]
            if batch.errors:
                batch.times[FAILED] = start
                batch.status = FAILED
                return
            batch.order = self.shuffle(batch.total) if batch.shuffled else array.array("l", range(batch.total))
            batch.status = IN_PROGRESS
            batch.times[IN_PROGRESS] = start
        if batch.status in (IN_PROGRESS, FINALIZING):
            span = 0.8 * lat
            if batch.fate == "stall":
                due = 0
            elif span <= 0:
                due = batch.total
            else:
                due = min(batch.total, int(batch.total * max(0.0, stop - start) / span))
            self._answer(batch, due)
            if batch.answered >= batch.total and batch.status == IN_PROGRESS and batch.fate != "stall":
                batch.status = FINALIZING
                batch.times[FINALIZING] = start + span
        done_at = math.inf if batch.fate == "stall" else batch.created + lat
        if cancel is not None and cancel < min(deadline, done_at):
            if batch.status != CANCELLING:
                batch.status = CANCELLING
                batch.times[CANCELLING] = cancel
            if now >= cancel + batch.cancel_delay:
                self._end(batch, CANCELLED, cancel + batch.cancel_delay, now)
            return
        if deadline < done_at:
            if now >= deadline:
                self._end(batch, EXPIRED, deadline, now)
        elif now >= done_at:
            self._end(batch, COMPLETED, done_at, now)

    def _answer(self, batch: Batch, due: int) -> None:
        if due <= batch.answered:
            return
        out = batch.output_path or self.new_path()
        err = batch.error_path or self.new_path()
        batch.output_path, batch.error_path = out, err
        with batch.input_path.open("rb") as source, out.open("ab") as ok_file, err.open("ab") as bad_file:
            for position in range(batch.answered, due):
                source.seek(batch.offsets[batch.order[position]])
                result = batch.answer(source.readline())
                (ok_file if result.ok or batch.one_file else bad_file).write(result.data)
                if result.ok:
                    batch.completed += 1
                else:
                    batch.failed += 1
                if result.billed is not None:
                    batch.billed.append(result.billed)
                batch.usage.update(result.usage)
                self.counters.lines_answered[batch.api] += 1
                batch.answered = position + 1

    def _end(self, batch: Batch, status: str, when: float, now: float) -> None:
        batch.status = status
        batch.times[status] = min(when, now)
        if status in batch.discard_on:
            batch.billed.clear()  # nothing comes back, nothing is billed
        else:
            billed = self.counters.billed(batch.api)
            for key in batch.billed:
                billed[key] += 1
            batch.billed.clear()
        if batch.on_end is not None:
            batch.on_end(batch)

    def read_lines(self, batch: Batch, indices: list[int]) -> Iterator[bytes]:
        """Input lines of `batch` at `indices` (for leftovers), from one open file."""
        with batch.input_path.open("rb") as source:
            for index in indices:
                source.seek(batch.offsets[index])
                yield source.readline()


def iter_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, byte offset, line) for each non-blank line of `path`, read as a stream."""
    position = 0
    with path.open("rb") as source:
        for number, line in enumerate(source, start=1):
            if line.strip():
                yield number, position, line
            position += len(line)
