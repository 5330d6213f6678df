"""Admission control before each provider call: concurrency slots, request and image rate limits, the
shared pause after a 429, and the budget.

Rates are paced, not bursted: a call is admitted at most every 60/rpm seconds (and every n*60/ipm for
images), which keeps a run just under a provider's limit without provoking 429s. A 429 pauses all sending
until its Retry-After has passed, and lowers the pace for a while (multiplicative decrease, slow recovery), so
that a run without configured limits settles near the provider's real one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from pixelmill.errors import BudgetReached


class Pacer:
    """Spaces events `interval` seconds apart (a GCRA-style virtual clock with a small burst)."""

    def __init__(self, per_minute: float | None, burst: float = 1.0) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.burst = burst
        self._next = 0.0

    def reserve(self, weight: float = 1.0) -> float:
        """Claim capacity for `weight` units; return how long to wait before using it."""
        if not self.interval:
            return 0.0
        now = time.monotonic()
        start = max(self._next, now - self.interval * (self.burst - 1))
        self._next = start + self.interval * weight
        return max(0.0, start - now)


@dataclass(slots=True)
class Budget:
    """Spend so far plus reservations for calls in flight never passes `limit`."""

    limit: float | None
    spent: float = 0.0
    reserved: float = 0.0

    def reserve(self, amount: float) -> None:
        if self.limit is None:
            return
        if self.spent + self.reserved + amount > self.limit + 1e-12:
            raise BudgetReached(
                f"budget of ${self.limit:.2f} reached: ${self.spent:.4f} spent, ${self.reserved:.4f} reserved "
                f"for calls in flight, next call up to ${amount:.4f}. Raise --max-cost and run the same "
                "command again to continue (done rows are not paid again)."
            )
        self.reserved += amount

    def settle(self, reserved: float, actual: float) -> None:
        if self.limit is not None:
            self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual


class Limiter:
    def __init__(self, concurrency: int, rpm: float | None, ipm: float | None) -> None:
        self.slots = asyncio.Semaphore(concurrency)
        self.requests = Pacer(rpm)
        self.images = Pacer(ipm)
        self.paused_until = 0.0
        self.slowdown = 1.0  # >1 after 429s: pacing intervals are multiplied by it
        self.rate_limited = 0

    async def admit(self, images: int) -> None:
        """Wait until a call for `images` images may be sent. The caller then holds a concurrency slot."""
        await self.slots.acquire()
        try:
            while True:
                wait = self.paused_until - time.monotonic()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            wait = max(self.requests.reserve(self.slowdown), self.images.reserve(images * self.slowdown))
            if wait > 0:
                await asyncio.sleep(wait)
        except BaseException:
            self.slots.release()
            raise

    def release(self) -> None:
        self.slots.release()

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A 429: hold every sender back until the provider's Retry-After (1 s when it gave none), and slow
        the pace a little so that the next burst does not hit the same wall."""
        self.rate_limited += 1
        pause = retry_after if retry_after is not None else 1.0
        self.paused_until = max(self.paused_until, time.monotonic() + min(pause, 60.0))
        self.slowdown = min(self.slowdown * 1.25, 8.0)

    def on_success(self) -> None:
        if self.slowdown > 1.0:
            self.slowdown = max(1.0, self.slowdown * 0.995)
