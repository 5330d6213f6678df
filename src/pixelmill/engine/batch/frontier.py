"""A frontier pass: one read of the source that moves every row as far as it can go now.

For each row the pass finds its frontier, the first step with work left (engine/row.py's rules: done steps are
skipped, a failed one ends the row unless it is sent again):
- a synchronous step: the row goes to a worker (bounded queue, `concurrency * 2 + 2` workers as in
  engine/runner.py), which runs it through its synchronous steps with the engine's limits and retries
  (`RowExecutor.run`) until it finishes or reaches a batch step, where it joins that step's open batch;
- a batch step: the row joins that step's open batch at once (lines in input order), unless a live batch holds
  it already (then it waits for that batch to be collected);
- nothing left: skipped.
At the end of the pass every open batch is sent. The flow (flow.py) runs a pass at the start and again after a
batch is collected, so a row moves to its next step as soon as its own batch is back, not when the step's last
batch is. Memory stays flat: a chunk of rows at a time, never the whole source.

Only the first pass honours --retry-failed (a row failed in this run is not sent again by a later pass); later
passes send again only `upstream` failures whose earlier step is now done.
"""

from __future__ import annotations

from collections.abc import Callable

from pixelmill.engine.batch.building import StepBatches
from pixelmill.engine.context import RunContext
from pixelmill.engine.plan import StepPlan
from pixelmill.engine.row import Row, RowExecutor
from pixelmill.engine.workers import RowQueue, flow_rows, source_records
from pixelmill.reading.records import Record
from pixelmill.writing.batches import BatchBook
from pixelmill.writing.journal import RowIdentity, StepState

Retry = Callable[[StepState], bool]


def _all(state: StepState) -> bool:
    return True


def _upstream(state: StepState) -> bool:
    error = state.info.get("error")
    return isinstance(error, dict) and error.get("kind") == "upstream"


class FrontierPass:
    """One pass over the source (see the module docstring)."""

    def __init__(self, ctx: RunContext, steps: list[StepPlan], rows: RowExecutor, batches: dict[str, StepBatches],
                 book: BatchBook, *, id_field: str | None, concurrency: int, first: bool,
                 notice: Callable[[str], None]) -> None:
        self.ctx, self.steps, self.rows, self.batches, self.book = ctx, steps, rows, batches, book
        self.id_field = id_field
        self.workers = concurrency * 2 + 2
        self.first = first  # counts rows read and skipped, honours --retry-failed
        self.retry: Retry = _all if first and ctx.config.retry_failed else _upstream
        self.notice = notice

    async def run(self) -> None:
        done = await flow_rows(self.ctx, source_records(self.ctx.config), self._route, self._work, self.workers)
        for batches in self.batches.values():
            if done:
                await batches.flush()
            else:  # stopped: the open batches never reach the provider
                batches.abandon()

    async def _route(self, chunk: list[Record], queue: RowQueue) -> None:
        ctx, journal, stats = self.ctx, self.ctx.journal, self.ctx.stats
        entries, changed = journal.claim([RowIdentity.of(r, self.id_field) for r in chunk])
        if self.first:
            for index in changed:
                self.notice(f"row {index} changed since the last run: its earlier results are set aside and it is "
                            "sent again")
        slots = sorted({e.slot for e in entries.values()})
        states = {s.config.name: journal.states(s.config.name, slots) for s in self.steps}
        # Every step's, batched now or not: a row a live batch holds is never sent again, in a batch or online.
        live = {s.config.name: self.book.live_rows(s.config.name, slots) for s in self.steps}
        for record in chunk:
            stats.rows_read += self.first
            entry = entries[record.index]
            mine = {name: by_slot[entry.slot] for name, by_slot in states.items() if entry.slot in by_slot}
            if record.error is not None:
                if not mine:
                    error = {"kind": "input", "message": record.error}
                    for step in self.steps:
                        journal.save(step.config.name, entry.slot, StepState("failed", info={"error": error}))
                if self.first:
                    stats.count_failure("input")
                continue
            at = self._frontier(mine)
            if at is None:
                stats.rows_skipped += self.first
                continue
            step = self.steps[at]
            name = step.config.name
            if entry.slot in live[name]:
                continue  # its batch is not back yet
            row = Row(record, entry.key, mine, entry.slot)
            if name in self.rows.batched:
                # No synchronous step before it: returns at once (or records a failed step's later steps).
                frontier = await self.rows.run(row, self.retry)
                if frontier is not None:
                    await self.batches[name].join(row, frontier)
            else:
                await queue.put(row)
            if ctx.halt.stopping.is_set():
                return

    def _frontier(self, states: dict[str, StepState]) -> int | None:
        """The first step of the row with work left; None when the row is finished (a failed step's later
        steps recorded as not run)."""
        for i, step in enumerate(self.steps):
            state = states.get(step.config.name)
            if state is None or state.status == "pending":
                return i
            if state.status == "failed":
                if self.retry(state):
                    return i
                later = [states.get(s.config.name) for s in self.steps[i + 1:]]
                # Not yet told that they will not run: the row's executor records it (no call is sent).
                return None if all(s is not None and s.status == "failed" for s in later) else i
        return None

    async def _work(self, row: Row) -> None:
        frontier = await self.rows.run(row, self.retry)
        if frontier is not None:
            await self.batches[frontier.step.config.name].join(row, frontier)
