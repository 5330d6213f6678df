"""A run with batch steps (`--batch`, a pipeline step's `batch: true`): rows go through a provider's batch API
(providers/batchwire.py: `BatchWire`; `wire_for` picks the provider's) for those steps, and through the
synchronous engine for the others.

Order of a run, so that a crash anywhere neither loses a paid line nor creates a second batch for a row:
1. recover what an earlier run left: a batch still `building` never reached the provider and is dropped (its
   rows free); an `uploaded` one may have been created by a run killed before it journaled the answer, so the
   provider's batches are listed for its name (`pixelmill-<RUNDIR's id>-<its number>`) and it is adopted when
   found, created only when not;
2. a frontier pass (frontier.py): the source is read in order and every row is moved as far as it can go now:
   its synchronous steps are run (with the engine's limits), and at a batch step with work left it becomes one
   JSONL line of that step's open batch (building.py: written to disk as it is made, journaled in chunks as the
   file grows, a row already live fails the insert); a file is closed at the provider's limits, uploaded (file
   id journaled) and its batch created (batch id journaled); at the end of the pass the open batches are sent;
3. `--detach` stops once a pass has run and a poll of the live batches found none ended (exit 4: "submitted;
   run the same command again to collect");
4. wait: each live batch is polled, its state and line counts shown, while a pass may be running;
5. collect (collect.py): an ended batch's answers are mapped to their rows and journaled as the synchronous path
   journals a call (done, failed, or left pending when the batch left it unanswered), and the batch is marked
   collected, which frees its rows; then another pass runs (passes never overlap: requests made while one runs
   coalesce into the next), so a row goes on to its next step, or its conversation's next turn, as soon as its
   own batch is back. The run ends when no batch is live and a pass found nothing more to send.

A multi-turn row (a conversation) goes one turn per batch round: turn t's line carries turn t-1's images.
A line that comes back unanswered is sent again in a later batch, at most `ROUNDS` batches per run.

With --max-cost, each line reserves its maximum as it joins a batch and a batch is never built past the budget
(engine/batch/budget.py: split, wait for bills, or stop with the budget's line).

Refused before anything is sent (ConfigError): a step marked `batch: true` (or the one step of
generate/edit with --batch) whose provider has no batch API pixelmill drives (OpenAI's Batch API and Gemini Batch
Mode, providers/gemini/batch.py, are; Azure's batch API takes no image requests; Vertex AI's batch prediction
reads Cloud Storage or BigQuery), or that has fallback models. `--batch` on a pipeline batches every step that
can be; the others run synchronously. A row whose step would need more than one call for one turn (`n` above one
call's) fails with that reason; the other rows are batched.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from pixelmill.config import RunConfig
from pixelmill.engine.batch.budget import BatchBudget
from pixelmill.engine.batch.building import ROUNDS, StepBatches, batch_name
from pixelmill.engine.batch.collect import Collector
from pixelmill.engine.batch.frontier import FrontierPass
from pixelmill.engine.context import RunContext
from pixelmill.engine.plan import RunPlan, StepPlan
from pixelmill.engine.row import RowExecutor
from pixelmill.errors import ConfigError
from pixelmill.providers.base import Provider
from pixelmill.providers.batchwire import BatchSummary, BatchWire
from pixelmill.providers.gemini.batch import GeminiBatchWire
from pixelmill.providers.gemini.provider import GeminiProvider
from pixelmill.providers.openai.batch import OpenAIBatchWire
from pixelmill.providers.openai.provider import AzureProvider, OpenAIProvider
from pixelmill.writing.batches import BatchBook, BatchEntry

# What the next run will be told: --detach, and Ctrl-C while waiting.
DETACHED = "submitted; run the same command again to collect"
VERTEX_HOST = "aiplatform.googleapis.com"  # Vertex AI's Gemini endpoints: no Batch Mode through the File API


def check_batch(plan: RunPlan, config: RunConfig) -> frozenset[str]:
    """The steps a run sends through batch APIs (none: a run without batch steps); refuses, before anything is
    sent, what batch mode does not do."""
    pipeline = config.pipeline
    batched: list[str] = []
    for step in plan.steps:
        asked = step.config.batch or (config.batch and not pipeline)
        problem = _unbatchable(step, "`batch: true`" if step.config.batch else "--batch")
        if problem is None and (asked or config.batch):
            batched.append(step.config.name)
        elif problem is not None and asked:
            where = f"step {step.config.name!r}: batch: " if pipeline else "--batch: "
            raise ConfigError(f"{where}{problem}")
    if config.batch and pipeline and not batched:
        raise ConfigError("--batch: no step of this pipeline can be batched (OpenAI and Gemini steps without "
                          "fallback models can); run without --batch")
    return frozenset(batched)


def _unbatchable(step: StepPlan, flag: str = "--batch") -> str | None:
    """Why `step` cannot be batched, or None; `flag` is what asked for it (the fix names it)."""
    if isinstance(step.provider, AzureProvider):
        return f"Azure OpenAI's batch API takes no image requests (reference: async-apis.md); run without {flag}"
    if isinstance(step.provider, GeminiProvider) and VERTEX_HOST in urlsplit(step.provider.base_url).netloc:
        return ("Vertex AI's batch prediction reads its requests from Cloud Storage or BigQuery, not from the Gemini "
                "API's File API; pixelmill drives Gemini Batch Mode of the Gemini API "
                f"(generativelanguage.googleapis.com): drop --base-url, or run without {flag}")
    if wire_for(step.provider) is None:
        return (f"{step.provider.name} has no batch API that pixelmill drives (OpenAI's Batch API and Gemini Batch "
                f"Mode only); use --provider openai or gemini, or run without {flag}")
    if step.fallbacks:
        return f"a step with fallback models cannot be batched; drop the fallbacks or {flag}"
    if step.pool:
        return (f"a batch is sent through a single key, while deployments spread calls sent one by one; run without "
                f"{flag}, or without deployments")
    return None


def wire_for(provider: Provider) -> BatchWire | None:
    """The batch API of `provider`, or None when it has none pixelmill drives."""
    if isinstance(provider, OpenAIProvider) and not isinstance(provider, AzureProvider):
        return OpenAIBatchWire(provider)
    if isinstance(provider, GeminiProvider):
        return GeminiBatchWire(provider)
    return None


class BatchFlow:
    """Carries the run's rows through its synchronous and batch steps: see the module docstring."""

    def __init__(self, ctx: RunContext, plan: RunPlan, rows: RowExecutor, *, detach: bool,
                 notice: Callable[[str], None], id_field: str | None) -> None:
        self.ctx = ctx
        self.plan = plan
        self.rows = rows  # `batched` names the batch steps; its `store`, `save` and `fail` write as sync runs do
        self.detach = detach
        self.notice = notice
        self.id_field = id_field
        self.book = BatchBook(ctx.journal)
        self.folder = ctx.rundir / ".pixelmill" / "batches"
        self.poll = ctx.config.limits.batch_poll
        self.leftovers: Counter[tuple[str, str]] = Counter()  # lines back unanswered in this run
        self.money = BatchBudget(rows.sender.admission.budget, self.book, ctx.stats)  # --max-cost
        # One builder per step a batch API can take (live batches of a step batched no more are still collected).
        self.batches: dict[str, StepBatches] = {}
        for number, step in enumerate(plan.steps):
            wire = wire_for(step.provider) if _unbatchable(step) is None else None
            if wire is not None:
                self.batches[step.config.name] = StepBatches(ctx, step, number, wire, rows, self.book, self.folder,
                                                             notice, self.leftovers, self.money)
        self.collector = Collector(ctx, plan.steps, rows, self.book, self.folder, notice, self.leftovers,
                                   self.money)
        self.passes = 0
        self._shown: dict[int, str] = {}  # each batch's progress line last shown

    # ------------------------------------------------------------ the run
    async def run(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        await self._recover()
        if self.detach:
            await self._detached()
        else:
            await self._attended()
        halt = self.ctx.halt
        if not halt.stopping.is_set() and self.money.exhausted() and not self.book.batches(live_only=True):
            # Rows held back by the budget, and no batch left whose bills could free budget for them.
            halt.stop(self.money.reached_message(), "budget")
        held = sum(b.held for b in self.batches.values())
        if held:
            self.notice(f"{held} row(s) stay pending: {ROUNDS} batches of this run left them unanswered; run the "
                        "same command again to send them again")
        left = len(self.book.batches(live_only=True))
        if left and halt.kind == "interrupted" and halt.reason is not None:
            # Stopping the wait stops nothing at the provider: the batches run on and are paid for.
            halt.reason += (f"; {left} batch(es) keep running at the provider (`pixelmill status` shows them): run "
                            "the same command again to collect them, or `pixelmill cancel RUNDIR` to cancel them")

    async def _attended(self) -> None:
        """Passes and polls side by side until no batch is live and a pass found nothing more to send."""
        stop = self.ctx.halt.stopping
        stopping = asyncio.create_task(stop.wait())
        running: asyncio.Task[None] | None = None
        wanted = True  # a pass is due: at the start, then after each collect
        interval = 0.25  # doubled after each poll up to --batch-poll's; back to the start when a batch is sent
        sent = 0
        try:
            while not stop.is_set():
                if running is not None and running.done():
                    running.result()
                    running = None
                if wanted and running is None:
                    wanted = False
                    running = asyncio.create_task(self._pass())
                live = self._submitted()
                if not live and running is None and not wanted:
                    return
                if await self._poll(live):
                    wanted, interval = True, 0.25
                    continue
                now_sent = sum(b.sent for b in self.batches.values())
                if now_sent != sent:
                    sent, interval = now_sent, 0.25
                waits: list[asyncio.Future[Any]] = [stopping] + ([running] if running is not None else [])
                await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                interval = min(interval * 2, self.poll)
            if running is not None:
                await running  # it drains its calls in flight and drops its open batches
        finally:
            stopping.cancel()
            if running is not None and not running.done():
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)

    async def _detached(self) -> None:
        """--detach: collect what has ended, move rows on, send; exit 4 while any batch is live."""
        stop = self.ctx.halt.stopping
        while not stop.is_set():
            await self._pass()
            live = self._submitted()
            if stop.is_set() or not live or not await self._poll(live):
                break
        live = self.book.batches(live_only=True)
        if live and not stop.is_set():
            self.ctx.halt.stop(f"{len(live)} batch(es) {DETACHED} (or `pixelmill status` to follow them)",
                               "submitted")

    async def collect(self) -> None:
        """Wait for the live batches and collect them, sending nothing (`pixelmill cancel`, once it has cancelled
        them at the provider and dropped those never created: engine/batch/cancel.py)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stop = self.ctx.halt.stopping
        interval = 0.25
        while not stop.is_set():
            live = self._submitted()
            if not live:
                return
            if not await self._poll(live):
                try:
                    await asyncio.wait_for(stop.wait(), interval)
                except TimeoutError:
                    interval = min(interval * 2, self.poll)

    async def _pass(self) -> None:
        self.money.new_round()
        for batches in self.batches.values():
            batches.resubmits.new_round()
        await FrontierPass(self.ctx, self.plan.steps, self.rows, self.batches, self.book, id_field=self.id_field,
                           concurrency=self.plan.concurrency, first=self.passes == 0, notice=self.notice).run()
        self.passes += 1
        again = sum(b.resubmits.round for b in self.batches.values())
        if again:
            self.notice(f"resubmitted {again} row(s) that an expired, cancelled or failed batch left unanswered")

    def _submitted(self) -> list[BatchEntry]:
        return [b for b in self.book.batches(live_only=True) if b.state == "submitted"]

    # ------------------------------------------------------------ 1. recover
    async def _recover(self) -> None:
        for entry in self.book.batches(live_only=True):
            if entry.state == "building":
                self.book.drop(entry.seq)
            elif entry.state == "uploaded" and (batches := self.batches.get(entry.step)) is not None:
                assert entry.file_id is not None
                found = await batches.wire.find(batch_name(self.book, entry.seq), entry.file_id)
                if found is not None:
                    self.notice(f"batch {entry.seq}: found {found.id} at the provider (created by a run stopped "
                                "before it was recorded); not created again")
                    self.book.submitted(entry.seq, found.id, found.as_json())
                else:
                    await batches.create(entry.seq, entry.file_id, entry.task)

    # ------------------------------------------------------------ 4. wait, 5. collect
    async def _poll(self, live: list[BatchEntry]) -> int:
        """Poll each live batch once and collect those that ended. Returns how many were collected."""
        shown = self._shown
        collected = 0
        for entry in live:
            batches = self.batches.get(entry.step)
            if batches is None:  # its step is configured no more, or on a provider without batches: left live
                continue
            assert entry.batch_id is not None
            summary = await batches.wire.get(entry.batch_id)
            self.book.note(entry.seq, summary.as_json())
            line = _progress(entry, summary)
            if shown.get(entry.seq) != line:
                shown[entry.seq] = line
                self.notice(line)
            if summary.ended:
                await self.collector.collect(entry, summary, batches.wire, entry.task or batches.task)
                collected += 1
        return collected


def _progress(entry: BatchEntry, summary: BatchSummary) -> str:
    return (f"batch {entry.seq} ({entry.batch_id}): {summary.status}, {summary.completed} done, "
            f"{summary.failed} failed of {entry.lines} lines")
