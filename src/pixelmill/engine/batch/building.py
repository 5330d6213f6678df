"""Building one batch step's batches: a row waiting at the step (engine/row.py `Frontier`) becomes one JSONL line,
written to disk at once, its row journaled as the file grows; a file is closed at the provider's limits,
uploaded (file id journaled) and its batch created (batch id journaled), and only then does anything wait on it.

A batch has one endpoint, so a step keeps one open batch per task: a `generate` step's conversations generate
their first turn and edit the later ones. A row's line for a step carries what the synchronous path would send
for its next call (engine/inputs.py resolves its fields, earlier steps' outputs against RUNDIR): turn `t` of a
conversation is the row's `calls_done`-th call, with turn `t-1`'s images as its input (one turn per batch round;
a chat model's conversation, which sends its whole history back each turn, is not batched). The turn's prompt and
count are journaled with the row (`info.batch_turn`), for the collect to log the turn as the synchronous path does.

`custom_id` names the row, the step (after the first) and the turn (after the first): `r000000012`,
`r000000012s1t2`; a line sent again (its batch expired or failed) keeps its id, so the provider's books and ours
agree that it was never billed twice.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO

from pixelmill.engine.batch.budget import BatchBudget
from pixelmill.engine.batch.create import create_once
from pixelmill.engine.batch.resubmits import Resubmits
from pixelmill.engine.context import RunContext
from pixelmill.engine.inputs import gather_inputs
from pixelmill.engine.outcome import done_call
from pixelmill.engine.plan import StepPlan
from pixelmill.engine.row import Frontier, Row, RowExecutor, log_turn
from pixelmill.errors import InputError, InternalError, PixelmillError, ProviderError
from pixelmill.providers.base import ImageRequest
from pixelmill.providers.batchwire import BatchWire
from pixelmill.writing.batches import BatchBook
from pixelmill.writing.journal import StepState

CHUNK = 256  # lines journaled at a time
ROUNDS = 4  # batches one line may go into in one run: the first, then resubmissions of what came back unanswered
_ID = re.compile(r"r(\d+)(?:s(\d+))?(?:t(\d+))?")


def custom_id(slot: int, step_no: int, turn: int) -> str:
    """The line's key: the row's journal entry, the step's number (after the first) and the turn (after the
    first); one-step, one-turn runs keep the plain `r<entry>`."""
    return f"r{slot:09d}" + (f"s{step_no}" if step_no else "") + (f"t{turn}" if turn else "")


def turn_of(key: str) -> int | None:
    """The turn a line's `custom_id` is for (None: not one of ours)."""
    found = _ID.fullmatch(key)
    return None if found is None else int(found.group(3) or 0)


def batch_name(book: BatchBook, seq: int) -> str:
    """The provider-side name of batch `seq`: this RUNDIR's id and the batch's number, unique to it."""
    return book.provider_name(seq)


