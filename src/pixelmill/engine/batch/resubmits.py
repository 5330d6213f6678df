"""Rows sent again in a new batch because the batch that held them expired, was cancelled or failed, counted
and recorded: on the row's step (`pixelmill.resubmits`: how many batches left it unanswered, as remote jobs
count theirs, engine/jobs.py), in the run's stats (`batch_resubmitted`: the final summary) and, through the
journal, in `pixelmill status`.

A row is a resubmission when it joins a batch while pending (never answered: a row a batch answered is done or
failed) and a collected batch held it before (writing/batches.py `left_by`), whichever run collected that batch:
a batch expired in one run and resubmitted by the next, or cancelled by `pixelmill cancel`, counts the same.
"""

from __future__ import annotations

from pixelmill.engine.stats import RunStats
from pixelmill.writing.batches import BatchBook
from pixelmill.writing.journal import StepState

RESUBMITS = "resubmits"  # the row's `pixelmill` field: batches that left it unanswered before this one


class Resubmits:
    """Counts the resubmissions of one step's rows as they join batches, a chunk of rows at a time."""

    def __init__(self, book: BatchBook, step: str, stats: RunStats) -> None:
        self.book = book
        self.step = step
        self.stats = stats
        self.round = 0  # rows resubmitted by the current round of batches
        self._left: dict[int, int] = {}

    def new_round(self) -> None:
        self.round = 0

    def look(self, slots: list[int]) -> None:
        """Read which of a chunk's rows collected batches held before (one query a chunk)."""
        self._left = self.book.left_by(self.step, slots)

    def joined(self, slot: int, state: StepState | None) -> None:
        """Row `slot` joins a batch: when it is a resubmission, it is counted and recorded on the row."""
        left = self._left[slot] if slot in self._left else self.book.left_by(self.step, [slot]).get(slot, 0)
        if not left or (state is not None and state.status != "pending"):
            return
        state = state or StepState()
        if int(state.info.get(RESUBMITS, 0)) == left:
            return  # counted already (the batch this run built and lost to a stop was dropped)
        state.info[RESUBMITS] = left
        self.book.journal.save(self.step, slot, state)
        self.stats.batch_resubmitted += 1
        self.round += 1
