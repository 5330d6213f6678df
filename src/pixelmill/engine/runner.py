"""The flow of rows: read records, hand each row with work left to a worker, drain, stop.

Shape of a run:
- the run is planned first (engine/plan.py: providers, models, wire plans; nothing opened or sent); with --ray
  the providers' calls move onto a Ray cluster (pixelmill/cluster/: only the calls; all below stays here); then
  `Runner.run` opens the journal, the image store and a URL session and puts them, with the limits, counters
  and the stop signal, in one `RunContext` (engine/context.py) that it passes down;
- one producer reads the source in chunks, gives every record its key (through the journal, so a resume names
  files the same way) and queues the rows that still have work, through a bounded queue (memory stays flat);
- workers take a row and carry it through every step in turn (engine/row.py): step 2 of one row runs while
  step 1 of a later row is in flight, with no barrier between steps or batches;
- every call is let in by one ticket (engine/admission.py: budget reservation, concurrency slot, pacing, 429
  pause), retried by the policy (engine/call.py, engine/retry.py), and when it succeeds its images are written
  and then the journal says so, before its slot is given back;
- an abort (auth, quota, missing model, budget, Ctrl-C, a full disk, a systematic failure: the first calls of a
  step all failing the same way, engine/systematic.py) stops new calls at once, lets calls in flight finish
  (bounded), and leaves the rest pending for a re-run;
- remote jobs (engine/jobs.py): a stop submits nothing more and collects the jobs that finish within the drain
  timeout; jobs still running stay journaled (their rows pending) and the run's last line says how many, for a
  re-run to collect (never to submit again); a budget already spent does not keep a re-run from collecting them
  (collecting is free: the jobs are in the spend already);
- the disk: the image store sets a reserve of space aside before anything is sent (a disk already full stops
  the run there) and frees it when the disk fills up, so that what was paid is recorded (engine/row.py); the
  run's last line says how many paid answers could not be written (their rows are sent again by a re-run);
- rows done in an earlier run are counted done only while their files are whole (engine/recheck.py): a missing
  or truncated file makes its step again, or with --report-broken is only reported;
- a configuration that changed some steps (writing/fingerprints.py) has the results of those steps, and of the
  steps that read their outputs, discarded by the journal's `bind` before anything is read, and their image
  files removed here; --restart removes every image;
- an exception that escapes a row's own handling (engine/row.py fails the row for the exceptions it sees) stops
  the run with the exception named, like an abort, instead of ending it without an output.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from pixelmill.config import RunConfig
from pixelmill.engine.admission import Admission
from pixelmill.engine.batch.flow import BatchFlow, check_batch
from pixelmill.engine.budget import Budget
from pixelmill.engine.call import Sender
from pixelmill.engine.context import Halt, RunContext
from pixelmill.engine.limiter import Limiter
from pixelmill.engine.plan import RunPlan, spread_on_cluster
from pixelmill.engine.recheck import FileCheck
from pixelmill.engine.retry import RetryPolicy
from pixelmill.engine.row import Row, RowExecutor
from pixelmill.engine.stats import RunStats
from pixelmill.engine.systematic import FailureWatch
from pixelmill.engine.workers import RowQueue, flow_rows, source_records
from pixelmill.errors import ConfigError, DiskFull, ProviderError, redact
from pixelmill.netpolicy import strip_userinfo
from pixelmill.reading.images import InputPolicy
from pixelmill.reading.records import Record
from pixelmill.writing.batches import read_batches
from pixelmill.writing.journal import Journal, RowIdentity, StepState
from pixelmill.writing.store import ImageStore


@dataclass(slots=True)
class RunOutcome:
    aborted: str | None  # why the run stopped early, or None
    abort_kind: str | None
    stats: RunStats


class Runner:
    """Runs a planned configuration (`plan_run`) to the end, or until stopped."""

    def __init__(
        self,
        config: RunConfig,
        plan: RunPlan,
        *,
        stats: RunStats | None = None,
        notice: Callable[[str], None] = lambda _: None,
        batch_collect_only: bool = False,
    ) -> None:
        self.config = config
        self.batch_collect_only = batch_collect_only  # `pixelmill cancel`: collect the cancelled batches, send nothing
        self.plan = plan
        self.stats = stats or RunStats()
        self.notice = notice
        self.halt = Halt(plan.secrets)
        # Who each step sends to now (provider, base URL): whether an emulator's results are this run's.
        self._senders = {s.config.name: (s.provider.name, _base_url(s.provider)) for s in plan.steps}
        self._told_rehearsal = False
        # The steps sent through batch APIs (engine/batch/); ConfigError, with nothing sent, for what cannot be.
        self.batched = check_batch(plan, config) if config.batch or any(s.batch for s in config.steps) \
            else frozenset()
        self.files = FileCheck(config.output, list(config.steps), decode=config.verify_images,
                               report_only=config.report_broken)

    @property
    def abort_reason(self) -> str | None:
        return self.halt.reason

    # ------------------------------------------------------------ the run
    async def run(self) -> RunOutcome:
        config, limits = self.config, self.config.limits
        if config.ray:  # before RUNDIR is touched: no cluster (or no Ray) is a ConfigError, nothing sent
            await spread_on_cluster(self.plan, config, self.notice)
        rundir = config.output
        journal = Journal.open(rundir)
        session: aiohttp.ClientSession | None = None
        store: ImageStore | None = None
        try:
            if not self.batched:
                _refuse_live_batches(journal)
            rebinding = journal.bind(config.fingerprint(), config.snapshot(), restart=config.restart,
                                     restart_steps=config.restart_steps)
            # The images of discarded results go, so that an output never mixes two configurations' images.
            _remove_images(rundir, None if rebinding.restart else rebinding.files)
            for line in rebinding.lines():
                self.notice(line)
            store = ImageStore(rundir)
            # For input images given as URLs: opening a session makes no connection, so one is opened per run.
            session = aiohttp.ClientSession()
            await asyncio.to_thread(store.sweep_temporaries)
            await asyncio.to_thread(store.reserve_space)  # DiskFull: the disk is full before anything is sent
            journal.begin_read()
            # Calls a killed run sent and never recorded may have been billed: charged at their reservation.
            lost = journal.adopt_intents()
            if lost:
                self.notice(f"{lost} calls of an earlier run were sent and never recorded (it was stopped at once): "
                            "they may have been billed and are charged at their reservation")
            self.stats.spent_before = journal.spent()
            budget = Budget(limits.max_cost, spent=self.stats.spent_before)
            if budget.limit is not None and budget.spent >= budget.limit and not journal.live_jobs() \
                    and not any(b.state in ("uploaded", "submitted") for b in read_batches(journal)):
                # (live jobs and batches are still collected: their reservations are in the spend already)
                self.halt.stop(f"budget of ${budget.limit:.2f} already spent (${budget.spent:.4f}); raise "
                               "--max-cost to continue", "budget")
            else:
                ctx = RunContext(
                    config=config, limits=limits, stats=self.stats, halt=self.halt, secrets=self.plan.secrets,
                    rundir=rundir, session=session, journal=journal, store=store,
                    inputs=InputPolicy(base_dir=config.rows_dir, allowed_paths=config.allowed_paths,
                                       allow_private_urls=config.allow_private_urls),
                )
                limiter = Limiter(self.plan.concurrency, limits.rpm, limits.ipm)
                policy = RetryPolicy(limits.max_retries, limits.max_billed_retries, self.plan.deadline,
                                     limits.retry_base, limits.retry_cap)
                watch = FailureWatch(self.halt.stop)
                sender = Sender(Admission(limiter, budget, self.halt.stopping), policy, self.stats, watch=watch,
                                notice=self.notice, secrets=self.plan.secrets)
                watch.divert = sender.divert  # a deployment failing systematically is taken out, not the run
                executor = RowExecutor(ctx, self.plan.steps, sender, self.batched)
                if self.batched:
                    flow = BatchFlow(ctx, self.plan, executor, detach=config.detach, notice=self.notice,
                                     id_field=config.id_field)
                    try:
                        await (flow.collect() if self.batch_collect_only else flow.run())
                    except ProviderError as exc:  # a batch call failed: the key, the model, a lost answer
                        self.halt.stop(f"{exc}; what was submitted is journaled: run the same command again to "
                                       "go on", exc.kind)
                else:
                    await self._run_rows(ctx, executor)
                self.stats.jobs_left = len(journal.live_jobs())
                if self.halt.kind == "budget":  # said once the calls in flight have settled: as the journal says
                    self.halt.reason = redact(budget.reached_message(), self.plan.secrets)
        except DiskFull as exc:
            self.halt.stop(str(exc), exc.kind)
        finally:
            if store is not None:
                store.release_reserve()  # the output is written next, into the space it held
            await self.plan.aclose()
            if session is not None:
                await session.close()
            journal.close()
        self._tell_files()
        self._tell_losses()
        self._tell_jobs()
        return RunOutcome(self.halt.reason, self.halt.kind, self.stats)

    def _tell_files(self) -> None:
        files = self.files
        if files.remade:
            self.notice(f"{files.remade} row-step(s) done earlier had missing or broken image files: they were sent "
                        "again (paid again); --report-broken only reports them")
        if files.reported:
            self.notice(f"{files.reported} done row-step(s) have missing or broken image files (listed in "
                        "pixelmill.broken_files): restore them, or run again without --report-broken to make them "
                        "again")

    def _tell_losses(self) -> None:
        """A full disk: the stop's one line also says what it cost (paid answers a re-run pays for again)."""
        s = self.stats
        if self.halt.kind != "disk_full" or self.halt.reason is None or not (s.unstored or s.unrecorded):
            return
        lost = []
        if s.unstored:
            lost.append(f"{s.unstored} paid answer(s) whose images could not be written")
        if s.unrecorded:
            lost.append(f"{s.unrecorded} result(s) the journal could not record")
        self.halt.reason += f" ({' and '.join(lost)}: their rows stay pending and a re-run pays for them again)"

    def _tell_jobs(self) -> None:
        """Remote jobs still running at the end stay journaled: the run's last line says so, and how to go on."""
        left = self.stats.jobs_left
        if not left:
            return
        line = (f"{left} remote job{'s' if left != 1 else ''} still running {'stay' if left != 1 else 'stays'} "
                "journaled: run the same command again to collect them (they are not submitted again), or "
                f"`pixelmill cancel {self.config.output}` to cancel them")
        if self.halt.reason is not None:
            self.halt.reason += f"; {line}"
        else:
            self.notice(line)

    def stop(self, reason: str, kind: str = "interrupted") -> None:
        """Stop sending (Ctrl-C): calls in flight finish and are recorded; the rest stays pending."""
        self.halt.stop(reason, kind)

    def stop_now(self, reason: str) -> None:
        """Stop at once (a second Ctrl-C): calls in flight are abandoned (a re-run sends them again); what is
        journaled stays, and the output is still written."""
        self.halt.stop_now(reason)

    async def _run_rows(self, ctx: RunContext, rows: RowExecutor) -> None:
        async def route(chunk: list[Record], queue: RowQueue) -> None:
            await self._enqueue(ctx, chunk, queue)

        async def work(row: Row) -> None:
            await rows.run(row)

        await flow_rows(ctx, source_records(self.config), route, work, self.plan.concurrency * 2 + 2)

    async def _enqueue(self, ctx: RunContext, chunk: list[Record], queue: RowQueue) -> None:
        journal, steps = ctx.journal, self.plan.steps
        # Each row's entry is found by its identity (id, else content), wherever the row stands now: inserting,
        # deleting or reordering rows re-sends only rows that are new or changed.
        entries, changed = journal.claim([RowIdentity.of(r, self.config.id_field) for r in chunk])
        for row in changed:
            self.notice(f"row {row} changed since the last run: its earlier results are set aside and it is sent "
                        "again")
        slots = sorted({e.slot for e in entries.values()})
        states = {s.config.name: journal.states(s.config.name, slots) for s in steps}
        broken = await asyncio.to_thread(self.files.scan, states)  # one stat per file of the done rows
        for record in chunk:
            self.stats.rows_read += 1
            entry = entries[record.index]
            mine = {name: by_slot[entry.slot] for name, by_slot in states.items() if entry.slot in by_slot
                    and not self._rehearsed(name, by_slot[entry.slot])}
            if broken and record.error is None:
                lines = self.files.apply(journal, entry.slot, mine, broken)
                if lines and self.files.remade + self.files.reported <= 5:  # the first few by name, then a total
                    what = "only reported (--report-broken)" if self.files.report_only else "sent again"
                    self.notice(f"row {record.index} ({entry.key}) was done but its files are not whole, {what}: "
                                + "; ".join(lines))
            if record.error is not None:
                if not mine:
                    error = {"kind": "input", "message": record.error}
                    for step in steps:
                        journal.save(step.config.name, entry.slot, StepState("failed", info={"error": error}))
                self.stats.count_failure("input")
                continue
            if self._finished(mine):
                self.stats.rows_skipped += 1
                continue
            await queue.put(Row(record, entry.key, mine, entry.slot))
            if ctx.halt.stopping.is_set():
                return

    def _rehearsed(self, step: str, state: StepState) -> bool:
        """A result an emulator made, for a step that now sends elsewhere: it was never paid for, so it is never
        done for a real run; the row is sent again and its images replaced. (`--provider emulator` results stay
        done for `--provider emulator` runs, and a served emulator's for runs against the same URL.)"""
        response = state.info.get("response")
        served_by = response.get("emulated") if isinstance(response, dict) else None
        now = self._senders[step]
        if state.info.get("provider") == "emulator":
            rehearsed = now[0] != "emulator"
        elif served_by:
            rehearsed = not (isinstance(served_by, str) and served_by == now[1])
        else:
            return False
        if rehearsed and not self._told_rehearsal:
            self._told_rehearsal = True
            self.notice(f"rows made by the emulator are sent again to {now[0]} (a rehearsal's images are never "
                        "delivered as a real run's)")
        return rehearsed

    def _finished(self, states: dict[str, StepState]) -> bool:
        for step in self.plan.steps:
            state = states.get(step.config.name)
            if state is None or state.status == "pending":
                return False
            if state.status == "failed":
                return not self.config.retry_failed
        return True


