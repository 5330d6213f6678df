"""Admission control before each provider call: concurrency slots, request and image rate limits, the
shared pause after a 429, and the budget.

Rates are paced, not bursted: a call is admitted at most every 60/rpm seconds (and every n*60/ipm for
images), 1% under the limit given, so that timing jitter between client and provider does not provoke 429s
(paced at exactly the limit, one request in ~130 arrived a hair early; measured in bench/ratelimit.py). A 429
pauses all sending until its Retry-After has passed.
"""

from __future__ import annotations

import asyncio
import time

from pixelmill.errors import BudgetReached

HEADROOM = 0.99  # pace this far under a configured limit


class Pacer:
    """Spaces events `interval` seconds apart (a GCRA-style virtual clock with a small burst)."""

    def __init__(self, per_minute: float | None, burst: float = 1.0) -> None:
        self.interval = 60.0 / (per_minute * HEADROOM) if per_minute else 0.0
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


class Limiter:
    def __init__(self, concurrency: int, rpm: float | None, ipm: float | None) -> None:
        self.concurrency = concurrency
        self.slots = asyncio.Semaphore(concurrency)
        self.requests = Pacer(rpm)
        self.images = Pacer(ipm)
        self.paused_until = 0.0

    async def admit(self, images: int, stopping: asyncio.Event) -> None:
        """Wait until a call for `images` images may be sent. The caller then holds a concurrency slot (and
        checks `stopping`: the waits here end early when the run stops)."""
        await self.slots.acquire()
        try:
            while not stopping.is_set():
                wait = self.paused_until - time.monotonic()
                if wait <= 0:
                    break
                await _sleep_unless(stopping, wait)
            wait = max(self.requests.reserve(), self.images.reserve(images))
            if wait > 0:
                await _sleep_unless(stopping, wait)
        except BaseException:
            self.slots.release()
            raise

    def release(self) -> None:
        self.slots.release()

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A 429: hold every sender back until the provider's Retry-After (1 s when it gave none). A configured
        pace is not slowed further: it is already under the limit, and a slowed pace costs more images than the
        rare 429 it avoids."""
        pause = retry_after if retry_after is not None else 1.0
        self.paused_until = max(self.paused_until, time.monotonic() + min(pause, 60.0))


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        pass
