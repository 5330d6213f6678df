"""`--max-cost` with `--batch`: a batch's lines are billed when it ends, so each line reserves the most it may
cost (the per-call maximum the synchronous path reserves, models/cost.py, at the batch rate) when it joins a
batch being built, and a batch is never built past the budget.

- A line joins the building batch only when spend + every reservation + its maximum stays within the budget
  (`admit`). The first that does not fit closes the batch (the flow sends it with what fits: a split) and holds
  every later row of this round back, pending, in input order.
- The reservations are journaled with the lines (writing/batches.py `batch_lines.reserved`), so that
  `Journal.spent` counts them across runs and processes (a killed run's batches, another run's budget) until
  their batch is collected. A re-run finds the reservations of the batches earlier runs left live in the spend
  it reads, and moves them to its reservations (they are settled here like this run's).
- Collecting replaces each answered line's reservation by its bill (`settle`), and releases the lines the
  batch left unanswered (`release_rest`: expired, cancelled, failed batches bill nothing for them).
- When rows were held back, the flow waits for the live batches, whose bills free what their maxima held, and
  builds again; when nothing fits and nothing is live the run stops with the budget's one line (exit 3, as the
  synchronous budget stop), its rows left pending.

Without a budget every line is admitted and nothing is reserved (the journal's lines reserve 0). Unlike the
synchronous path, no bill can be learned before a batch is sent (its lines are billed when it ends), so a line
reserves the table's maximum as it is.
"""

from __future__ import annotations

from pixelmill.engine.budget import Budget
from pixelmill.engine.plan import StepPlan, images_per_call
from pixelmill.engine.stats import RunStats
from pixelmill.models.cost import batch_cost, expected_cost
from pixelmill.providers.base import ImageRequest
from pixelmill.writing.batches import BatchBook

_EPSILON = 1e-9  # float sums of many small prices (as engine/budget.py)


class BatchBudget:
    """The budget of one batch run's lines, every batch step's (see the module docstring); the synchronous steps
    of the same run reserve from the same `Budget`."""

    def __init__(self, budget: Budget, book: BatchBook, stats: RunStats) -> None:
        self.budget = budget
        self.book = book
        self.stats = stats
        self.held = 0  # rows held back this round: their line did not fit
        self.next_line: float | None = None  # the maximum of the first row held back
        self._settled: dict[int, float] = {}  # batch -> reservations of its lines settled so far
        # Batches an earlier run left live: their reservations are in the spend read from the journal; they become
        # this run's reservations, settled like the others (their bills are this run's spend). Those of a batch
        # still `building` go at once: the flow drops it (it never reached the provider).
        self._earlier = {b.seq for b in book.batches(live_only=True) if b.state != "building"}
        live = book.reserved()
        kept = sum(book.reserved(seq) for seq in self._earlier)
        budget.spent -= live
        budget.reserved += kept
        stats.spent_before -= live - kept
        # Reservations to follow: a budget now, or lines an earlier run reserved (a run with --max-cost, then one
        # without): without either, collecting reads no line's reservation.
        self.active = budget.limit is not None or live > 0

    @property
    def limited(self) -> bool:
        return self.budget.limit is not None

    def new_round(self) -> None:
        self.held = 0
        self.next_line = None

    def line_max(self, step: StepPlan, request: ImageRequest) -> float:
        """The most `request`'s line (of `step`) may cost at the batch rate (0 without a budget or a price)."""
        if not self.limited:
            return 0.0
        spec = step.spec
        expected = expected_cost(spec, request.params, images_per_call(request.params), len(request.prompt),
                                 len(request.images))
        if expected is None:
            return 0.0
        discounted = batch_cost(spec, expected)
        return round((discounted or expected).high, 9)

    def admit(self, amount: float) -> bool:
        """Whether a line reserving `amount` joins the building batch (reserved when it does). After the first
        refusal of a round every later row is held back too (input order; the batch is split there)."""
        budget = self.budget
        if budget.limit is None:
            return True
        if not self.held and budget.spent + budget.reserved + amount <= budget.limit + _EPSILON:
            budget.reserved += amount
            return True
        if not self.held:
            self.next_line = amount
        self.held += 1
        return False

    def settle(self, seq: int, custom_id: str, actual: float) -> None:
        """A collected line of batch `seq` cost `actual` (0: failed, not billed): its reservation ends."""
        if not self.active:
            return
        reserved = self.book.reserved_of(seq, custom_id)
        self._settled[seq] = self._settled.get(seq, 0.0) + reserved
        self._end(seq, reserved, actual)

    def release_rest(self, seq: int) -> None:
        """Batch `seq` is collected: the lines it left unanswered (billed nothing) release their reservations."""
        if not self.active:
            return
        rest = max(0.0, self.book.reserved(seq) - self._settled.pop(seq, 0.0))
        self._end(seq, rest, 0.0)

    def _end(self, seq: int, reserved: float, actual: float) -> None:
        budget = self.budget  # (without a limit, its numbers are kept but bound nothing)
        budget.reserved = max(0.0, budget.reserved - reserved)
        budget.spent += actual
        if seq in self._earlier:
            # Counted in `spent_before` (read from the journal) at its reservation: it leaves that figure, and the
            # bill (the caller adds it) is this run's, so that "this run" shows what its collecting was billed.
            self.stats.spent_before -= reserved

    def exhausted(self) -> bool:
        """Rows were held back and nothing is left to free budget for them: the run stops."""
        return bool(self.held)

    def reached_message(self) -> str:
        budget = self.budget
        return budget.reached_message(self.next_line)
