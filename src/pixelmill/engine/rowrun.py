"""One row's way through a run: each step in turn, each model of a step (fallbacks), each turn of a
conversation and each call of a split `n`, with the limiter, retries, the budget, image files and the journal.

`RowExecution` is the half of the `Runner` that handles one row; the runner itself owns set-up and the flow of
rows (engine/runner.py). Every call holds its concurrency slot until its images are on disk and journaled, so a
kill loses at most `--concurrency` paid calls.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelmill.config import Limits, RunConfig, StepConfig
from pixelmill.engine.budget import Budget
from pixelmill.engine.inputs import StepInputs, gather_inputs
from pixelmill.engine.limiter import Limiter
from pixelmill.engine.outcome import done_call, merge_result, restore_content
from pixelmill.engine.retry import RetryPolicy, RetryState, next_delay
from pixelmill.engine.stats import RunStats
from pixelmill.errors import (
    BudgetReached,
    FatalError,
    InputError,
    PixelmillError,
    ProviderError,
    RateLimited,
    Refused,
    redact,
)
from pixelmill.models.cost import actual_cost, expected_cost
from pixelmill.models.table import ModelSpec
from pixelmill.params import WirePlan
from pixelmill.providers.base import ChatTurn, ImageRequest, ImageResult, InputImage, Provider
from pixelmill.reading.images import InputPolicy
from pixelmill.reading.records import Record
from pixelmill.writing.journal import Journal, StepState
from pixelmill.writing.store import DEFAULT_NAME, ImageStore, image_stem

INLINE_WRITE = 256 * 1024  # images smaller than this are written on the event loop (bench/cpu.py: a thread
# hand-off costs more than the write; above it, large writes would stall other calls' answers)


@dataclass(slots=True)
class StepRuntime:
    config: StepConfig
    provider: Provider
    spec: ModelSpec
    wire_model: str  # the name sent: what the user wrote (a preset resolved), e.g. an Azure deployment
    plans: dict[tuple[str, bool], WirePlan] = field(default_factory=dict)
    fallbacks: list[StepRuntime] = field(default_factory=list)  # tried in order when this model fails a row

    def plan(self, task: str, single: bool = False) -> WirePlan:
        """The wire plan for `task`; `single` asks for one image (intermediate turns of a conversation)."""
        key = (task, single)
        if key not in self.plans:
            params = self.config.params
            if single:
                params = params.model_copy(update={"n": 1})
            self.plans[key] = self.provider.plan(self.spec, params, task)  # type: ignore[arg-type]
        return self.plans[key]


@dataclass(slots=True)
class Row:
    record: Record
    key: str
    states: dict[str, StepState]


class RowExecution:
    """Per-row work of the runner (a mixin: the runner provides the shared state declared here)."""

    config: RunConfig
    limits: Limits
    limiter: Limiter
    budget: Budget
    policy: RetryPolicy
    rng: random.Random
    stats: RunStats
    stopping: asyncio.Event
    secrets: tuple[str, ...]
    rundir: Path
    policy_inputs: InputPolicy
    steps: list[StepRuntime]
    _session: Any

    def _abort(self, reason: str, kind: str) -> None:
        raise NotImplementedError

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless the run is stopping: then the row stops where it is (pending)."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            return
        raise Stopped()

    # ------------------------------------------------------------ one row
    async def _process_row(self, journal: Journal, store: ImageStore, row: Row) -> None:
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
                journal.save(name, row.record.index, state)
                continue
            if state.status == "done":
                data[step.config.out_field] = state.outputs
                rundir_fields.add(step.config.out_field)
                continue
            if state.status == "failed" and not self.config.retry_failed:
                failed_step = name
                continue
            if self.stopping.is_set():
                return
            state = await self._run_step(journal, store, step, row, data, rundir_fields, state)
            if state.status == "pending":  # stopped mid-row: the rest stays pending
                return
            if state.status == "failed":
                failed_step = name
            else:
                data[step.config.out_field] = state.outputs
                rundir_fields.add(step.config.out_field)
        if failed_step is None:
            self.stats.rows_done += 1

    async def _run_step(
        self,
        journal: Journal,
        store: ImageStore,
        step: StepRuntime,
        row: Row,
        data: dict[str, Any],
        rundir_fields: set[str],
        state: StepState,
    ) -> StepState:
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
                    "fallbacks": [*state.info.get("fallbacks", []), attempt]})
            if step.fallbacks:
                state.info["target"] = number
            state.info["provider"] = target.provider.name
            state.info["model"] = target.wire_model
            state = await self._run_target(journal, store, target, row, data, rundir_fields, state)
            if state.status != "failed" or number == len(targets) - 1:
                break
            self.stats.rows_failed -= 1  # counted again if the last model fails too
            self.stats.failures[state.info["error"]["kind"]] -= 1
        return state

    async def _run_target(
        self,
        journal: Journal,
        store: ImageStore,
        step: StepRuntime,
        row: Row,
        data: dict[str, Any],
        rundir_fields: set[str],
        state: StepState,
    ) -> StepState:
        index = row.record.index
        state.info.pop("error", None)
        try:
            inputs = await gather_inputs(
                step.config, step.spec, data, rundir_fields=rundir_fields, policy=self.policy_inputs,
                rundir=self.rundir, session=self._session,
            )
        except InputError as exc:
            return self._fail(journal, step, index, state, exc)
        try:
            await self._send_turns(journal, store, step, row, inputs, state)
        except Stopped:
            journal.save(step.config.name, index, state)  # stays pending, with what it has
            return state
        except (BudgetReached, FatalError) as exc:
            kind = "budget" if isinstance(exc, BudgetReached) else exc.kind
            self._abort(str(exc), kind)
            journal.save(step.config.name, index, state)  # stays pending, with what it has
            return state
        except PixelmillError as exc:
            return self._fail(journal, step, index, state, exc)
        return state

    async def _send_turns(
        self, journal: Journal, store: ImageStore, step: StepRuntime, row: Row, inputs: StepInputs,
        state: StepState,
    ) -> None:
        """Send every call of the step: each turn of a conversation, each call of a split `n`. A call already
        journaled as done (an earlier run) is not sent again."""
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
            task = "edit" if images or (t > 0 and not step.provider.chat) or history else inputs.task
            if step.provider.chat and history:
                task = "edit"
            plan = step.plan(task, single=not last)
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
                if self.stopping.is_set():
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
                    timeout=self.limits.timeout,
                )
                result, attempts, reserved = await self._call(step, request, params)
                # The call keeps its concurrency slot until its images are on disk and journaled: so the
                # calls a kill can lose (paid, not recorded) are never more than --concurrency.
                try:
                    # Settled before the images are written, so that a failed write cannot leave budget reserved.
                    cost = actual_cost(step.spec, params, result.usage, len(result.images))
                    self.budget.settle(reserved, cost or 0.0)
                    self.stats.spent += cost or 0.0
                    state.attempts += attempts
                    state.cost += cost or 0.0
                    paths = await self._store(store, step, row.key, index, state, plan, result)
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
                        _log_turn(turn_log, t, turn.prompt, turn_outputs, turn_texts, multi)
                        _finish(state, turn_log, multi)
                    journal.save(step.config.name, index, state)
                finally:
                    self.limiter.release()
            _log_turn(turn_log, t, turn.prompt, turn_outputs, turn_texts, multi)
            if not last:
                previous_images = await self._reload(store, turn_outputs)
                if step.provider.chat:
                    history.append(ChatTurn(turn.prompt, images, restore_content(model_content, store)))
        if state.status != "done":  # every call was made in an earlier run, which stopped before this point
            _finish(state, turn_log, multi)
            journal.save(step.config.name, index, state)

    async def _call(
        self, step: StepRuntime, request: ImageRequest, params: dict[str, Any]
    ) -> tuple[ImageResult, int, float]:
        """One call with its retries. Returns the result, the attempts made, and the budget reserved. On success
        the call still holds its concurrency slot: the caller releases it once the result is recorded."""
        n_images = int(params.get("n", params.get("num_images_per_prompt", 1)) or 1)
        expected = expected_cost(step.spec, params, n_images, len(request.prompt), len(request.images))
        reserve = expected.high if expected else 0.0
        retry = RetryState.start()
        attempts = 0
        while True:
            if self.stopping.is_set() and attempts:
                raise Stopped()
            await self.budget.reserve(reserve)  # waits while calls in flight hold the rest of the budget
            try:
                await self.limiter.admit(n_images, self.stopping)
            except BaseException:
                self.budget.settle(reserve, 0.0)
                raise
            if self.stopping.is_set():  # stopped while waiting for a slot or a pause: send nothing more
                self.limiter.release()
                self.budget.settle(reserve, 0.0)
                raise Stopped()
            attempts += 1
            self.stats.requests += 1
            self.stats.in_flight += 1
            answered = False
            try:
                result = await step.provider.call(request, step.spec)
                answered = True
            except ProviderError as exc:
                self.budget.settle(reserve, 0.0)
                if isinstance(exc, RateLimited):
                    self.limiter.on_rate_limited(exc.retry_after)
                    self.stats.rate_limited += 1
                delay = next_delay(self.policy, retry, exc, self.rng)
                if delay is None:
                    exc.attempts = attempts  # type: ignore[attr-defined]
                    raise
                self.stats.retries += 1
                await self._pause(delay)
                continue
            except BaseException:
                self.budget.settle(reserve, 0.0)
                raise
            finally:
                self.stats.in_flight -= 1
                if not answered:
                    self.limiter.release()
            if not result.images:
                self.limiter.release()
                self.budget.settle(reserve, 0.0)
                raise Refused(
                    f"the provider answered without an image (finish reason {result.finish_reason})",
                    reason=result.finish_reason or "no_image",
                )
            return result, attempts, reserve

    async def _store(self, store: ImageStore, step: StepRuntime, key: str, row: int, state: StepState,
                     plan: WirePlan, result: ImageResult) -> list[str]:
        first = len(state.outputs)
        compression = step.config.params.compression
        paths: list[str] = []
        for i, image in enumerate(result.images):
            stem = image_stem(step.config.name_template or DEFAULT_NAME, step=step.config.name, key=key,
                              i=first + i, row=row, field=step.config.out_field)
            if len(image.data) < INLINE_WRITE and plan.convert_to is None:
                path, _ = store.write(stem, image.data)  # cheaper than a thread hand-off for small files
            else:
                path, _ = await asyncio.to_thread(
                    store.write, stem, image.data, convert_to=plan.convert_to, compression=compression,
                )
            paths.append(path)
        state.outputs.extend(paths)
        self.stats.images += len(paths)
        return paths

    async def _reload(self, store: ImageStore, paths: list[str]) -> list[InputImage]:
        from pixelmill.reading.images import inspect_image

        out = []
        for path in paths:
            data = await asyncio.to_thread((store.rundir / path).read_bytes)
            out.append(inspect_image(data, name=path, field="previous turn", max_bytes=1 << 30))
        return out

    def _fail(self, journal: Journal, step: StepRuntime, index: int, state: StepState,
              exc: PixelmillError) -> StepState:
        error: dict[str, Any] = {"kind": exc.kind, "message": redact(str(exc), self.secrets)}
        if isinstance(exc, ProviderError):
            error["http_status"] = exc.http_status
            if exc.code:
                error["code"] = exc.code
            if exc.request_id:
                state.info.setdefault("request_ids", []).append(exc.request_id)
            state.attempts += int(getattr(exc, "attempts", 1))
            reason = getattr(exc, "reason", None)
            if reason:
                error["reason"] = reason
        else:
            error["http_status"] = None
        if isinstance(exc, InputError) and exc.field:
            error["field"] = exc.field
        state.status = "failed"
        state.info["error"] = error
        state.info["attempts"] = state.attempts
        state.info["cost_usd"] = round(state.cost, 6)
        journal.save(step.config.name, index, state)
        self._count_failure(exc.kind)
        return state

    def _count_failure(self, kind: str) -> None:
        self.stats.rows_failed += 1
        self.stats.failures[kind] = self.stats.failures.get(kind, 0) + 1


def _log_turn(turn_log: list[dict[str, Any]], t: int, prompt: str, outputs: list[str], texts: list[str],
              multi: bool) -> None:
    if multi and len(turn_log) <= t:
        turn_log.append({"prompt": prompt, "images": outputs, "text": "\n".join(texts) or None})


def _finish(state: StepState, turn_log: list[dict[str, Any]], multi: bool) -> None:
    """Mark a step done: its outputs are the final turn's images (all images of a one-turn step)."""
    if multi:
        state.outputs = list(turn_log[-1]["images"])
    state.status = "done"
    state.info["attempts"] = state.attempts
    state.info["cost_usd"] = round(state.cost, 6)


class Stopped(PixelmillError):
    """Raised inside a row when the run is stopping: the row stays pending."""

    kind = "interrupted"
