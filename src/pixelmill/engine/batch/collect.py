"""Collecting an ended batch: its output and error files are streamed to disk and read line by line; each line
is mapped to its row by `custom_id` and journaled as the synchronous path journals the call it stands for.

- Done: images written exactly as synchronous runs write them (engine/row.py `store`, DESIGN 2.3's file names),
  cost at the batch rate from the reported usage. A conversation's turn is one call: its images and turn log
  are kept (`calls_done`, `info.turns`) and the row stays pending for its next turn's batch; the last turn
  marks the step done. A row done at the run's last step is counted done.
- Failed: refused, rejected, or the line's error, as the synchronous call's would be; the steps after it are
  recorded as not run (`upstream`).
- Unanswered (an expired or cancelled batch's leftovers, a batch that failed validation): the row stays pending
  and the next pass puts it in a new batch (counted in `leftovers`, at most `ROUNDS` times in one run).
- No readable answer in a *completed* batch (its files damaged, a line cut or missing): the line ran and may have
  been billed, so it is not sent again on its own: the row fails as an unknown outcome, charged at its line's
  maximum (`--retry-failed` sends it again).

A line already journaled (a collect cut short by a crash, then done again) is recognised by its turn: it is not
stored twice. The batch is then marked collected, which frees its rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from pixelmill.engine.batch.budget import BatchBudget
from pixelmill.engine.batch.building import turn_of
from pixelmill.engine.context import RunContext
from pixelmill.engine.outcome import merge_result
from pixelmill.engine.plan import StepPlan, images_per_call
from pixelmill.engine.row import RowExecutor, finish
from pixelmill.errors import ProviderError, UnknownOutcome, redact
from pixelmill.models.cost import actual_cost, batch_cost, expected_cost
from pixelmill.providers.base import ImageRequest
from pixelmill.providers.batchwire import BatchSummary, BatchWire, LineAnswer
from pixelmill.writing.batches import BatchBook, BatchEntry
from pixelmill.writing.journal import StepState


class Collector:
    """Maps ended batches' answers to their rows."""

    def __init__(self, ctx: RunContext, steps: list[StepPlan], rows: RowExecutor, book: BatchBook, folder: Path,
                 notice: Callable[[str], None], leftovers: Counter[tuple[str, str]], money: BatchBudget) -> None:
        self.ctx, self.rows, self.book, self.folder, self.notice = ctx, rows, book, folder, notice
        self.money = money  # each answered line's reservation becomes its bill; the unanswered release theirs
        self.steps = {s.config.name: s for s in steps}
        self.last = steps[-1].config.name
        self.leftovers = leftovers

    async def collect(self, entry: BatchEntry, summary: BatchSummary, wire: BatchWire, task: str) -> None:
        step = self.steps[entry.step]
        answered: set[int] = set()
        never_ran: set[int] = set()  # lines the provider says it did not run (expired, cancelled): not billed
        async for answer in wire.answers(summary, self.folder):
            row = self.book.row_of(entry.seq, answer.custom_id)
            if row is None or row in answered:
                continue
            cost = await self._line(step, wire, task, row, answer)
            if cost is not None:
                answered.add(row)
                self.money.settle(entry.seq, answer.custom_id, cost)
            else:
                never_ran.add(row)
        if summary.state == "completed" and len(answered) + len(never_ran) < entry.lines:
            # A completed batch ran every line: one with no readable answer (a damaged or missing line of its
            # files) may have been billed. Sent again it could be paid twice: it fails, charged at its maximum.
            for key, row in self.book.lines(entry.seq):
                if row not in answered and row not in never_ran:
                    self.money.settle(entry.seq, key, self._lost(step, task, entry.seq, key, row))
                    answered.add(row)
        self.money.release_rest(entry.seq)
        left = entry.lines - len(answered)
        if left:
            for key, row in self.book.lines(entry.seq):
                if row not in answered:
                    self.leftovers[(entry.step, key)] += 1
        if summary.state == "failed":
            reason = redact(summary.errors or "no reason given", ())
            self.notice(f"batch {entry.seq} ({entry.batch_id}) failed validation: {reason}; its rows are "
                        "submitted again")
        elif left:
            self.notice(f"batch {entry.seq} ({entry.batch_id}) {summary.status}: {left} line(s) unanswered stay "
                        "pending and go into the next batch")
        self.book.collected(entry.seq, summary.as_json())

    async def _line(self, step: StepPlan, wire: BatchWire, task: str, slot: int, answer: LineAnswer) -> float | None:
        """Map one answer line to its row; returns what it cost (0: failed, or journaled by an earlier collect of
        this batch, its cost in the results). None: the line is no answer (expired or cancelled leftovers), the
        row stays pending."""
        ctx, name = self.ctx, step.config.name
        state = ctx.journal.states(name, [slot]).get(slot) or StepState()
        if state.status == "done" or turn_of(answer.custom_id) != state.calls_done:
            return 0.0  # journaled by an earlier collect of this batch
        if wire.unanswered(answer):
            return None
        turn_info = state.info.get("batch_turn") or {}
        turn, turns = state.calls_done, int(turn_info.get("turns", 1))
        multi = turns > 1
        key, index = self._key_of(slot)
        plan = step.plan(task, single=turn < turns - 1)
        params = plan.calls[0]
        request = ImageRequest(task=task, model=step.wire_model, prompt="",  # type: ignore[arg-type]
                               params=params, row=index, timeout=step.timeout)
        state.attempts += 1
        try:
            result = await wire.result(answer, request, step.spec)
            if result is None:
                raise wire.error(answer, step.wire_model)
        except ProviderError as exc:
            state.info.pop("batch_turn", None)
            self.rows.fail(step, slot, state, exc)
            self.rows.upstream_failed(step, slot)
            return 0.0
        cost = (actual_cost(step.spec, params, result.usage, len(result.images)) or 0.0) \
            * (1.0 - (step.spec.price.batch_discount or 0.0))
        ctx.stats.spent += cost
        ctx.stats.requests += 1
        state.cost += cost
        paths = await self.rows.store(step, key, index, state, plan, result)
        merge_result(state.info, result, params, cost, paths, turn, multi, by_path=plan.convert_to is None)
        state.info["batch"] = True
        state.info.pop("error", None)  # a row sent again (--retry-failed) that succeeded
        state.calls_done = turn + 1
        turn_log = state.info.setdefault("turns", []) if multi else []
        if multi and len(turn_log) <= turn:
            turn_log.append({"prompt": turn_info.get("prompt"), "images": paths, "text": result.text or None})
        if turn == turns - 1:
            state.info.pop("batch_turn", None)
            finish(state, turn_log, multi)
        else:
            state.status = "pending"  # its next turn goes into a later batch
        self.rows.save(name, slot, state)
        if state.status == "done" and name == self.last:
            ctx.stats.rows_done += 1
        return cost

    def _lost(self, step: StepPlan, task: str, seq: int, key: str, slot: int) -> float:
        """Fail row `slot`, whose answer in a completed batch could not be read, as an unknown outcome charged at
        its line's maximum (its reservation, else the table's at the batch rate). Returns the charge."""
        ctx, name = self.ctx, step.config.name
        state = ctx.journal.states(name, [slot]).get(slot) or StepState()
        if state.status != "pending" or turn_of(key) != state.calls_done:
            return 0.0  # journaled already (an earlier collect of this batch)
        charge = self.book.reserved_of(seq, key)
        if not charge:
            params = step.plan(task).calls[0]
            expected = expected_cost(step.spec, params, images_per_call(params))
            charge = (batch_cost(step.spec, expected) or expected).high if expected is not None else 0.0
        state.cost += charge
        ctx.stats.spent += charge
        state.info.pop("batch_turn", None)
        error = UnknownOutcome("the batch completed but its answer for this row could not be read (a damaged or "
                               "missing line of its files): it may have been billed, and is charged at its maximum; "
                               "--retry-failed sends it again (and may pay again)")
        self.rows.fail(step, slot, state, error)
        self.rows.upstream_failed(step, slot)
        return charge

    def _key_of(self, slot: int) -> tuple[str, int]:
        found = self.ctx.journal.db.execute("SELECT key, position FROM records WHERE row = ?", (slot,)).fetchone()
        return (str(found[0]), -1 if found[1] is None else int(found[1])) if found else (f"row{slot}", slot)
