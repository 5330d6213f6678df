"""One row's way through a run: each step in turn, each model of a step (fallbacks), each turn of a
conversation and each call of a split `n`; its image files and its journal entries.

`RowExecutor` takes the run's shared state explicitly (`RunContext`, engine/context.py), the planned steps
(engine/plan.py) and the `Sender` that makes one call with its retries (engine/call.py). A call's answer is
stored and journaled inside the sender's `async with`, which holds the call's concurrency slot until then, so
a kill loses at most `--concurrency` paid calls. A row that fails is recorded with a reason (one bad row never
fails the run), an unexpected exception included (kind `internal`, the exception named); a fatal error or the
budget running out stops the run and leaves the row pending.

A full disk (writing/store.py, writing/journal.py: `DiskFull`) stops the run the same way: the store's reserve
of space is freed so that the journal can record the row as it stands, pending, with what its calls cost; a paid
answer whose images could not be written is counted (`RunStats.unstored`) and its row is sent again by a re-run.
Each file's byte size is kept in the row's info (`sizes`), for a re-run to check that done rows still have their
files (engine/runner.py).

In a run with batch steps (engine/batch/), `batched` names them: `run` carries a row through its synchronous
steps and stops at the first batch step with work left, returning it (`Frontier`: the step, the row's fields with
the earlier steps' outputs, its state) for the batch flow to make the row a line of that step's batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pixelmill.engine.call import Failure, Sender, Stopped
from pixelmill.engine.context import RunContext
from pixelmill.engine.inputs import StepInputs, gather_inputs
from pixelmill.engine.intents import RowBook, carried
from pixelmill.engine.jobs import JobSender
from pixelmill.engine.outcome import done_call, merge_result, restore_content
from pixelmill.engine.plan import StepPlan
from pixelmill.errors import (
    BudgetReached,
    DiskFull,
    FatalError,
    InputError,
    InternalError,
    PixelmillError,
    ProviderError,
    Refused,
    redact,
)
from pixelmill.models.cost import actual_cost
from pixelmill.params import WirePlan
from pixelmill.providers.base import ChatTurn, ImageRequest, ImageResult, InputImage, is_job_provider
from pixelmill.reading.records import Record
from pixelmill.writing.journal import StepState
from pixelmill.writing.store import DEFAULT_NAME, image_stem

INLINE_WRITE = 256 * 1024  # images smaller than this are written on the event loop (bench/cpu.py: a thread
# hand-off costs more than the write; above it, large writes would stall other calls' answers)


@dataclass(slots=True)
class Row:
    record: Record
    key: str  # the stem of its image files
    states: dict[str, StepState]
    slot: int  # its entry in the journal (found by the row's identity), which its results are saved under


@dataclass(slots=True)
class Frontier:
    """Where a row waits for a batch step: the step, the row's fields (earlier steps' outputs included, their
    names in `rundir_fields`: they resolve against RUNDIR) and the step's state."""

    step: StepPlan
    data: dict[str, Any]
    state: StepState
    rundir_fields: set[str] = field(default_factory=set)


