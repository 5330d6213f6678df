"""Letting one call in: its budget reservation and its concurrency slot, owned together by one `Ticket`.

```python
async with admission.ticket(images=n, reserve=high, key=(model, plan)) as ticket:  # reserves, then a slot
    ...send, store, journal...                                   # ticket.reserved: what was reserved
    ticket.settle(cost, billed=True)                             # an answer's bill (the budget learns from it)
# leaving the block gives the slot back and settles whatever was not settled at 0: on success, on an
# exception, on cancellation and on stop alike, so neither a slot nor a reservation can leak
```

The order is the budget's rule: the reservation is made (waiting while calls in flight hold the rest of the
budget, or while a model's first call is not yet billed) before the slot is taken, so a call waiting for budget
holds no slot. `reserve` is the table's bound; the budget scales it by what the model's bills have shown. The
pacing and 429 pause are the limiter's (engine/limiter.py), the budget policy the budget's (engine/budget.py).
A step spread over several deployments (engine/deployments.py) takes one more thing last: a deployment, with its
own slot and pace (`ticket.deployment`), given back with the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

from pixelmill.engine.budget import Budget, CostKey
from pixelmill.engine.deployments import Deployment, DeploymentPool
from pixelmill.engine.limiter import Limiter


class Admission:
    """The gate every call passes: the run's limiter and budget, and the event that ends the waits."""

    def __init__(self, limiter: Limiter, budget: Budget, stopping: asyncio.Event) -> None:
        self.limiter = limiter
        self.budget = budget
        self.stopping = stopping

    def ticket(self, *, images: int, reserve: float, key: CostKey | None = None,
               pool: DeploymentPool | None = None) -> Ticket:
        """A ticket for one call of `images` images that the table says may cost up to `reserve` (its bills are
        learned under `key`: model and plan); enter it to be let in. With `pool` (a step spread over several
        deployments), the ticket also holds the deployment chosen (`ticket.deployment`) and its slot."""
        return Ticket(self, images, reserve, key, pool)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """A concurrency slot alone, neither paced nor reserved: to collect a remote job an earlier run submitted
        (its reservation is in the spend already, and polls are free), so that jobs in flight stay bounded by
        --concurrency."""
        await self.limiter.slots.acquire()
        try:
            yield
        finally:
            self.limiter.release()


class Ticket:
    """One call's slot and reservation, from entering the `async with` to leaving it."""

    __slots__ = ("_admission", "_bound", "_held", "_images", "_key", "_pool", "_reserved", "_settled", "deployment")

    def __init__(self, admission: Admission, images: int, reserve: float, key: CostKey | None = None,
                 pool: DeploymentPool | None = None) -> None:
        self._admission = admission
        self._pool = pool
        self.deployment: Deployment | None = None  # where the call goes, when its step has deployments
        self._images = images
        self._bound = reserve
        self._key = key
        self._reserved = 0.0
        self._settled = True  # nothing reserved until entered
        self._held = False

    @property
    def reserved(self) -> float:
        """What this call holds of the budget: what it is charged when its outcome is unknown."""
        return self._reserved

    async def __aenter__(self) -> Ticket:
        """Reserve the budget (raises `BudgetReached` when the call cannot fit even alone), then wait for a slot
        and the pace, then (a step with deployments) for a deployment's slot and pace. The waits end early when
        the run stops: the holder checks `stopping` before sending. A step whose deployments are all out raises
        the `FatalError` that took the last one out."""
        gate = self._admission
        self._reserved = await gate.budget.reserve(self._bound, self._key)
        self._settled = False
        try:
            await gate.limiter.admit(self._images, gate.stopping)
        except BaseException:
            self.settle(0.0)
            raise
        self._held = True
        if self._pool is not None:
            try:
                self.deployment = await self._pool.admit(self._images, gate.stopping)
            except BaseException:
                await self.__aexit__(None, None, None)
                raise
        return self

    def settle(self, actual: float, *, billed: bool = False) -> None:
        """Settle the reservation with what the call cost (0 when it was not billed), once: a second settle
        is a bug that would lose a charge, so it raises. `billed`: `actual` is an answer's bill, which the
        budget learns from."""
        if self._settled:
            raise RuntimeError("this ticket's reservation is already settled")
        self._settled = True
        self._admission.budget.settle(self._reserved, actual, self._key, self._bound if billed else None)

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if not self._settled:
            self.settle(0.0)
        if self.deployment is not None and self._pool is not None:
            self._pool.release(self.deployment)
            self.deployment = None
        if self._held:
            self._held = False
            self._admission.limiter.release()
