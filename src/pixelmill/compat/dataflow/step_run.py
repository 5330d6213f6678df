"""One DataFlow operator run on pixelmill's engine.

1. The operator turns each DataFlow row into requests (one per user message for text-to-image, one per row
   for editing); the ledger gives each a stable position in the engine's input (`ledger.py`).
2. The run directory is `{cache_path}/.pixelmill/step{N}-{fingerprint}`: the same script re-run on the same
   step resumes there (done requests are never sent again); another model or other parameters get a fresh
   one beside it (nothing is discarded).
3. The engine runs the requests, `batch_size` in flight, with retries, limits, the journal and the budget.
4. Every `save_interval` finished requests (at most every few seconds) and at the end, the step's output file
   is written from the journal: each row with its image paths, an error column and a `pixelmill` column;
   images are given their DataFlow names (`ImageIO.place`). The journal, not this file, is what makes a crash
   lose nothing: a re-run rebuilds it.

Output columns, for output key `K` (the same for both operators):
- `K`: the row's image paths, `{save_path}/{key}/{key}_{i}.{ext}`; `[]` unless every request of the row is done.
- `K_error`: None, or `{kind, message, http_status, ...}` saying why the row has no images (for
  text-to-image, the first failed message's error, with its `key` and `condition`); `kind` is `pending` for
  rows not finished (the run was stopped: run it again).
- `pixelmill`: an object with one entry per output key (`{"K": {...}}`, merged with earlier steps' entries):
  status, provider, model, parameters, usage, cost, attempts, request ids, turns; for text-to-image one
  `conditions` entry per user message.
In csv and parquet step files, `K_error` and `pixelmill` hold JSON text.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from pixelmill.compat.dataflow.imageio import ImageIO
from pixelmill.compat.dataflow.ledger import Request, write_ledger
from pixelmill.compat.dataflow.serving import ImageGenServing
from pixelmill.compat.dataflow.storage import DataFlowConfigError, FileStorage
from pixelmill.errors import ConfigError, PixelmillError
from pixelmill.reading.records import Record
from pixelmill.writing.journal import Journal, StepState
from pixelmill.writing.output import step_object

if TYPE_CHECKING:
    from pixelmill.api import RunReport
    from pixelmill.config import RunConfig
    from pixelmill.engine.stats import RunStats

FLUSH_MIN_GAP = 5.0  # seconds between two flushes of the output file, at least
CHUNK = 256  # DataFlow rows assembled at a time (journal look-ups are per chunk: memory stays flat)


class KeepRow:
    """What an operator returns for a row it leaves as it is (an edit row that already has its output)."""


KEEP = KeepRow()


class StepAborted(PixelmillError):
    """The run stopped before every row was sent (authentication, quota, budget, Ctrl-C). The step's file was
    written with the rows not sent marked pending; running the pipeline again continues."""

    kind = "aborted"


@dataclass(slots=True)
class StepResult:
    """What `run()` did; DataFlow returned nothing, so existing code can ignore it."""

    output: Path
    rundir: Path
    rows: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0
    images: int = 0  # made in this run
    requests: int = 0  # sent in this run
    spent: float = 0.0  # this run, USD
    aborted: str | None = None
    failures: dict[str, int] = field(default_factory=dict)  # error kind -> rows


@dataclass(slots=True)
class _Plan:
    """One DataFlow row: its requests' ledger positions and keys, or why it has none."""

    positions: list[int]
    keys: list[str]
    kept: bool = False
    error: str | None = None  # the row could not be read


RequestsOf = Callable[[dict[str, Any], int], "list[Request] | KeepRow"]


