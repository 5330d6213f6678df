"""One row-step's calls in the journal: an intent before each call is sent, resolved by its outcome.

Every call sent must count against the budget whether or not its answer is ever recorded (a SIGKILL between
sending and recording loses the answer, not the bill). So `sent` journals an intent (step, entry, reserved
amount) before the request leaves; the save that records the call's outcome deletes it in the same transaction
(writing/journal.py `save`); an error answer (not billed) drops it; a call whose outcome is unknown (sent,
answer lost or broken) is charged at its reservation on the row (`pixelmill.unanswered`: `calls`,
`cost_usd_max`) by the save that deletes its intent. Intents a killed run left behind are charged at their
reservation by the next run (`Journal.adopt_intents`). One extra small write per call: the intent.
"""

from __future__ import annotations

from typing import Any

from pixelmill.writing.journal import UNANSWERED, Journal, StepState, add_unanswered


class RowBook:
    """The `CallBook` (engine/call.py) of one row's step: its calls' intents and unknown outcomes."""

    __slots__ = ("journal", "slot", "state", "step")

    def __init__(self, journal: Journal, step: str, slot: int, state: StepState) -> None:
        self.journal = journal
        self.step = step
        self.slot = slot
        self.state = state

    def sent(self, reserved: float) -> None:
        self.journal.intend(self.step, self.slot, reserved)

    def answered(self) -> None:
        self.journal.drop_intent(self.step, self.slot)

    def unanswered(self, charged: float) -> None:
        add_unanswered(self.state.info, 1, charged)
        self.journal.save(self.step, self.slot, self.state)  # deletes the intent in the same transaction



def carried(info: dict[str, Any]) -> dict[str, Any]:
    """What a row's metadata keeps when the row goes on to a fallback model: its calls of unknown outcome."""
    return {UNANSWERED: info[UNANSWERED]} if UNANSWERED in info else {}
