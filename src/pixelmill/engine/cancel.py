"""`pixelmill cancel RUNDIR`: cancel a run's live remote jobs (submitted, not yet collected: engine/jobs.py) and
record their rows as cancelled-pending, so that a re-run submits them anew; and its live batches (`--batch`:
engine/batch/cancel.py cancels them at the provider, then collects what they kept).

The run's providers are built from the RUNDIR's saved configuration (keys from the environment, as for a run).
Each live job is cancelled through its provider (`JobProvider.cancel`); its row stays pending, with the
cancellation recorded in `pixelmill.cancelled` (job id, what the provider said, the charge kept). A job the
provider removed before it ran (`cancelled`) is charged nothing; one that may have run (`requested`, `not_found`,
anything else) keeps its reservation as a possibly billed call (`pixelmill.unanswered`); one that had already
finished (`already_completed`) is not cancelled but kept live: it is paid, and a re-run collects it. A job whose
cancel call failed stays live (the command says so and exits 1).

It refuses while a run holds the RUNDIR (writing/lock.py) rather than stop it: that run owns its jobs and batches;
stop it with Ctrl-C (its running jobs and batches stay journaled), then cancel.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from pixelmill.config import RunConfig
from pixelmill.engine.batch.cancel import BatchCancel, cancel_batches
from pixelmill.engine.plan import StepPlan, plan_run
from pixelmill.errors import ConfigError, PixelmillError, redact
from pixelmill.providers.base import JobHandle, JobProvider
from pixelmill.writing.batches import LIVE_STATES, read_batches
from pixelmill.writing.journal import JOB, Journal, StepState, add_unanswered
from pixelmill.writing.lock import RunLock

KEPT = "already_completed"  # the job finished: it is paid, so it is collected rather than cancelled
REMOVED = "cancelled"  # removed before it ran: nothing billed


@dataclass(slots=True)
class CancelReport:
    rundir: Path
    removed: int = 0  # cancelled before they ran: charged nothing
    stopped: int = 0  # cancelled, may have run: charged at their reservation
    charged: float = 0.0
    finished: int = 0  # had already finished: kept live for a re-run to collect
    errors: list[str] = field(default_factory=list)  # jobs whose cancel failed (still live)
    batches: BatchCancel | None = None  # a --batch run's

    @property
    def exit_code(self) -> int:
        return 1 if self.errors or (self.batches is not None and self.batches.errors) else 0

    def lines(self) -> list[str]:
        batches = self.batches.lines() if self.batches is not None else []
        cancelled = self.removed + self.stopped
        if not cancelled and not self.finished and not self.errors:
            if batches:
                return [f"{self.rundir}: {batches[0]}", *batches[1:]]
            what = "batches" if self.batches is not None else "remote jobs"
            return [f"{self.rundir}: no live {what} to cancel"]
        out = [f"{self.rundir}: cancelled {cancelled} live remote job{'s' if cancelled != 1 else ''}"
               + (f" ({self.removed} before they ran, {self.stopped} while running or of unknown state: charged "
                  f"${self.charged:.4f}, as they may be billed)" if cancelled else "")]
        if cancelled:
            out.append("their rows are pending: run the same command again to submit them anew")
        if self.finished:
            out.append(f"{self.finished} job{'s' if self.finished != 1 else ''} had already finished and "
                       f"{'are' if self.finished != 1 else 'is'} kept (paid): run the same command again to "
                       "collect them")
        out += [f"could not cancel {e}" for e in self.errors]
        if self.errors:
            out.append("those jobs stay journaled: run `pixelmill cancel` again, or run the same command to "
                       "collect them")
        return out + batches


async def cancel_run(rundir: Path, env: Mapping[str, str]) -> CancelReport:
    """Cancel every live remote job and batch of the run in `rundir` (see the module docstring)."""
    if not (rundir / ".pixelmill" / "journal.sqlite").is_file():
        raise ConfigError(f"{rundir} holds no pixelmill run (no .pixelmill/journal.sqlite): give the folder that "
                          "was passed as --output")
    try:
        lock = RunLock(rundir).__enter__()
    except ConfigError as exc:
        raise ConfigError(f"cannot cancel the jobs or batches of a run in progress: {exc} Stop it first (Ctrl-C: "
                          "its running jobs and batches stay journaled), then run `pixelmill cancel` again.") from None
    journal = Journal.open(rundir)
    report = CancelReport(rundir)
    try:
        live = journal.live_jobs()
        batches = read_batches(journal)
        if batches:
            report.batches = BatchCancel()
        if not live and not any(b.state in LIVE_STATES for b in batches):
            return report
        # The saved configuration, in this RUNDIR wherever the run was started from (a batch is collected here).
        config = _config(journal, rundir).model_copy(update={"output": rundir})
        plan = plan_run(config, env=env)
        try:
            for step, row, state in live:
                target = _target(plan.steps, step, state)
                await _cancel_one(journal, target, step, row, state, report, plan.secrets)
            if batches:
                report.batches = await cancel_batches(journal, config, plan)
        finally:
            await plan.aclose()
    finally:
        journal.close()
        lock.__exit__(None, None, None)
    return report


async def _cancel_one(journal: Journal, target: StepPlan | None, step: str, row: int, state: StepState,
                      report: CancelReport, secrets: tuple[str, ...]) -> None:
    job = state.info[JOB]
    handle = JobHandle.from_json(job)
    if target is None or not isinstance(target.provider, JobProvider):
        report.errors.append(f"job {handle.id} (step {step!r}): its step's provider is not a job provider now")
        return
    try:
        said = (await target.provider.cancel(handle, target.spec)).lower()
    except PixelmillError as exc:
        report.errors.append(f"job {handle.id} (step {step!r}): {redact(str(exc), secrets)}")
        return
    if said == KEPT:
        report.finished += 1
        return
    reserved = float(job.get("reserved", 0.0))
    charged = 0.0 if said == REMOVED else reserved
    state.info.pop(JOB)
    state.info.setdefault("cancelled", []).append(
        {"job": handle.id, "said": said, "at": round(time.time(), 3), "charged_usd": round(charged, 6)})
    if charged:
        add_unanswered(state.info, 1, charged)
        report.stopped += 1
        report.charged += charged
    else:
        report.removed += 1
    state.status = "pending"
    journal.save(step, row, state)


def _config(journal: Journal, rundir: Path) -> RunConfig:
    raw = journal.get_meta("config")
    try:
        return RunConfig.model_validate(orjson.loads(raw or "null"))
    except (ValueError, TypeError):
        raise ConfigError(f"the configuration saved in {rundir} cannot be read: its jobs cannot be cancelled "
                          "from here") from None


def _target(steps: list[StepPlan], name: str, state: StepState) -> StepPlan | None:
    """The model the row's job was submitted to: the step's, or the fallback it had reached."""
    step = next((s for s in steps if s.config.name == name), None)
    if step is None:
        return None
    targets = [step, *step.fallbacks]
    number = int(state.info.get("target", 0))
    return targets[number] if 0 <= number < len(targets) else None