class StepBatches:
    """The batches of one step being built: rows join (`join`), full files are sent, `flush` sends the rest."""

    def __init__(self, ctx: RunContext, step: StepPlan, step_no: int, wire: BatchWire, rows: RowExecutor,
                 book: BatchBook, folder: Path, notice: Callable[[str], None],
                 leftovers: Counter[tuple[str, str]], money: BatchBudget) -> None:
        self.ctx, self.step, self.step_no, self.wire, self.rows = ctx, step, step_no, wire, rows
        self.money = money  # --max-cost: each line reserves its maximum as it joins (engine/batch/budget.py)
        self.resubmits = Resubmits(book, step.config.name, ctx.stats)
        self.book, self.folder, self.notice = book, folder, notice
        self.name = step.config.name
        self.leftovers = leftovers  # (step, custom_id) -> times it came back unanswered in this run
        self.max_lines = min(ctx.config.limits.batch_max_lines or wire.max_lines, wire.max_lines)
        self.max_bytes = wire.max_bytes
        self.open: dict[str, _Building] = {}  # task -> the batch being written
        self.lock = asyncio.Lock()  # rows join from several workers; a full file is sent before the next line
        self.held = 0  # lines held back: ROUNDS batches of this run left them unanswered
        self.sent = 0  # batches created

    @property
    def task(self) -> str:
        """The step's own task, for batches journaled before batches had one."""
        return "generate" if self.step.config.task == "generate" else "edit"

    async def join(self, row: Row, frontier: Frontier) -> bool:
        """Make `row` a line of this step's open batch. False: it failed here (its input), or is held back."""
        made = await self._request(row, frontier)
        if made is None:
            return False
        request, key = made
        seen = self.leftovers.get((self.name, key), 0)
        if seen >= ROUNDS:
            self.held += 1
            return False
        try:
            data = self.wire.line(key, request)
        except Exception as exc:  # an odd value: this row fails, the run goes on
            self._failed(row, frontier.state, InternalError.of(exc))
            return False
        async with self.lock:
            reserved = self.money.line_max(self.step, request)
            if not self.money.admit(reserved):  # over the budget: the open batch is sent with what fits
                held = self.open.pop(request.task, None)
                if held is not None:
                    await self._send(held)
                return False
            self.resubmits.joined(row.slot, frontier.state)
            current = self.open.get(request.task)
            if current is not None and (current.lines >= self.max_lines
                                        or current.bytes + len(data) > self.max_bytes):
                del self.open[request.task]
                await self._send(current)
                current = None
            if current is None:
                current = self.open[request.task] = self._start(request.task)
            current.add(row.slot, key, data, reserved)
            if len(current.pending) >= CHUNK:
                current.record(self.book, self.name)
        return True

    async def flush(self) -> None:
        """Send every open batch (the end of a pass)."""
        async with self.lock:
            while self.open:
                _, building = self.open.popitem()
                await self._send(building)

    def abandon(self) -> None:
        """Stopping: the open batches never reach the provider; their rows are free for the next run."""
        for building in self.open.values():
            building.close()
            self.book.drop(building.seq)
        self.open.clear()

    async def _request(self, row: Row, frontier: Frontier) -> tuple[ImageRequest, str] | None:
        """The call the row's step makes next (its `calls_done`-th: one per turn), and the line's key; None when
        the row failed here."""
        step, state, ctx = self.step, frontier.state, self.ctx
        try:
            inputs = await gather_inputs(step.config, step.spec, frontier.data, rundir_fields=frontier.rundir_fields,
                                         policy=ctx.inputs, rundir=ctx.rundir, session=ctx.session)
            turns, t = inputs.turns, state.calls_done
            if len(turns) > 1 and step.provider.chat:
                raise InputError("batch: a chat model's multi-turn rows are not batched (each turn sends the whole "
                                 "conversation back); run this step without batch")
            if t >= len(turns):
                raise InputError(f"the journal has {t} turn(s) done and the row has {len(turns)}: run again with "
                                 f"--restart-step {self.name}")
            if t == 0:
                images = inputs.images
            else:
                # The previous turn's images (its one call's), read back from RUNDIR, as the synchronous path sends
                # them.
                previous = done_call(state.info, t - 1).get("outputs", [])
                images = [*await self.rows.reload(previous), *inputs.later_images[t - 1]]
            task, plan = step.turn_plan(inputs.task, t, len(turns), len(images))
            if len(plan.calls) != 1:
                raise InputError(f"batch: this row needs {len(plan.calls)} calls (n above what one call makes); "
                                 "lower n or run this step without batch")
            request = ImageRequest(task=task, model=step.wire_model, prompt=turns[t].prompt,  # type: ignore[arg-type]
                                   params=plan.calls[0], images=images, mask=inputs.mask if t == 0 else None,
                                   row=row.record.index, timeout=step.timeout)
            step.provider.check(request, step.spec)  # what a synchronous call refuses before sending, refused here
        except PixelmillError as exc:
            self._failed(row, state, exc)
            return None
        except Exception as exc:  # an odd value or a bug: this row fails, the run goes on
            self._failed(row, state, InternalError.of(exc))
            return None
        if len(turns) > 1:
            # Turns an earlier run made and has not logged yet (the synchronous path logs a turn after saving
            # its call), logged as that path logs them on a resume; then what the collect needs to log this turn
            # (the source is not read there), journaled before the line.
            log = state.info.setdefault("turns", [])
            for u in range(len(log), t):
                log_turn(log, u, turns[u].prompt, list(done_call(state.info, u).get("outputs", [])), [], True)
            state.status = "pending"
            state.info.pop("error", None)
            state.info["batch_turn"] = {"turn": t, "turns": len(turns), "prompt": turns[t].prompt}
            self.rows.save(self.name, row.slot, state)
        return request, custom_id(row.slot, self.step_no, t)

    def _failed(self, row: Row, state: StepState, exc: PixelmillError) -> None:
        self.rows.fail(self.step, row.slot, state, exc)
        self.rows.upstream_failed(self.step, row.slot)

    def _start(self, task: str) -> _Building:
        seq = self.book.start(self.name, self.step.provider.name, task)
        path = self.folder / f"batch-{seq:05d}.jsonl"
        return _Building(seq, path, path.open("wb"), task)

    async def _send(self, building: _Building) -> None:
        """Close, upload and create one batch; its lines are journaled before anything is sent."""
        building.record(self.book, self.name)
        building.close()
        file_id = await self.wire.upload(building.path, batch_name(self.book, building.seq))
        self.book.uploaded(building.seq, file_id)
        building.path.unlink(missing_ok=True)
        await self.create(building.seq, file_id, building.task)

    async def create(self, seq: int, file_id: str, task: str | None) -> None:
        """Create batch `seq` on its uploaded file and journal its id; a create whose answer was lost is looked
        for by listing, never created twice (engine/batch/create.py)."""
        model = ImageRequest(task=task or self.task, model=self.step.wire_model,  # type: ignore[arg-type]
                             prompt="", params={}, row=-1)
        try:
            batch, found = await create_once(self.wire, file_id, model, batch_name(self.book, seq))
        except ProviderError as exc:
            self.ctx.halt.stop(f"batch {seq} could not be created: {exc}; it stays recorded: run the same command "
                               "again (it is looked for at the provider before it is created)", exc.kind)
            return
        # A kill here (the batch created, its id not journaled): the next run finds it by listing (flow.py
        # `_recover`).
        self.book.submitted(seq, batch.id, batch.as_json())
        self.sent += 1
        self.notice(f"batch {seq} submitted: {batch.id}" + (" (its create's answer was lost: found by listing)"
                                                            if found else ""))


class _Building:
    """A batch's JSONL file as it is written: lines go to disk at once; their rows wait in `pending` (at most
    a chunk) to be journaled."""

    def __init__(self, seq: int, path: Path, fh: IO[bytes], task: str) -> None:
        self.seq, self.path, self.fh, self.task = seq, path, fh, task
        self.lines = 0
        self.bytes = 0
        self.pending: list[tuple[int, str, float]] = []

    def add(self, slot: int, key: str, data: bytes, reserved: float = 0.0) -> None:
        self.fh.write(data)
        self.lines += 1
        self.bytes += len(data)
        self.pending.append((slot, key, reserved))

    def record(self, book: BatchBook, step: str) -> None:
        if self.pending:
            book.add_lines(self.seq, step, self.pending)
            self.pending = []

    def close(self) -> None:
        self.fh.close()