class OperatorRun:
    def __init__(self, *, label: str, serving: ImageGenServing, storage: FileStorage, task: str,
                 output_key: str, image_field: str | None, save_interval: int | None) -> None:
        if serving.task != task:
            wanted = "text2image" if task == "generate" else "imageedit"
            raise DataFlowConfigError(f"{label} needs a serving made with Image_gen_task={wanted!r}; this one has "
                                      f"{serving.image_gen_task!r}")
        if not output_key:
            raise DataFlowConfigError(f"{label}: output_image_key must be a column name")
        self.label = label
        self.serving = serving
        self.storage = storage
        self.task = task
        self.key = output_key
        self.error_key = f"{output_key}_error"
        self.image_field = image_field
        self.save_interval = save_interval
        self.image_io: ImageIO = serving.image_io
        self._placed: dict[int, list[str]] = {}

    # ------------------------------------------------------------ the run
    def execute(self, requests_of: RequestsOf) -> StepResult:
        step = self.storage.current_step()
        cache = Path(self.storage.cache_path)
        cache.mkdir(parents=True, exist_ok=True)
        probe = self.serving.run_config(cache, cache, image_field=self.image_field, output_field=self.key)
        digest = hashlib.sha256(orjson.dumps(probe.fingerprint(), option=orjson.OPT_SORT_KEYS)).hexdigest()[:10]
        self.rundir = cache / ".pixelmill" / f"step{step}-{digest}"
        self.rundir.mkdir(parents=True, exist_ok=True)
        ledger = self.rundir / "input.jsonl"
        plans: list[_Plan] = []
        positions, total = write_ledger(ledger, self.task, self._requests(requests_of, plans))
        for plan, mine in zip(plans, positions, strict=True):
            plan.positions = mine
        self.plans = plans
        # The engine reads the derived requests from the ledger, but their image paths come from the DataFlow
        # input: allow the folders DataFlow resolved them against, and where DataFlow steps put their images.
        roots = (self.storage.input_path().parent, Path(self.storage.first_entry_file_name).parent, Path.cwd(),
                 Path(self.image_io.save_path))
        config = probe.model_copy(update={"source": ledger, "output": self.rundir,
                                          "allowed_paths": (*probe.allowed_paths, *roots)})
        self.step_name = config.steps[0].name

        from pixelmill.engine.stats import RunStats

        stats = RunStats(total=total)
        flusher = _Flusher(self, stats) if self.save_interval and self.save_interval > 0 else None
        try:
            if flusher is not None:
                flusher.start()
            report = self._run_engine(config, stats)
        except ConfigError as exc:  # found before anything was sent: no output file
            raise DataFlowConfigError(str(exc)) from None
        except BaseException:
            # Stopped at once (a second Ctrl-C, a crash): what is done is in the journal; say so in the file too.
            if flusher is not None:
                flusher.stop()
            with contextlib.suppress(Exception):
                self.flush(final=True, aborted="interrupted")
            raise
        finally:
            if flusher is not None:
                flusher.stop()
        result = self.flush(final=True, aborted=report.aborted)
        result.images, result.requests, result.spent = stats.images, stats.requests, stats.spent
        self._summary(result)
        if result.aborted is not None:
            raise StepAborted(f"{self.label}: {result.aborted}. The rows not sent are marked pending in "
                              f"{result.output}; run the pipeline again to continue.")
        return result

    def _requests(self, requests_of: RequestsOf, plans: list[_Plan]) -> Iterator[list[Request] | None]:
        for record in self.storage.iter_records():
            if record.data is None:
                plans.append(_Plan([], [], error=record.error))
                yield None
                continue
            requests = requests_of(record.data, record.index)
            if isinstance(requests, KeepRow):
                plans.append(_Plan([], [], kept=True))
                yield None
                continue
            plans.append(_Plan([], [r.key for r in requests]))
            yield requests

    def _run_engine(self, config: RunConfig, stats: RunStats) -> RunReport:
        from pixelmill.console import run_with_progress

        return run_with_progress(config, quiet=not self.serving.progress, summary=False, remember=False,
                                 stats=stats)

    # ------------------------------------------------------------ the output file
    def flush(self, *, final: bool, aborted: str | None = None) -> StepResult:
        """Write the step's output file from the journal (and give done images their DataFlow names)."""
        result = StepResult(self.storage.output_path(), self.rundir, aborted=aborted)
        if aborted is None:
            why = "not finished yet: the step is still running" if not final else \
                "not sent (the run stopped before this row); run the pipeline again"
        else:
            why = f"not sent: the run stopped ({aborted}); run the pipeline again to continue"
        passes: list[StepResult] = []

        def rows() -> Iterator[dict[str, Any]]:
            counts = StepResult(result.output, self.rundir)
            passes.append(counts)
            journal = Journal.open(self.rundir)
            try:
                yield from self._assemble(journal, counts, why)
            finally:
                journal.close()

        self.storage.write_rows(rows, json_columns=(self.error_key, "pixelmill"))
        counts = passes[-1]
        result.rows, result.done, result.failed, result.pending = counts.rows, counts.done, counts.failed, \
            counts.pending
        result.failures = counts.failures
        return result

    def _assemble(self, journal: Journal, counts: StepResult, why: str) -> Iterator[dict[str, Any]]:
        records = self.storage.iter_records()
        chunk: list[tuple[Record, _Plan]] = []
        for record, plan in zip(records, self.plans, strict=False):
            chunk.append((record, plan))
            if len(chunk) >= CHUNK:
                yield from self._assemble_chunk(journal, chunk, counts, why)
                chunk = []
        if chunk:
            yield from self._assemble_chunk(journal, chunk, counts, why)

    def _assemble_chunk(self, journal: Journal, chunk: list[tuple[Record, _Plan]], counts: StepResult,
                        why: str) -> Iterator[dict[str, Any]]:
        wanted = [pos for _, plan in chunk for pos in plan.positions]
        slots = journal.slots_at(wanted) if wanted else {}
        by_slot = journal.states(self.step_name, sorted(set(slots.values()))) if slots else {}
        states = {pos: by_slot[slot] for pos, slot in slots.items() if slot in by_slot}
        for record, plan in chunk:
            counts.rows += 1
            row, status, error = self._row(record, plan, states, why)
            if status == "failed":
                counts.failed += 1
                kind = str((error or {}).get("kind", "error"))
                counts.failures[kind] = counts.failures.get(kind, 0) + 1
            elif status == "pending":
                counts.pending += 1
            else:
                counts.done += 1
            yield row

    def _row(self, record: Record, plan: _Plan, states: dict[int, StepState],
             why: str) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
        if record.data is None:
            unreadable: dict[str, Any] = {"kind": "input", "message": plan.error or record.error}
            return {self.key: [], self.error_key: unreadable,
                    "pixelmill": {self.key: {"status": "failed", "error": unreadable}}}, "failed", unreadable
        row = dict(record.data)
        meta = _pixelmill_column(row.get("pixelmill"))
        if plan.kept:
            row[self.error_key] = None
            row["pixelmill"] = {**meta, self.key: {"status": "kept", "note": f"the row already had {self.key}; "
                                                   "it was not sent"}}
            return row, "done", None
        parts = []
        images: list[str] = []
        first_error: dict[str, Any] | None = None
        any_pending = False
        for j, (pos, key) in enumerate(zip(plan.positions, plan.keys, strict=True)):
            state = states.get(pos)
            obj = step_object(state)
            self._localise(obj)
            if state is not None and state.status == "done":
                placed = self._place(pos, key, state.outputs)
                obj["images"] = placed
                images.extend(placed)
            elif state is not None and state.status == "failed":
                if first_error is None:
                    first_error = dict(state.info.get("error") or {"kind": "error", "message": "failed"})
                    if self.task == "generate":
                        first_error.update(key=key, condition=j)
            else:
                any_pending = True
            parts.append({"key": key, **obj})
        error: dict[str, Any] | None
        if first_error is not None:
            status, error = "failed", first_error
        elif any_pending:
            status, error = "pending", {"kind": "pending", "message": why}
        else:
            status, error = "done", None
        row[self.key] = images if status == "done" else []
        row[self.error_key] = error
        if self.task == "generate":
            entry: dict[str, Any] = {"status": status}
            if error is not None:
                entry["error"] = error
            entry["cost_usd"] = round(sum(float(p.get("cost_usd") or 0.0) for p in parts), 6)
            entry["conditions"] = parts
        else:
            entry = parts[0] if parts else {"status": status}
            entry.pop("key", None)
            entry["status"] = status
            if error is not None and status == "pending":
                entry["error"] = error
        row["pixelmill"] = {**meta, self.key: entry}
        return row, status, error

    def _place(self, pos: int, key: str, outputs: list[str]) -> list[str]:
        placed = self._placed.get(pos)
        if placed is None or len(placed) != len(outputs):
            placed = [self.image_io.place(self.rundir / p, key, i) for i, p in enumerate(outputs)]
            self._placed[pos] = placed
        return placed

    def _localise(self, obj: dict[str, Any]) -> None:
        """Paths inside the `pixelmill` object (each turn's images) are relative to the run directory: make
        them usable from where the user works."""
        for turn in obj.get("turns") or []:
            if isinstance(turn, dict) and isinstance(turn.get("images"), list):
                turn["images"] = [str(self.rundir / p) for p in turn["images"]]

    def _summary(self, result: StepResult) -> None:
        line = (f"pixelmill: {self.label} (step {self.storage.operator_step}): {result.rows} rows: {result.done} "
                f"done, {result.failed} failed, {result.pending} pending; this run: {result.images} images from "
                f"{result.requests} requests, ${result.spent:.4f}; output: {result.output}")
        if result.failures:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(result.failures.items()))
            line += f"\npixelmill: failed rows ({kinds}): see the column {self.error_key!r}"
        if result.aborted:
            line += f"\npixelmill: stopped: {result.aborted}"
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _pixelmill_column(value: Any) -> dict[str, Any]:
    """An earlier step's `pixelmill` column (an object; JSON text after csv or parquet), to add to."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return {}
    return dict(value) if isinstance(value, dict) else {}


class _Flusher:
    """Writes the output file every `save_interval` finished requests while the engine runs, at most every
    FLUSH_MIN_GAP seconds (and never more than half the time: a flush rewrites the whole file)."""

    def __init__(self, run: OperatorRun, stats: RunStats) -> None:
        self.run = run
        self.stats = stats
        self.every = int(run.save_interval or 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pixelmill-dataflow-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        last_count = 0
        last_time = time.monotonic()
        gap = FLUSH_MIN_GAP
        while not self._stop.wait(0.1):
            count = self.stats.rows_done + self.stats.rows_failed
            if count - last_count < self.every or time.monotonic() - last_time < gap:
                continue
            started = time.monotonic()
            try:
                self.run.flush(final=False)
            except (OSError, PixelmillError, ValueError) as exc:  # the run goes on; the final flush reports
                sys.stderr.write(f"pixelmill: notice: could not write the step's file yet ({exc})\n")
            took = time.monotonic() - started
            gap = max(FLUSH_MIN_GAP, 2 * took)
            last_count = count
            last_time = time.monotonic()
