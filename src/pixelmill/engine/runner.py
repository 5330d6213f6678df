"""The run: read records, send each row's steps through the limiter to its provider, store images, journal.

Shape of a run:
- one producer reads the source in chunks, gives every record its key (through the journal, so a resume names
  files the same way) and queues the rows that still have work, through a bounded queue (memory stays flat);
- workers take a row and carry it through every step in turn (engine/rowrun.py): step 2 of one row runs while
  step 1 of a later row is in flight, with no barrier between steps or batches;
- every call passes the limiter (concurrency slot, pacing, 429 pause, budget reservation), is retried by the
  policy, and when it succeeds its images are written and then the journal says so;
- an abort (auth, quota, missing model, budget, Ctrl-C) stops new calls at once, lets calls in flight finish
  (bounded), and leaves the rest pending for a re-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from pixelmill.config import ModelRef, RunConfig, StepConfig
from pixelmill.engine.budget import Budget
from pixelmill.engine.limiter import Limiter
from pixelmill.engine.retry import RetryPolicy
from pixelmill.engine.rowrun import Row, RowExecution, StepRuntime
from pixelmill.engine.stats import RunStats
from pixelmill.errors import (
    ConfigError,
    redact,
)
from pixelmill.models.cost import expected_cost
from pixelmill.models.table import ModelSpec, ModelTable, builtin_table
from pixelmill.providers.base import (
    Provider,
    ProviderSettings,
    provider_class,
)
from pixelmill.reading.images import InputPolicy
from pixelmill.reading.records import Record, default_key, read_records, sanitize_key
from pixelmill.writing.journal import Journal, StepState
from pixelmill.writing.store import ImageStore

CHUNK = 256



@dataclass(slots=True)
class RunOutcome:
    aborted: str | None  # why the run stopped early, or None
    abort_kind: str | None
    stats: RunStats


class Runner(RowExecution):
    def __init__(
        self,
        config: RunConfig,
        *,
        env: Mapping[str, str],
        stats: RunStats | None = None,
        notice: Callable[[str], None] = lambda _: None,
        table: ModelTable | None = None,
    ) -> None:
        self.config = config
        self.env = env
        self.stats = stats or RunStats()
        self.notice = notice
        self.table = table or builtin_table()
        if config.models_file is not None:
            self.table = self.table.merged(config.models_file)
        self.rundir = config.output
        self.steps: list[StepRuntime] = []
        self.limits = config.limits
        self.limiter = Limiter(self.limits.concurrency, self.limits.rpm, self.limits.ipm)
        self.budget = Budget(self.limits.max_cost)
        self.policy = RetryPolicy(self.limits.max_retries, self.limits.max_billed_retries, self.limits.deadline,
                                  self.limits.retry_base, self.limits.retry_cap)
        self.rng = random.Random()
        self.stopping = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self.abort_reason: str | None = None
        self.abort_kind: str | None = None
        self.secrets: tuple[str, ...] = ()
        self._session: Any = None
        self.policy_inputs = InputPolicy(
            base_dir=config.source.parent, allow_private_urls=config.allow_private_urls
        )

    # ------------------------------------------------------------ set-up (ConfigError here: nothing sent)
    def prepare(self) -> None:
        """Build providers, look up models and plan every step's parameters: everything that can be wrong with
        the configuration is found here, before the journal is touched or a request is sent."""
        for step in self.config.steps:
            try:
                runtime = self._target(step, step.model)
                runtime.fallbacks = [self._target(step, ref) for ref in step.fallback]
            except ConfigError as exc:
                where = f"{self.config.origin}: " if self.config.origin else ""
                raise ConfigError(f"{where}step {step.name!r}: {exc}") from None
            self.steps.append(runtime)
        # Local models batch rows inside the provider: it needs more rows in flight than a cloud API's
        # --concurrency to fill its batches (and has no rate limit to respect).
        wanted = max([int(getattr(s.provider, "preferred_concurrency", 0)) for s in self.steps] or [0])
        if wanted > self.limits.concurrency:
            self.limiter = Limiter(wanted, self.limits.rpm, self.limits.ipm)
        names = [s.config.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ConfigError(f"step names must be unique; got {names}")

    def _target(self, step: StepConfig, ref: ModelRef) -> StepRuntime:
        """One model a step can use: its provider, rules and wire plans, checked now."""
        settings = ProviderSettings(
            base_url=ref.base_url, api_key=self.config.api_key, api_version=ref.api_version,
            options=dict(ref.options),
            connect_timeout=float(ref.options.get("connect_timeout", 30.0)),  # seconds to open a connection
        )
        provider = provider_class(ref.provider)(settings, self.env)
        model = self.table.resolve_preset(ref.provider, ref.model)
        spec = self._spec(provider, model, ref.base_model)
        runtime = StepRuntime(step, provider, spec, model)
        tasks = ["generate", "edit"] if step.task == "auto" else [step.task]
        for task in tasks:
            if task not in spec.tasks:
                raise ConfigError(f"{spec.name} cannot {task}; it can {', '.join(spec.tasks)}")
            for line in runtime.plan(task).notices:
                self.notice(f"step {step.name!r}, {model}: {line}")
        if step.mask_field and spec.known and not spec.mask:
            raise ConfigError(f"{spec.name} takes no mask (--mask-field {step.mask_field}); models with masks: "
                              + ", ".join(s.name for s in self.table.specs.values() if s.mask))
        if (notice := spec.retirement_notice()) is not None:
            self.notice(notice)
        if not spec.known:
            self.notice(f"{model} is not in the model table: its rules are not checked and its cost is unknown")
        if self.limits.max_cost is not None and expected_cost(spec, runtime.plan(tasks[0]).params, 1) is None:
            raise ConfigError(
                f"no price is known for {spec.name}, so --max-cost cannot be kept; "
                "add its price in a --models-file, or run without --max-cost"
            )
        self.secrets += provider.secrets()
        return runtime

    def _spec(self, provider: Provider, model: str, base_model: str | None) -> ModelSpec:
        lookup = base_model or model
        spec = self.table.get(lookup)
        if spec is None:
            spec = provider.spec_for(lookup)
        if spec.known and spec.family != provider.family:
            raise ConfigError(f"{spec.name} is a {spec.family} model; it cannot be used with provider "
                              f"{provider.name!r}")
        return spec

    # ------------------------------------------------------------ the run
    async def run(self) -> RunOutcome:
        if not self.steps:
            self.prepare()
        journal = Journal.open(self.rundir)
        try:
            journal.bind(self.config.fingerprint(), self.config.snapshot(), restart=self.config.restart)
            if self.config.restart:
                _remove_images(self.rundir)
            store = ImageStore(self.rundir)
            # For input images given as URLs: opening a session makes no connection, so one is opened per run.
            self._session = aiohttp.ClientSession()
            await asyncio.to_thread(store.sweep_temporaries)
            self.stats.spent_before = journal.spent()
            self.budget.spent = self.stats.spent_before
            if self.budget.limit is not None and self.budget.spent >= self.budget.limit:
                self._abort(f"budget of ${self.budget.limit:.2f} already spent "
                            f"(${self.budget.spent:.4f}); raise --max-cost to continue", "budget")
            else:
                await self._run_rows(journal, store)
        finally:
            for step in self.steps:
                with contextlib.suppress(Exception):
                    await step.provider.aclose()
            if self._session is not None:
                await self._session.close()
            journal.close()
        return RunOutcome(self.abort_reason, self.abort_kind, self.stats)

    def stop(self, reason: str, kind: str = "interrupted") -> None:
        """Stop sending (Ctrl-C): calls in flight finish and are recorded; the rest stays pending."""
        self._abort(reason, kind)

    def stop_now(self, reason: str) -> None:
        """Stop at once (a second Ctrl-C): calls in flight are abandoned (a re-run sends them again); what is
        journaled stays, and the output is still written."""
        self._abort(reason, "interrupted")
        self._hard_stop.set()

    def _abort(self, reason: str, kind: str) -> None:
        if self.abort_reason is None:
            self.abort_reason = redact(reason, self.secrets)
            self.abort_kind = kind
        self.stopping.set()

    async def _run_rows(self, journal: Journal, store: ImageStore) -> None:
        workers = self.limiter.concurrency * 2 + 2
        queue: asyncio.Queue[Row | None] = asyncio.Queue(maxsize=max(CHUNK, workers * 2))
        producer = asyncio.create_task(self._produce(journal, queue, workers))
        tasks = [asyncio.create_task(self._work(journal, store, queue)) for _ in range(workers)]
        stopping = asyncio.create_task(self.stopping.wait())
        everything: asyncio.Future[Any] = asyncio.gather(*tasks)
        try:
            await asyncio.wait([producer, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not self.stopping.is_set():
                producer.result()
                await asyncio.wait([everything, stopping], return_when=asyncio.FIRST_COMPLETED)
                if not self.stopping.is_set():
                    everything.result()
                    return
            # Stopping: calls in flight finish and are recorded (bounded by drain_timeout, or cut short by
            # stop_now); workers see `stopping` and take nothing new.
            producer.cancel()
            await self._drain(tasks, asyncio.create_task(self._hard_stop.wait()))
        finally:
            for task in (producer, stopping, *tasks):
                task.cancel()
            await asyncio.gather(producer, stopping, everything, return_exceptions=True)

    async def _drain(self, tasks: list[asyncio.Task[None]], hurry: asyncio.Task[Any]) -> None:
        """Wait for the workers to finish their calls in flight, until drain_timeout or a second stop."""
        deadline = time.monotonic() + self.limits.drain_timeout
        pending: set[asyncio.Task[Any]] = {t for t in tasks if not t.done()}
        while pending and not hurry.done():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            _, pending = await asyncio.wait([*pending, hurry], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(hurry)
        hurry.cancel()

    async def _produce(self, journal: Journal, queue: asyncio.Queue[Row | None], workers: int) -> None:
        try:
            chunk: list[Record] = []
            for record in self._records():
                chunk.append(record)
                if len(chunk) >= CHUNK:
                    await self._enqueue(journal, chunk, queue)
                    chunk = []
                if self.stopping.is_set():
                    return
            if chunk:
                await self._enqueue(journal, chunk, queue)
        finally:
            if not self.stopping.is_set():
                for _ in range(workers):
                    await queue.put(None)

    def _records(self) -> Any:
        limit = self.config.limit
        for record in read_records(self.config.source, self.config.source_format):
            if limit is not None and record.index >= limit:
                return
            yield record

    async def _enqueue(self, journal: Journal, chunk: list[Record], queue: asyncio.Queue[Row | None]) -> None:
        wanted = [(r.index, self._key(r), r.digest()) for r in chunk]
        keys, changed = journal.assign_keys(wanted)
        for row in changed:
            self.notice(f"row {row} changed since the last run: its earlier results are set aside and it is sent "
                        "again")
        rows = [r.index for r in chunk]
        states = {s.config.name: journal.states(s.config.name, rows) for s in self.steps}
        for record in chunk:
            self.stats.rows_read += 1
            mine = {name: by_row[record.index] for name, by_row in states.items() if record.index in by_row}
            if record.error is not None:
                if not mine:
                    error = {"kind": "input", "message": record.error}
                    for step in self.steps:
                        journal.save(step.config.name, record.index,
                                     StepState("failed", info={"error": error}))
                self._count_failure("input")
                continue
            if self._finished(mine):
                self.stats.rows_skipped += 1
                continue
            await queue.put(Row(record, keys[record.index], mine))
            if self.stopping.is_set():
                return

    def _key(self, record: Record) -> str:
        if self.config.id_field and record.data is not None:
            value = record.data.get(self.config.id_field)
            if value is not None and str(value).strip():
                return sanitize_key(value)
        return default_key(record.index)

    def _finished(self, states: dict[str, StepState]) -> bool:
        for step in self.steps:
            state = states.get(step.config.name)
            if state is None or state.status == "pending":
                return False
            if state.status == "failed":
                return not self.config.retry_failed
        return True

    async def _work(self, journal: Journal, store: ImageStore, queue: asyncio.Queue[Row | None]) -> None:
        while not self.stopping.is_set():
            item = await queue.get()
            if item is None:
                return
            await self._process_row(journal, store, item)

def _remove_images(rundir: Any) -> None:
    import shutil

    images = rundir / "images"
    if images.is_dir():
        shutil.rmtree(images)
