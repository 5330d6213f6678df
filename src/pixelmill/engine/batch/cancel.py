"""`pixelmill cancel RUNDIR` for `--batch` runs: every live batch is cancelled at the provider, then collected as a
run collects it (engine/batch/flow.py `BatchFlow.collect`), so that what the provider kept is not lost.

- A batch still `building` never reached the provider: dropped, its rows free.
- An `uploaded` batch may have been created by a run killed before it journaled the answer: it is looked for by
  its name (as a run's recovery does) and cancelled when found, dropped when not.
- A `submitted` batch is cancelled (`BatchWire.cancel`); one that had already ended (the provider refuses to
  cancel it) is collected as it is.
Collecting then waits for each batch to end (OpenAI: `cancelling`, then `cancelled`): lines answered before the
cancel are kept (paid: their images are written and their rows done or failed), the rest were not billed and go
back to pending, for a re-run to submit anew (counted as resubmissions, engine/batch/resubmits.py).

The caller (engine/cancel.py) holds the RUNDIR's lock: a run in progress owns its batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from pixelmill.config import RunConfig
from pixelmill.engine.batch.flow import wire_for
from pixelmill.engine.plan import RunPlan
from pixelmill.engine.runner import Runner
from pixelmill.errors import DiskFull, PixelmillError, redact
from pixelmill.writing.batches import BatchBook
from pixelmill.writing.journal import Journal
from pixelmill.writing.output import write_output


@dataclass(slots=True)
class BatchCancel:
    cancelled: int = 0  # batches cancelled at the provider (or found ended), then collected
    dropped: int = 0  # batches that never reached the provider
    kept: int = 0  # their lines answered before the cancel: rows done or failed (paid when done)
    pending: int = 0  # their rows back to pending, not billed
    errors: list[str] = field(default_factory=list)  # batches whose cancel failed (still live)
    stopped: str | None = None  # why collecting stopped early (the batches stay live: a re-run collects them)

    def lines(self) -> list[str]:
        if not (self.cancelled or self.dropped or self.errors):
            return []
        out = []
        if self.cancelled:
            out.append(f"cancelled {self.cancelled} live batch(es): {self.kept} line(s) answered before the cancel "
                       f"are kept (paid when done); {self.pending} row(s) are pending again (not billed): run the "
                       "same command again to submit them anew")
        if self.dropped:
            out.append(f"dropped {self.dropped} batch(es) never created at the provider: their rows are pending")
        out += [f"could not cancel {e}" for e in self.errors]
        if self.stopped:
            out.append(f"collecting stopped: {self.stopped}; the batches not collected stay journaled: run "
                       "`pixelmill cancel` again, or the same command, to collect them")
        return out


async def cancel_batches(journal: Journal, config: RunConfig, plan: RunPlan,
                         notice: Callable[[str], None] = lambda _: None) -> BatchCancel:
    """Cancel, then collect, the live batches of the run whose journal is `journal` (see the module docstring)."""
    report = BatchCancel()
    book = BatchBook(journal)
    live = book.batches(live_only=True)
    if not live:
        return report
    steps = {s.config.name: s for s in plan.steps}
    cancelled: list[int] = []
    for entry in live:
        step = steps.get(entry.step)
        wire = None if step is None else wire_for(step.provider)
        if entry.state == "building":
            book.drop(entry.seq)
            report.dropped += 1
            continue
        if wire is None:
            report.errors.append(f"batch {entry.seq} (step {entry.step!r}): its step has no batch API now")
            continue
        try:
            batch_id = entry.batch_id
            if entry.state == "uploaded":
                found = await wire.find(book.provider_name(entry.seq), entry.file_id)
                if found is None:  # its creation never reached the provider
                    book.drop(entry.seq)
                    report.dropped += 1
                    continue
                book.submitted(entry.seq, found.id, found.as_json())
                batch_id = found.id
            assert batch_id is not None
            try:
                summary = await wire.cancel(batch_id)
            except PixelmillError:
                summary = await wire.get(batch_id)  # it may have ended meanwhile: then it is collected as it is
                if not summary.ended:
                    raise
            book.note(entry.seq, summary.as_json())
        except PixelmillError as exc:
            report.errors.append(f"batch {entry.seq} ({entry.batch_id or 'not created yet'}): "
                                 f"{redact(str(exc), plan.secrets)}")
            continue
        cancelled.append(entry.seq)
    if not cancelled:
        return report
    # The collecting run writes through a connection of its own (the journal is WAL: this one reads its results).
    outcome = await Runner(config, plan, notice=notice, batch_collect_only=True).run()
    report.stopped = outcome.aborted
    try:
        await asyncio.to_thread(write_output, config, journal)  # the kept lines' images in the output now
    except DiskFull as exc:
        report.stopped = f"the output was not written: {exc}; the next run writes it"
    collected = {b.seq: b for b in book.batches() if b.state == "collected"}
    for seq in cancelled:
        done = collected.get(seq)
        if done is None:  # collecting stopped before it ended: it stays live, a re-run collects it
            continue
        report.cancelled += 1
        rows = [row for _, row in book.lines(seq)]
        states = journal.states(done.step, rows)
        kept = sum(1 for r in rows if (s := states.get(r)) is not None and s.status in ("done", "failed"))
        report.kept += kept
        report.pending += len(rows) - kept
    return report
