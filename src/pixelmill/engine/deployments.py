"""One step's calls spread over several keys or endpoints of its provider (`deployments:` in a pipeline file,
`--deployment` on the command line), each with its own limits.

Each `Deployment` has its own provider (its base URL, its key, read from the environment variable its entry
names) and its own `Limiter` (engine/limiter.py): its slots (its `concurrency`, else unbounded but by the run's),
its request and image pace (its `rpm` / `ipm`, else learned from its own 429s and rate-limit headers) and its
own pause after a 429. The run's budget and `--concurrency` stay one: a call takes its run-wide ticket first
(engine/admission.py), then a deployment from the step's `DeploymentPool`.

Which deployment: the one that can send soonest (its pause over, its turn in its paces come), and among those
ready alike the least loaded (calls in flight over its slots), of those with a free slot. A deployment that
answers 429 is paused on its own: the row's next attempt goes to another one that is ready. A deployment that
fails for a reason that is not the row's (a wrong key: 401/403, an exhausted quota, a missing model or
deployment) is taken out for the rest of the run, with one notice, and the call is sent again elsewhere at once;
so is one whose first calls fail systematically (unreachable, the same 4xx every time: engine/systematic.py) while
others carry on. The run stops as before (exit 3) only when every deployment of the step is out. The deployment
that served a call is recorded on its row (`pixelmill.response.deployment`: its name, never its key).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from pixelmill.engine.limiter import Limiter
from pixelmill.errors import FatalError, PixelmillError
from pixelmill.providers.base import Provider


@dataclass(slots=True, eq=False)
class Deployment:
    """One key or endpoint: where its calls go, under which limits, and whether it is still in use."""

    name: str
    provider: Provider
    wire_model: str  # the name sent (an Azure deployment's own name)
    limiter: Limiter
    in_flight: int = 0
    out: PixelmillError | None = None  # why it was taken out

    @property
    def load(self) -> float:
        return self.in_flight / self.limiter.concurrency


class DeploymentPool:
    """The deployments of one step's model, and the choice among them (see the module docstring)."""

    def __init__(self, deployments: list[Deployment]) -> None:
        self.deployments = deployments
        self._freed: asyncio.Event | None = None  # set when a slot is given back or a deployment taken out
        self._last_out: FatalError | None = None  # what took the last deployment out

    def live(self) -> list[Deployment]:
        return [d for d in self.deployments if d.out is None]

    async def admit(self, images: int, stopping: asyncio.Event) -> Deployment | None:
        """A deployment for one call of `images` images, its slot held and its pace waited for; None when the
        run stops while waiting for a slot (nothing held; the pace's wait also ends early, and the caller checks
        `stopping`). Raises the `FatalError` that took the last deployment out when every one is out."""
        while not stopping.is_set():
            live = self.live()
            if not live:
                assert self._last_out is not None
                raise self._last_out
            free = [d for d in live if not d.limiter.slots.locked()]
            if not free:
                await self._wait_freed(stopping)
                continue
            now = time.monotonic()
            chosen = min(free, key=lambda d: (max(now, d.limiter.ready_at(images)), d.load))
            await chosen.limiter.slots.acquire()  # at once: it has a free slot, and nothing ran since the look
            chosen.in_flight += 1
            try:
                await chosen.limiter.pace(images, stopping)
            except BaseException:
                self.release(chosen)
                raise
            if chosen.out is None or stopping.is_set():
                return chosen
            self.release(chosen)  # taken out while this call waited for its turn: choose again
        return None

    def release(self, deployment: Deployment) -> None:
        deployment.in_flight -= 1
        deployment.limiter.release()
        self._wake()

    def take_out(self, deployment: Deployment, error: PixelmillError) -> bool:
        """Take `deployment` out for the rest of the run. True when it was in until now (say so once)."""
        if deployment.out is not None:
            return False
        deployment.out = error
        if isinstance(error, FatalError):
            self._last_out = error
        self._wake()
        return True

    def ready_elsewhere(self, deployment: Deployment) -> bool:
        """Whether another live deployment could take a call now (after a 429 here: send there at once)."""
        now = time.monotonic()
        return any(d is not deployment and d.out is None and not d.limiter.slots.locked()
                   and d.limiter.ready_at() <= now for d in self.deployments)

    def _wake(self) -> None:
        if self._freed is not None:
            self._freed.set()

    async def _wait_freed(self, stopping: asyncio.Event) -> None:
        if self._freed is None:
            self._freed = asyncio.Event()
        freed = self._freed
        freed.clear()
        waits = [asyncio.ensure_future(freed.wait()), asyncio.ensure_future(stopping.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
