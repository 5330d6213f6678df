"""Letting one call in: its budget reservation and its concurrency slot, owned together by one `Ticket`.

```python
async with admission.ticket(images=n, reserve=high) as ticket:   # reserves, then waits for a slot and the pace
    ...send, store, journal...
    ticket.settle(cost)                                          # what the call did cost
# leaving the block gives the slot back and settles whatever was not settled at 0: on success, on an
# exception, on cancellation and on stop alike, so neither a slot nor a reservation can leak
```

The order is the budget's rule: the reservation is made (waiting while calls in flight hold the rest of the
budget) before the slot is taken, so a call waiting for budget holds no slot. The pacing and 429 pause are
the limiter's (engine/limiter.py), the budget policy the budget's (engine/budget.py).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from pixelmill.engine.budget import Budget
from pixelmill.engine.limiter import Limiter


class Admission:
    """The gate every call passes: the run's limiter and budget, and the event that ends the waits."""

    def __init__(self, limiter: Limiter, budget: Budget, stopping: asyncio.Event) -> None:
        self.limiter = limiter
        self.budget = budget
        self.stopping = stopping

    def ticket(self, *, images: int, reserve: float) -> Ticket:
        """A ticket for one call of `images` images that may cost up to `reserve`; enter it to be let in."""
        return Ticket(self, images, reserve)


class Ticket:
    """One call's slot and reservation, from entering the `async with` to leaving it."""

    __slots__ = ("_admission", "_held", "_images", "_reserved", "_settled")

    def __init__(self, admission: Admission, images: int, reserve: float) -> None:
        self._admission = admission
        self._images = images
        self._reserved = reserve
        self._settled = True  # nothing reserved until entered
        self._held = False

    async def __aenter__(self) -> Ticket:
        """Reserve the budget (raises `BudgetReached` when the call cannot fit even alone), then wait for a slot
        and the pace. The waits end early when the run stops: the holder checks `stopping` before sending."""
        gate = self._admission
        await gate.budget.reserve(self._reserved)
        self._settled = False
        try:
            await gate.limiter.admit(self._images, gate.stopping)
        except BaseException:
            self.settle(0.0)
            raise
        self._held = True
        return self

    def settle(self, actual: float) -> None:
        """Settle the reservation with what the call cost (0 when it was not billed), once: a second settle
        is a bug that would lose a charge, so it raises."""
        if self._settled:
            raise RuntimeError("this ticket's reservation is already settled")
        self._settled = True
        self._admission.budget.settle(self._reserved, actual)

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if not self._settled:
            self.settle(0.0)
        if self._held:
            self._held = False
            self._admission.limiter.release()
