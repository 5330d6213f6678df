"""One batch run (`--batch`) of a one-step job: recover, submit, wait, collect, through a provider's batch API
(providers/batchwire.py: `BatchWire`; `wire_for` picks the provider's).

Order of a run, so that a crash anywhere neither loses a paid line nor creates a second batch for a row:
1. recover what an earlier run left: a batch still `building` never reached the provider and is dropped (its
   rows free); an `uploaded` one may have been created by a run killed before it journaled the answer, so the
   provider's batches are listed for its name (`pixelmill-<RUNDIR's id>-<its number>`) and it is adopted when
   found, created only when not;
2. submit: the source is read in order; every row pending for the step and in no live batch becomes one JSONL
   line, written to a file on disk as it is made (never the whole batch in memory), recorded in the journal
   in chunks as the file grows (writing/batches.py: a row already live fails the insert); a file is closed at
   the provider's limits (lines, bytes), uploaded (file id journaled), and its batch created (batch id
   journaled): only then does anything wait;
3. `--detach` stops here (exit 4: "submitted; run the same command again to collect");
4. wait: each live batch is polled, its state and line counts shown, until it ends;
5. collect: the output and error files are streamed to disk and read line by line; each line is mapped to its
   row by `custom_id`; images are written exactly as synchronous runs write them (engine/row.py `store`, the
   file names of DESIGN 2.3) and the row's step journaled done (cost at the batch rate from the reported usage),
   failed (refused, rejected, or the line's error), or left pending when the batch left it unanswered (expired,
   cancelled): the next batch takes it. The batch is marked collected, which frees its rows.

With --max-cost, each line reserves its maximum as it joins a batch and a batch is never built past the budget
(engine/batch/budget.py: split, wait for bills, or stop with the budget's line).

Refused before anything is sent (ConfigError): more than one step, Azure (its batch API takes no image
requests), a provider other than OpenAI, fallback models. A row whose step would need more than one call
(multi-turn, `n` above one call's), or a call of another task than the step's (a batch has one endpoint),
fails with that reason; the other rows are batched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pixelmill.engine.batch.budget import BatchBudget
from pixelmill.engine.batch.create import create_once
from pixelmill.engine.batch.resubmits import Resubmits
from pixelmill.engine.context import RunContext
from pixelmill.engine.inputs import gather_inputs
from pixelmill.engine.outcome import merge_result
from pixelmill.engine.plan import RunPlan, StepPlan
from pixelmill.engine.row import RowExecutor, finish
from pixelmill.errors import ConfigError, InputError, PixelmillError, ProviderError, redact
from pixelmill.models.cost import actual_cost
from pixelmill.providers.base import ImageRequest, Provider
from pixelmill.providers.batchwire import BatchSummary, BatchWire, LineAnswer
from pixelmill.providers.openai.batch import OpenAIBatchWire
from pixelmill.providers.openai.provider import AzureProvider, OpenAIProvider
from pixelmill.reading.records import read_records
from pixelmill.writing.batches import BatchBook, BatchEntry
from pixelmill.writing.journal import RowIdentity, StepState

CHUNK = 256  # rows read, and lines journaled, at a time
ROUNDS = 4  # batches of one run: the first, then resubmissions of what expired or failed batches left
# What the next run will be told: --detach, and Ctrl-C while waiting.
DETACHED = "submitted; run the same command again to collect"


def check_batch(plan: RunPlan, max_cost: float | None) -> None:
    """Refuse, before anything is sent, what --batch does not do."""
    if len(plan.steps) != 1:
        raise ConfigError("--batch: only one-step runs (generate or edit) take --batch for now; run the "
                          "pipeline's steps without it")
    step = plan.steps[0]
    if isinstance(step.provider, AzureProvider):
        raise ConfigError("--batch: Azure OpenAI's batch API takes no image requests (reference: async-apis.md); "
                          "run without --batch")
    if wire_for(step.provider) is None:
        raise ConfigError(f"--batch: {step.provider.name} has no batch API that pixelmill drives (OpenAI only, "
                          "for now); run without --batch")
    if step.fallbacks:
        raise ConfigError("--batch: a step with fallback models cannot be batched; drop the fallbacks or --batch")


def wire_for(provider: Provider) -> BatchWire | None:
    """The batch API of `provider`, or None when it has none pixelmill drives."""
    if isinstance(provider, OpenAIProvider) and not isinstance(provider, AzureProvider):
        return OpenAIBatchWire(provider)
    return None


class BatchFlow:
    """Carries the run's rows through batches: see the module docstring for the order of things."""

    def __init__(self, ctx: RunContext, plan: RunPlan, rows: RowExecutor, *, detach: bool,
                 notice: Callable[[str], None], id_field: str | None) -> None:
        self.ctx = ctx
        self.step: StepPlan = plan.steps[0]
        wire = wire_for(self.step.provider)
        assert wire is not None  # check_batch refused the others
        self.wire = wire
        self.rows = rows  # its `store`, `save` and `fail`: images and states exactly as synchronous runs
        self.detach = detach
        self.notice = notice
        self.id_field = id_field
        self.book = BatchBook(ctx.journal)
        self.money = BatchBudget(rows.sender.admission.budget, self.book, self.step, ctx.stats)  # --max-cost
        self.resubmits = Resubmits(self.book, self.step.config.name, ctx.stats)
        self.counting = 1
        self.unanswered = 0  # lines of batches collected this round that came back unanswered
        self.name = self.step.config.name
        self.folder = ctx.rundir / ".pixelmill" / "batches"
        self.max_lines = min(ctx.config.limits.batch_max_lines or wire.max_lines, wire.max_lines)
        self.poll = ctx.config.limits.batch_poll
        self.max_bytes = wire.max_bytes

    # ------------------------------------------------------------ the run
    async def run(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        await self._recover()
        round = resubmitting = 0
        while True:
            self.unanswered = 0
            self.counting = int(round == 0)  # a resubmission reads the source again: counted once
            self.money.new_round()
            self.resubmits.new_round()
            await self._submit()
            if self.resubmits.round:
                self.notice(f"resubmitted {self.resubmits.round} row(s) that an expired, cancelled or failed batch "
                            "left unanswered")
            if self.ctx.halt.stopping.is_set():
                return
            live = self.book.batches(live_only=True)
            if not live:
                if self.money.exhausted():  # rows held back, and no batch left to free budget for them
                    self.ctx.halt.stop(self.money.reached_message(), "budget")
                return
            if self.detach:
                self.ctx.halt.stop(f"{len(live)} batch(es) {DETACHED} (or `pixelmill status` to follow them)",
                                   "submitted")
                return
            await self._wait()
            round += 1
            resubmitting += bool(self.unanswered)
            if self.ctx.halt.stopping.is_set() or not ((self.unanswered and resubmitting < ROUNDS)
                                                       or self.money.held):
                break
        halt = self.ctx.halt
        left = len(self.book.batches(live_only=True))
        if left and halt.kind == "interrupted" and halt.reason is not None:
            # Stopping the wait stops nothing at the provider: the batches run on and are paid for.
            halt.reason += (f"; {left} batch(es) keep running at the provider (`pixelmill status` shows them): run "
                            "the same command again to collect them")

    async def collect(self) -> None:
        """Wait for the live batches and collect them, submitting nothing (`pixelmill cancel`, once it has
        cancelled them at the provider and dropped those never created: engine/batch/cancel.py)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        await self._wait()

    # ------------------------------------------------------------ 1. recover
    async def _recover(self) -> None:
        for entry in self.book.batches(live_only=True):
            if entry.state == "building":
                self.book.drop(entry.seq)
            elif entry.state == "uploaded":
                assert entry.file_id is not None
                found = await self.wire.find(self._name(entry.seq), entry.file_id)
                if found is not None:
                    self.notice(f"batch {entry.seq}: found {found.id} at the provider (created by a run stopped "
                                "before it was recorded); not created again")
                    self.book.submitted(entry.seq, found.id, found.as_json())
                else:
                    await self._create(entry.seq, entry.file_id)

    def _name(self, seq: int) -> str:
        """The provider-side name of batch `seq`: this RUNDIR's id and the batch's number, unique to it."""
        return self.book.provider_name(seq)

    # ------------------------------------------------------------ 2. submit
    async def _submit(self) -> int:
        """Read the source; rows pending and in no live batch become lines, in input order. Returns how many."""
        ctx, journal = self.ctx, self.ctx.journal
        made = 0
        current: _Building | None = None
        records = read_records(ctx.config.source, ctx.config.source_format)
        chunk: list[Any] = []

        async def flush(chunk: list[Any]) -> None:
            nonlocal current, made
            entries, _ = journal.claim([RowIdentity.of(r, self.id_field) for r in chunk])
            slots = [entries[r.index].slot for r in chunk]
            states = journal.states(self.name, slots)
            live = self.book.live_rows(self.name, slots)
            self.resubmits.look(slots)
            for record in chunk:
                ctx.stats.rows_read += self.counting
                slot = entries[record.index].slot
                state = states.get(slot)
                if record.error is not None:
                    if state is None:
                        journal.save(self.name, slot, StepState("failed", info={"error": {
                            "kind": "input", "message": record.error}}))
                    if self.counting:
                        ctx.stats.count_failure("input")
                    continue
                if state is not None and (state.status == "done" or
                                          (state.status == "failed" and not ctx.config.retry_failed)):
                    ctx.stats.rows_skipped += self.counting
                    continue
                if slot in live:
                    continue
                request = await self._request(record, slot, state or StepState())
                if request is None:
                    continue
                reserved = self.money.line_max(request)
                if not self.money.admit(reserved):  # over the budget: the batch is sent with what fits
                    if current is not None:
                        await self._send(current)
                        current = None
                    continue
                self.resubmits.joined(slot, state)
                data = self.wire.line(f"r{slot:09d}", request)
                if current is not None and (current.lines >= self.max_lines
                                            or current.bytes + len(data) > self.max_bytes):
                    await self._send(current)
                    current = None
                if current is None:
                    current = self._open()
                current.add(slot, data, reserved)
                made += 1
                if len(current.pending) >= CHUNK:
                    current.record(self.book, self.name)

        limit = ctx.config.limit
        for record in records:
            if limit is not None and record.index >= limit:
                break
            chunk.append(record)
            if len(chunk) >= CHUNK:
                await flush(chunk)
                chunk = []
            if ctx.halt.stopping.is_set():
                break
        if chunk and not ctx.halt.stopping.is_set():
            await flush(chunk)
        if current is not None:
            if ctx.halt.stopping.is_set():
                current.close()
                self.book.drop(current.seq)
            else:
                await self._send(current)
        return made

    async def _request(self, record: Any, slot: int, state: StepState) -> ImageRequest | None:
        """The one call a row's step makes, or None when the row failed here (its input)."""
        step = self.step
        try:
            inputs = await gather_inputs(step.config, step.spec, dict(record.data), rundir_fields=set(),
                                         policy=self.ctx.inputs, rundir=self.ctx.rundir, session=self.ctx.session)
            if len(inputs.turns) > 1:
                raise InputError("--batch: multi-turn rows are not batched (one call per row); run without --batch")
            task, plan = step.turn_plan(inputs.task, 0, 1, len(inputs.images))
            if task != self._task():  # a batch has one endpoint: a generate step's rows with images would edit
                raise InputError(f"--batch: this row would {task} in a {self._task()} step's batch; give every row "
                                 "input images, or none")
            if len(plan.calls) != 1:
                raise InputError(f"--batch: this row needs {len(plan.calls)} calls (n above what one call makes); "
                                 "lower --n or run without --batch")
        except PixelmillError as exc:
            self.rows.fail(step, slot, state, exc)
            return None
        return ImageRequest(task=task, model=step.wire_model,  # type: ignore[arg-type]
                            prompt=inputs.turns[0].prompt, params=plan.calls[0], images=inputs.images,
                            mask=inputs.mask, row=record.index, timeout=step.timeout)

    def _open(self) -> _Building:
        seq = self.book.start(self.name, self.step.provider.name)
        path = self.folder / f"batch-{seq:05d}.jsonl"
        return _Building(seq, path, path.open("wb"))

    async def _send(self, building: _Building) -> None:
        """Close, upload and create one batch; its lines are journaled before anything is sent."""
        building.record(self.book, self.name)
        building.close()
        file_id = await self.wire.upload(building.path, self._name(building.seq))
        self.book.uploaded(building.seq, file_id)
        building.path.unlink(missing_ok=True)
        await self._create(building.seq, file_id)

    async def _create(self, seq: int, file_id: str) -> None:
        model = ImageRequest(task=self._task(), model=self.step.wire_model, prompt="",  # type: ignore[arg-type]
                             params={}, row=-1)
        try:  # a lost answer is looked for by listing, never created twice (engine/batch/create.py)
            batch, found = await create_once(self.wire, file_id, model, self._name(seq))
        except ProviderError as exc:
            self.ctx.halt.stop(f"batch {seq} could not be created: {exc}; it stays recorded: run the same command "
                               "again (it is looked for at the provider before it is created)", exc.kind)
            return
        # A kill here (the batch created, its id not journaled): the next run finds it by listing (`_recover`).
        self.book.submitted(seq, batch.id, batch.as_json())
        self.notice(f"batch {seq} submitted: {batch.id}" + (" (its create's answer was lost: found by listing)"
                                                            if found else ""))

    def _task(self) -> str:
        return "generate" if self.step.config.task == "generate" else "edit"

    # ------------------------------------------------------------ 4. wait
    async def _wait(self) -> None:
        stop = self.ctx.halt.stopping
        shown: dict[int, str] = {}
        interval = 0.25  # doubled after each round up to --batch-poll's: a quick batch is collected quickly
        while not stop.is_set():
            live = [b for b in self.book.batches(live_only=True) if b.state == "submitted"]
            if not live:
                return
            for entry in live:
                assert entry.batch_id is not None
                summary = await self.wire.get(entry.batch_id)
                self.book.note(entry.seq, summary.as_json())
                line = _progress(entry, summary)
                if shown.get(entry.seq) != line:
                    shown[entry.seq] = line
                    self.notice(line)
                if summary.ended:
                    await self._collect(entry, summary)
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                interval = min(interval * 2, self.poll)

    # ------------------------------------------------------------ 5. collect
    async def _collect(self, entry: BatchEntry, summary: BatchSummary) -> None:
        answered: set[int] = set()
        async for answer in self.wire.answers(summary, self.folder):
            row = self.book.row_of(entry.seq, answer.custom_id)
            if row is None or row in answered:
                continue
            cost = await self._line(row, answer)
            if cost is not None:
                answered.add(row)
                self.money.settle(entry.seq, answer.custom_id, cost)
        self.money.release_rest(entry.seq)
        left = entry.lines - len(answered)
        self.unanswered += left
        if summary.state == "failed":
            reason = redact(summary.errors or "no reason given", ())
            self.notice(f"batch {entry.seq} ({entry.batch_id}) failed validation: {reason}; its rows are "
                        "submitted again by the next run")
        elif left:
            self.notice(f"batch {entry.seq} ({entry.batch_id}) {summary.status}: {left} line(s) unanswered stay "
                        "pending and go into the next batch")
        self.book.collected(entry.seq, summary.as_json())

    async def _line(self, slot: int, answer: LineAnswer) -> float | None:
        """Map one answer line to its row; returns what it cost. None: the line is no answer (expired or cancelled
        leftovers), the row stays pending."""
        step, ctx = self.step, self.ctx
        state = ctx.journal.states(self.name, [slot]).get(slot) or StepState()
        if state.status == "done":
            return 0.0  # recorded by an earlier collection of this batch (its cost is in the results)
        if self.wire.unanswered(answer):
            return None
        key, index = self._key_of(slot)
        plan = step.plan(self._task())
        params = plan.calls[0]
        request = ImageRequest(task=self._task(), model=step.wire_model, prompt="",  # type: ignore[arg-type]
                               params=params, row=index, timeout=step.timeout)
        state.attempts += 1
        try:
            result = await self.wire.result(answer, request, step.spec)
        except ProviderError as exc:
            self.rows.fail(step, slot, state, exc)
            return 0.0
        if result is None:
            self.rows.fail(step, slot, state, self.wire.error(answer, step.wire_model))
            return 0.0
        cost = (actual_cost(step.spec, params, result.usage, len(result.images)) or 0.0) \
            * (1.0 - (step.spec.price.batch_discount or 0.0))
        ctx.stats.spent += cost
        ctx.stats.requests += 1
        state.cost += cost
        paths = await self.rows.store(step, key, index, state, plan, result)
        merge_result(state.info, result, params, cost, paths, 0, False, by_path=plan.convert_to is None)
        state.info["batch"] = True
        state.calls_done = 1
        finish(state, [], False)
        self.rows.save(self.name, slot, state)
        ctx.stats.rows_done += 1
        return cost

    def _key_of(self, slot: int) -> tuple[str, int]:
        found = self.ctx.journal.db.execute("SELECT key, position FROM records WHERE row = ?", (slot,)).fetchone()
        return (str(found[0]), -1 if found[1] is None else int(found[1])) if found else (f"row{slot}", slot)


class _Building:
    """A batch's JSONL file as it is written: lines go to disk at once; their rows wait in `pending` (at most
    a chunk) to be journaled."""

    def __init__(self, seq: int, path: Path, fh: IO[bytes]) -> None:
        self.seq, self.path, self.fh = seq, path, fh
        self.lines = 0
        self.bytes = 0
        self.pending: list[tuple[int, str, float]] = []

    def add(self, slot: int, data: bytes, reserved: float = 0.0) -> None:
        self.fh.write(data)
        self.lines += 1
        self.bytes += len(data)
        self.pending.append((slot, f"r{slot:09d}", reserved))

    def record(self, book: BatchBook, step: str) -> None:
        if self.pending:
            book.add_lines(self.seq, step, self.pending)
            self.pending = []

    def close(self) -> None:
        self.fh.close()


def _progress(entry: BatchEntry, summary: BatchSummary) -> str:
    return (f"batch {entry.seq} ({entry.batch_id}): {summary.status}, {summary.completed} done, "
            f"{summary.failed} failed of {entry.lines} lines")