def _refuse_live_batches(journal: Journal) -> None:
    """A run without batch steps would send the rows of an earlier run's live batches again, one by one, and pay
    for them twice: it stops first (ConfigError: nothing sent, the journal as it was)."""
    live = [b for b in read_batches(journal) if b.state in ("uploaded", "submitted")]
    if live:
        lines = sum(b.lines for b in live)
        steps = ", ".join(sorted({repr(b.step) for b in live}))
        raise ConfigError(f"{lines} row(s) of step {steps} are in {len(live)} live batch(es) of an earlier --batch "
                          "run; sent again one by one they would be paid twice. Run the same command with --batch "
                          "(or the step's `batch: true`) to collect them, or `pixelmill cancel RUNDIR` first")


def _base_url(provider: object) -> str | None:
    url = getattr(provider, "base_url", None)
    return strip_userinfo(url) if isinstance(url, str) else None


def _remove_images(rundir: Path, files: list[str] | None) -> None:
    """Remove `files` (paths relative to RUNDIR, as the journal lists them), or every image when None."""
    import shutil

    images = rundir / "images"
    if files is None:
        if images.is_dir():
            shutil.rmtree(images)
        return
    root = images.resolve()
    for name in files:
        path = (rundir / name).resolve()
        if path.is_relative_to(root):  # the journal's paths are ours; never follow one out of images/
            path.unlink(missing_ok=True)
