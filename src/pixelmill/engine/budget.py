"""The budget (--max-cost): spend so far plus reservations for calls in flight never passes the limit, measured
on what providers actually bill.

The model table's highest expected cost of a call (its `bound`, from engine/call.py) is only a prediction: a
provider may bill more (a changed tokenizer, a price change, usage the table does not foresee). So the
reservations follow the bills:
- every answered call's bill teaches its model and plan the ratio bill / bound; a call reserves its bound
  times the highest ratio seen for its plan (else for its model), with a margin (`MARGIN`) once a bill has
  passed its bound, and the bound alone while bills stay within it;
- until the first bill of a model has settled, at most one call of that model is in flight (a cold start),
  so that not even the first wave of calls can pass the budget when the provider bills more than the table
  says. Without a budget nothing waits.
Calls whose outcome is unknown (sent, answer lost) are settled at their reservation by their caller.

The policy lives here alone; engine/admission.py makes sure every reservation is settled exactly once.
"""

from __future__ import annotations

import asyncio

from pixelmill.errors import BudgetReached

# Above the highest bill/bound ratio seen: bills vary from call to call (prompt lengths, sizes, thinking), and
# the next may pass the highest seen so far by a little.
MARGIN = 0.15

CostKey = tuple[str, str]  # (model, plan): what a call's bill is learned under


class Budget:
    """Spend so far plus reservations for calls in flight never passes `limit`.

    Each call reserves the most it can cost before it is sent and settles with what it did cost. A call whose
    reservation does not fit while others are in flight waits for them to settle (they usually cost less than
    they reserved); only when it could not fit even with nothing in flight is the budget reached."""

    def __init__(self, limit: float | None, spent: float = 0.0) -> None:
        self.limit = limit
        self.spent = spent
        self.reserved = 0.0
        self._settled: asyncio.Event | None = None
        self._ratios: dict[object, float] = {}  # a plan (model, plan) or a model -> highest bill / bound
        self._probing: set[str] = set()  # models with a call in flight and no bill settled yet

    def fits(self, amount: float) -> bool:
        """Whether a call reserving `amount` could ever be sent (with nothing else in flight)."""
        return self.limit is None or self.spent + amount <= self.limit + _EPSILON

    def reservation(self, bound: float, key: CostKey | None = None) -> float:
        """What a call whose table bound is `bound` reserves: the bound, scaled by what its plan's (else its
        model's) bills have shown when they passed their bounds."""
        if key is None:
            return bound
        ratio = self._ratios.get(key, self._ratios.get(key[0], 1.0))
        return bound if ratio <= 1.0 else bound * ratio * (1.0 + MARGIN)

    def learned(self, model: str) -> bool:
        """Whether a bill of `model` has settled (its reservations follow bills, not only the table)."""
        return model in self._ratios

    async def reserve(self, bound: float, key: CostKey | None = None) -> float:
        """Reserve for one call (see `reservation`), waiting while calls in flight hold the rest of the budget,
        or while the first call of a model not yet billed is in flight. Returns the amount reserved. Raises
        `BudgetReached` when the call cannot fit."""
        if self.limit is None:
            return bound
        while True:
            amount = self.reservation(bound, key)
            if not self.fits(amount):
                raise BudgetReached(self.reached_message(amount))
            cold = None if key is None or self.learned(key[0]) else key[0]  # a model not billed yet
            if (cold is None or cold not in self._probing) and \
                    self.spent + self.reserved + amount <= self.limit + _EPSILON:
                self.reserved += amount
                if cold is not None:
                    self._probing.add(cold)
                return amount
            if self._settled is None:
                self._settled = asyncio.Event()
            self._settled.clear()
            await self._settled.wait()

    def reached_message(self, amount: float | None = None) -> str:
        """The budget's stop line, with the spend as it stands now (the run re-renders it once its calls in
        flight have settled, so that the line and the journal agree)."""
        assert self.limit is not None
        next_call = f"; the next call may cost up to ${amount:.4f}" if amount is not None else ""
        return (f"budget of ${self.limit:.2f} reached: ${self.spent:.4f} spent{next_call}. Raise --max-cost and "
                "run the same command again to continue (done rows are not paid again).")

    def settle(self, reserved: float, actual: float, key: CostKey | None = None, bound: float | None = None) -> None:
        """A call's reservation ends: it cost `actual`. With `bound` (an answer's bill), the bill teaches
        `key`'s model and plan how far the provider bills over the table."""
        if self.limit is not None:
            self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual
        if key is not None:
            self._probing.discard(key[0])  # only a model's first call can be in flight while it is not learned
            if bound is not None:
                ratio = actual / bound if bound > 0 else 1.0
                for where in (key, key[0]):
                    self._ratios[where] = max(ratio, self._ratios.get(where, 0.0))
        if self._settled is not None:
            self._settled.set()


_EPSILON = 1e-9  # float sums of many small prices
