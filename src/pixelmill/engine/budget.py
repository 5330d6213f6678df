"""The budget (--max-cost): spend so far plus reservations for calls in flight never passes the limit.

The policy lives here alone: how much a call reserves is its caller's (engine/call.py, from the model table's
highest expected cost), and engine/admission.py makes sure every reservation is settled exactly once.
"""

from __future__ import annotations

import asyncio

from pixelmill.errors import BudgetReached


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

    def fits(self, amount: float) -> bool:
        """Whether a call reserving `amount` could ever be sent (with nothing else in flight)."""
        return self.limit is None or self.spent + amount <= self.limit + _EPSILON

    async def reserve(self, amount: float) -> None:
        """Reserve `amount` for one call, waiting while calls in flight hold the rest of the budget.
        Raises `BudgetReached` when the call cannot fit."""
        if self.limit is None:
            return
        while True:
            if not self.fits(amount):
                raise BudgetReached(
                    f"budget of ${self.limit:.2f} reached: ${self.spent:.4f} spent; the next call may cost up to "
                    f"${amount:.4f}. Raise --max-cost and run the same command again to continue (done rows are "
                    "not paid again)."
                )
            if self.spent + self.reserved + amount <= self.limit + _EPSILON:
                self.reserved += amount
                return
            if self._settled is None:
                self._settled = asyncio.Event()
            self._settled.clear()
            await self._settled.wait()

    def settle(self, reserved: float, actual: float) -> None:
        if self.limit is not None:
            self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual
        if self._settled is not None:
            self._settled.set()


_EPSILON = 1e-9  # float sums of many small prices
