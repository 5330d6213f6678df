"""One row-step's calls in the journal: an intent before each call is sent, resolved by its outcome.

Every call sent must count against the budget whether or not its answer is ever recorded (a SIGKILL between
sending and recording loses the answer, not the bill). So `sent` journals an intent (step, entry, reserved
amount) before the request leaves; the save that records the call's outcome deletes it in the same transaction
(writing/journal.py `save`); an error answer (not billed) drops it; a call whose outcome is unknown (sent,
answer lost or broken) is charged at its reservation on the row (`pixelmill.unanswered`: `calls`,
`cost_usd_max`) by the save that deletes its intent. Intents a killed run left behind are charged at their
reservation by the next run (`Journal.adopt_intents`). One extra small write per call: the intent.

A remote job's call (engine/jobs.py) adds one write: the handle its submit answered, journaled on the row's step
(`pixelmill.job`, with the call number, the submits made and the amount reserved) by the save that resolves the
submit's intent, before the first poll; the save that records the job's outcome removes it. A submit a killed run
left unanswered is noted on the row with the time it was sent (`lost_submits`, by `adopt_intents`), so that the
next run can look for the job by listing the provider's jobs before it submits again.
"""

from __future__ import annotations

from typing import Any

from pixelmill.providers.base import JobHandle
from pixelmill.writing.journal import JOB, LOST_SUBMITS, UNANSWERED, Journal, StepState, add_unanswered


class RowBook:
    """The `CallBook` (engine/call.py) of one row's step: its calls' intents and unknown outcomes; for a remote
    job's call (`call`: its number in the step), the job's handle too (`JobBook`, engine/jobs.py)."""

    __slots__ = ("call", "journal", "slot", "state", "step")

    def __init__(self, journal: Journal, step: str, slot: int, state: StepState, call: int = 0) -> None:
        self.journal = journal
        self.step = step
        self.slot = slot
        self.state = state
        self.call = call

    def sent(self, reserved: float) -> None:
        self.journal.intend(self.step, self.slot, reserved)

    def answered(self) -> None:
        self.journal.drop_intent(self.step, self.slot)

    def unanswered(self, charged: float) -> None:
        add_unanswered(self.state.info, 1, charged)
        self.journal.save(self.step, self.slot, self.state)  # deletes the intent in the same transaction

    # ------------------------------------------------------------ remote jobs
    def live(self) -> dict[str, Any] | None:
        """This call's job, submitted (by this run or an earlier one) and not yet collected."""
        job = self.state.info.get(JOB)
        return job if isinstance(job, dict) and job.get("call", self.call) == self.call else None

    def submitted(self, handle: JobHandle, reserved: float, submits: int) -> None:
        """The submit answered `handle`: journaled with what it reserved, in the transaction that resolves the
        submit's intent, before anything polls it."""
        self.state.info[JOB] = {**handle.as_json(), "call": self.call, "submits": submits,
                                "reserved": round(reserved, 6)}
        self.journal.save(self.step, self.slot, self.state)

    def ended(self) -> None:
        """The job ended (done, failed, lost): the caller's save records its outcome and drops it from the row."""
        self.state.info.pop(JOB, None)

    def failed_job(self, error: str) -> None:
        """The job failed on the provider's side and is submitted again: the failure is journaled first (the job
        is not live any more), and the resubmit counted."""
        self.ended()
        info = self.state.info
        info["resubmits"] = int(info.get("resubmits", 0)) + 1
        info["resubmitted_after"] = error
        self.journal.save(self.step, self.slot, self.state)

    def lost_submits(self) -> list[dict[str, Any]]:
        """This call's submits whose answer an earlier run lost (it was killed while they were in flight)."""
        lost = self.state.info.get(LOST_SUBMITS)
        return [e for e in lost if isinstance(e, dict) and e.get("call") == self.call] if isinstance(lost, list) \
            else []

    def looked_for(self, entry: dict[str, Any]) -> None:
        """The lost submit was looked for and not found (or cannot be listed): it stays charged as unknown."""
        entry["looked"] = True
        self.journal.save(self.step, self.slot, self.state)

    def recovered(self, handle: JobHandle, entry: dict[str, Any], submits: int) -> None:
        """The lost submit's job was found: it is live (its reservation moves from the unknown charges to the
        job) and is polled like any other; one save."""
        reserved = float(entry.get("reserved", 0.0))
        lost = self.state.info.get(LOST_SUBMITS)
        if isinstance(lost, list) and entry in lost:
            lost.remove(entry)
            if not lost:
                del self.state.info[LOST_SUBMITS]
        add_unanswered(self.state.info, -1, -reserved)
        if self.state.info[UNANSWERED]["calls"] <= 0:
            del self.state.info[UNANSWERED]
        self.state.info["recovered_jobs"] = int(self.state.info.get("recovered_jobs", 0)) + 1
        self.submitted(handle, reserved, submits)



def carried(info: dict[str, Any]) -> dict[str, Any]:
    """What a row's metadata keeps when the row goes on to a fallback model: its calls of unknown outcome."""
    return {UNANSWERED: info[UNANSWERED]} if UNANSWERED in info else {}