class RowExecutor:
    """Carries rows through every step of the run, one row per `run` call (many run at once)."""

    def __init__(self, ctx: RunContext, steps: list[StepPlan], sender: Sender,
                 batched: frozenset[str] = frozenset()) -> None:
        self.ctx = ctx
        self.steps = steps
        self.sender = sender
        self.jobs = JobSender(sender)  # the calls of remote-job providers (engine/jobs.py)
        self.batched = batched  # the steps a batch flow sends (engine/batch/): `run` stops there

    async def run(self, row: Row, retry: Callable[[StepState], bool] | None = None) -> Frontier | None:
        """Carry `row` through its steps; returns where it waits for a batch step, if it does. `retry` says
        which failed steps are sent again (default: all of them with --retry-failed)."""
        ctx = self.ctx
        if retry is None:
            retry = _retry_all if ctx.config.retry_failed else _retry_none
        assert row.record.data is not None
        data = dict(row.record.data)
        rundir_fields: set[str] = set()
        failed_step: str | None = None
        for step in self.steps:
            name = step.config.name
            state = row.states.get(name) or StepState()
            if failed_step is not None:
                state = StepState("failed", info={"error": {
                    "kind": "upstream", "message": f"not run: step {failed_step!r} failed for this row"}})
                self.save(name, row.slot, state)
                continue
            if state.status == "done":
                data[step.config.out_field] = state.outputs
                rundir_fields.add(step.config.out_field)
                continue
            if state.status == "failed" and not retry(state):
                failed_step = name
                continue
            if ctx.halt.stopping.is_set():
                return None
            if name in self.batched:
                return Frontier(step, data, state, rundir_fields)
            state = await self._run_step(step, row, data, rundir_fields, state)
            if state.status == "pending":  # stopped mid-row: the rest stays pending
                return None
            if state.status == "failed":
                failed_step = name
            else:
                data[step.config.out_field] = state.outputs
                rundir_fields.add(step.config.out_field)
        if failed_step is None:
            ctx.stats.rows_done += 1
        return None

    async def _run_step(self, step: StepPlan, row: Row, data: dict[str, Any], rundir_fields: set[str],
                        state: StepState) -> StepState:
        """Run one step for one row: on its model, then on each fallback model in turn if the row fails
        (refused, rejected, out of retries, or its input does not suit the model). The row records which
        model made its image and why the earlier ones did not."""
        targets = [step, *step.fallbacks]
        first = int(state.info.get("target", 0))  # a resumed row goes on with the model it was using
        for number in range(first, len(targets)):
            target = targets[number]
            if number != first:
                attempt = {"model": state.info.get("model"), "error": state.info.get("error")}
                state = StepState(attempts=state.attempts, cost=state.cost, info={
                    "fallbacks": [*state.info.get("fallbacks", []), attempt],
                    **carried(state.info)})  # what the earlier model's calls may have cost stays charged
            if step.fallbacks:
                state.info["target"] = number
            state.info["provider"] = target.provider.name
            state.info["model"] = target.wire_model
            state = await self._run_target(target, row, data, rundir_fields, state)
            if state.status != "failed" or number == len(targets) - 1:
                break
            self.ctx.stats.forget_failure(state.info["error"]["kind"])  # counted again if the last model fails
        return state

    async def _run_target(self, target: StepPlan, row: Row, data: dict[str, Any], rundir_fields: set[str],
                          state: StepState) -> StepState:
        ctx = self.ctx
        slot = row.slot
        state.info.pop("error", None)
        try:
            inputs = await gather_inputs(
                target.config, target.spec, data, rundir_fields=rundir_fields, policy=ctx.inputs,
                rundir=ctx.rundir, session=ctx.session,
            )
        except InputError as exc:
            return self.fail(target, slot, state, exc)
        except Exception as exc:  # an odd value or a bug: this row fails, the run goes on
            return self.fail(target, slot, state, InternalError.of(exc))
        try:
            failure = await self._send_turns(target, row, inputs, state)
        except Stopped:
            self.save(target.config.name, slot, state)  # stays pending, with what it has
            return state
        except (BudgetReached, FatalError) as exc:
            return self._stop(target, slot, state, exc)
        except DiskFull as exc:  # the journal could not note a call before sending it: nothing was sent
            self._disk_full(exc)
            self.save(target.config.name, slot, state)  # stays pending, with what it has
            return state
        except PixelmillError as exc:  # after an answer (its images cannot be stored): its attempts are counted
            return self.fail(target, slot, state, exc)
        except Exception as exc:  # an odd value or a bug: this row fails with what it paid recorded, the run goes on
            return self.fail(target, slot, state, InternalError.of(exc))
        if failure is None:
            return state
        if isinstance(failure.error, FatalError):
            return self._stop(target, slot, state, failure.error)
        return self.fail(target, slot, state, failure.error, attempts=failure.attempts)

    async def _send_turns(self, step: StepPlan, row: Row, inputs: StepInputs, state: StepState) -> Failure | None:
        """Send every call of the step: each turn of a conversation, each call of a split `n`. A call already
        journaled as done (an earlier run) is not sent again. Returns the failure of a call given up on."""
        ctx = self.ctx
        index = row.record.index
        info = state.info
        turns = inputs.turns
        multi = len(turns) > 1
        history: list[ChatTurn] = []
        turn_log: list[dict[str, Any]] = info.setdefault("turns", []) if multi else []
        previous_images: list[InputImage] = []
        call_no = 0
        for t, turn in enumerate(turns):
            last = t == len(turns) - 1
            if t == 0:
                images = inputs.images
            else:
                extra = inputs.later_images[t - 1]
                images = extra if step.provider.chat else previous_images + extra
            task, plan = step.turn_plan(inputs.task, t, len(turns), len(images))
            turn_outputs: list[str] = []
            turn_texts: list[str] = []
            model_content: Any = None
            for number, params in enumerate(plan.calls):
                if call_no < state.calls_done:  # done in an earlier run
                    done = done_call(info, call_no)
                    turn_outputs.extend(done.get("outputs", []))
                    model_content = done.get("model_content")
                    call_no += 1
                    continue
                if ctx.halt.stopping.is_set():
                    raise Stopped()
                request = ImageRequest(
                    task=task,  # type: ignore[arg-type]
                    model=step.wire_model,
                    prompt=turn.prompt,
                    params=params,
                    images=images,
                    mask=inputs.mask if t == 0 else None,
                    history=list(history),
                    row=index,
                    timeout=step.timeout,
                )
                book = RowBook(ctx.journal, step.config.name, row.slot, state, call_no)
                if is_job_provider(step.provider):  # submit, journal the handle, poll (engine/jobs.py)
                    sending = self.jobs.send(step, request, params, book)
                else:
                    sending = self.sender.send(step, request, params, book)
                async with sending as answer:
                    if isinstance(answer, Failure):
                        return answer
                    result = answer.result
                    state.attempts += answer.attempts  # first: whatever happens next, the requests are recorded
                    # Settled before the images are written, so that a failed write cannot leave budget reserved.
                    cost = _bill(result) if _bill(result) is not None else \
                        actual_cost(step.spec, params, result.usage, len(result.images))
                    answer.settle(cost or 0.0)
                    ctx.stats.spent += cost or 0.0
                    state.cost += cost or 0.0
                    try:
                        paths = await self.store(step, row.key, index, state, plan, result)
                    except DiskFull as exc:
                        # Paid, and its images cannot be written: the row stays pending with the cost recorded,
                        # and a re-run sends the call again (a paid repeat, counted for the run's last line).
                        ctx.stats.unstored += 1
                        info["unstored"] = int(info.get("unstored", 0)) + 1
                        self._disk_full(exc)
                        raise Stopped() from None
                    # A chat's model turn goes back byte for byte (thought signatures cover the image bytes):
                    # its images are kept by path only when the files hold exactly those bytes (no conversion).
                    merge_result(info, result, params, cost, paths, call_no, multi,
                                 by_path=plan.convert_to is None)
                    turn_outputs.extend(paths)
                    if result.text:
                        turn_texts.append(result.text)
                    model_content = result.model_content
                    call_no += 1
                    state.calls_done = call_no
                    if last and number == len(plan.calls) - 1:  # the step's last call: one save marks it done
                        log_turn(turn_log, t, turn.prompt, turn_outputs, turn_texts, multi)
                        finish(state, turn_log, multi)
                    self.save(step.config.name, row.slot, state)
            log_turn(turn_log, t, turn.prompt, turn_outputs, turn_texts, multi)
            if not last:
                previous_images = await self.reload(turn_outputs)
                if step.provider.chat:
                    history.append(ChatTurn(turn.prompt, images, restore_content(model_content, ctx.store)))
        if state.status != "done":  # every call was made in an earlier run, which stopped before this point
            finish(state, turn_log, multi)
            self.save(step.config.name, row.slot, state)
        return None

    async def store(self, step: StepPlan, key: str, row: int, state: StepState, plan: WirePlan,
                    result: ImageResult) -> list[str]:
        store = self.ctx.store
        first = len(state.outputs)
        compression = step.config.params.compression
        paths: list[str] = []
        sizes: dict[str, int] = {}
        for i, image in enumerate(result.images):
            stem = image_stem(step.config.name_template or DEFAULT_NAME, step=step.config.name, key=key,
                              i=first + i, row=row, field=step.config.out_field)
            if len(image.data) < INLINE_WRITE and plan.convert_to is None:
                path, _, size = store.write(stem, image.data)  # cheaper than a thread hand-off for small files
            else:
                path, _, size = await asyncio.to_thread(
                    store.write, stem, image.data, convert_to=plan.convert_to, compression=compression,
                )
            paths.append(path)
            sizes[path] = size
        state.outputs.extend(paths)
        # What each file held when written: a re-run tells a file deleted or cut short since by one stat.
        state.info.setdefault("sizes", {}).update(sizes)
        self.ctx.stats.images += len(paths)
        return paths

    async def reload(self, paths: list[str]) -> list[InputImage]:
        """The images of an earlier turn, read back from RUNDIR: the next turn's input."""
        from pixelmill.reading.images import inspect_image

        out = []
        for path in paths:
            data = await asyncio.to_thread((self.ctx.rundir / path).read_bytes)
            out.append(inspect_image(data, name=path, field="previous turn", max_bytes=1 << 30))
        return out

    def _stop(self, step: StepPlan, slot: int, state: StepState, exc: BudgetReached | FatalError) -> StepState:
        """The budget is spent, or the provider refuses every call (auth, quota, missing model): the run stops,
        and this row stays pending, with what it has."""
        self.ctx.halt.stop(str(exc), exc.kind)
        self.save(step.config.name, slot, state)
        return state

    def _disk_full(self, exc: DiskFull) -> None:
        """The disk is full: the run stops sending (calls in flight finish if their images fit), and the store's
        reserve is freed so that the journal can record what is on disk."""
        self.ctx.halt.stop(str(exc), exc.kind)
        self.ctx.store.release_reserve()

    def save(self, step: str, slot: int, state: StepState) -> None:
        """Journal one step of a row. On a full disk: stop the run, free the reserve and try once more; a result
        that still cannot be recorded is counted (`RunStats.unrecorded`: a re-run sends those calls again)."""
        journal = self.ctx.journal
        try:
            journal.save(step, slot, state)
            return
        except DiskFull as exc:
            self._disk_full(exc)
        try:
            journal.save(step, slot, state)
        except DiskFull:
            self.ctx.stats.unrecorded += 1

    def upstream_failed(self, step: StepPlan, slot: int) -> None:
        """`step` failed for the row outside `run` (a batch line): the steps after it are recorded as not run."""
        names = [s.config.name for s in self.steps]
        for later in names[names.index(step.config.name) + 1:]:
            self.save(later, slot, StepState("failed", info={"error": {
                "kind": "upstream", "message": f"not run: step {step.config.name!r} failed for this row"}}))

    def fail(self, step: StepPlan, slot: int, state: StepState, exc: PixelmillError,
             attempts: int = 0) -> StepState:
        """Record the row as failed on this model, with the error and the `attempts` of the call that failed
        (0 when no request failed: a bad input, or an answer that could not be stored)."""
        error: dict[str, Any] = {"kind": exc.kind, "message": redact(str(exc), self.ctx.secrets)}
        state.attempts += attempts
        if isinstance(exc, ProviderError):
            error["http_status"] = exc.http_status
            if exc.code:
                error["code"] = exc.code
            if exc.request_id:
                state.info.setdefault("request_ids", []).append(exc.request_id)
            if isinstance(exc, Refused) and exc.reason:
                error["reason"] = exc.reason
        else:
            error["http_status"] = None
        if isinstance(exc, InputError) and exc.field:
            error["field"] = exc.field
        state.status = "failed"
        state.info["error"] = error
        state.info["attempts"] = state.attempts
        state.info["cost_usd"] = round(state.cost, 6)
        self.save(step.config.name, slot, state)
        self.ctx.stats.count_failure(exc.kind)
        return state


def _retry_all(state: StepState) -> bool:
    return True


def _retry_none(state: StepState) -> bool:
    return False


def _bill(result: ImageResult) -> float | None:
    """What the provider said the call cost (`extra["cost_usd"]`: a remote job's bill), when it said."""
    value = result.extra.get("cost_usd")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else None


def log_turn(turn_log: list[dict[str, Any]], t: int, prompt: str, outputs: list[str], texts: list[str],
              multi: bool) -> None:
    if multi and len(turn_log) <= t:
        turn_log.append({"prompt": prompt, "images": outputs, "text": "\n".join(texts) or None})


def finish(state: StepState, turn_log: list[dict[str, Any]], multi: bool) -> None:
    """Mark a step done: its outputs are the final turn's images (all images of a one-turn step)."""
    if multi:
        state.outputs = list(turn_log[-1]["images"])
    state.status = "done"
    state.info["attempts"] = state.attempts
    state.info["cost_usd"] = round(state.cost, 6)
