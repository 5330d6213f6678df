"""The pace of calls: concurrency slots, request and image rate limits, and the shared pause after a 429.
(The budget is engine/budget.py; engine/admission.py takes a slot and a reservation together for each call.)

Rates are paced, not bursted: a call is admitted at most every 60/rpm seconds (and every n*60/ipm for
images), 1% under the limit given, so that timing jitter between client and provider does not provoke 429s
(paced at exactly the limit, one request in ~130 arrived a hair early; measured in bench/ratelimit.py). A 429
pauses all sending until its Retry-After has passed.
"""

from __future__ import annotations

import asyncio
import time

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
