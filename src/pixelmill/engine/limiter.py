"""The pace of calls: concurrency slots, request and image rate limits, and the shared pause after a 429.
(The budget is engine/budget.py; engine/admission.py takes a slot and a reservation together for each call.)

Rates are paced, not bursted: a call is admitted at most every 60/rpm seconds (and every n*60/ipm for
images), 1% under the limit given, so that timing jitter between client and provider does not provoke 429s
(paced at exactly the limit, one request in ~130 arrived a hair early; measured in bench/ratelimit.py).
Without --rpm/--ipm the pace is learned (engine/ratefinder.py: from the provider's rate-limit headers, else
from 429s); a configured limit stays a hard ceiling over whatever is learned.

A 429 pauses all sending until its Retry-After has passed (without one: 1 s while calls are unpaced, no pause
once they are paced, since the slowed pace is then the shared answer; an absurd Retry-After counts as none,
engine/retry.py's `credible_retry_after`), at most `MAX_SHARED_PAUSE`. Only a 429 for a call sent after the
last pause began can start the pause again: 429s of calls that were already in flight are old news, so many
rows cannot stretch one pause without bound. Senders released by a pause go through the pace, not all at once.
"""

from __future__ import annotations

import asyncio
import time

from pixelmill.engine.ratefinder import RateFinder
from pixelmill.engine.retry import credible_retry_after
from pixelmill.errors import RateLimits

HEADROOM = 0.99  # pace this far under a configured limit
DEFAULT_PAUSE = 1.0  # shared pause after a 429 that gave no (credible) Retry-After
MAX_SHARED_PAUSE = 30.0  # no 429 holds every row back longer than this; each row's own wait may be longer
BINDING = 1.0  # seconds: the pace "holds senders back" if it made one wait this recently


class Pacer:
    """Spaces events `interval` seconds apart (a GCRA-style virtual clock with a small burst)."""

    def __init__(self, per_minute: float | None, burst: float = 1.0) -> None:
        self.interval = 0.0
        self.burst = burst
        self.waited_at = -BINDING  # when a reservation last had to wait
        self._next = 0.0
        self.set_rate(per_minute)

    def set_rate(self, per_minute: float | None) -> None:
        self.interval = 60.0 / (per_minute * HEADROOM) if per_minute else 0.0

    def reserve(self, weight: float = 1.0) -> float:
        """Claim capacity for `weight` units; return how long to wait before using it."""
        if not self.interval:
            return 0.0
        now = time.monotonic()
        start = max(self._next, now - self.interval * (self.burst - 1))
        self._next = start + self.interval * weight
        if start > now:
            self.waited_at = now
        return max(0.0, start - now)

    def ready_at(self) -> float:
        """When the next event could go (monotonic seconds), claiming nothing."""
        if not self.interval:
            return 0.0
        return max(self._next, time.monotonic() - self.interval * (self.burst - 1))


class Limiter:
    def __init__(self, concurrency: int, rpm: float | None, ipm: float | None) -> None:
        self.concurrency = concurrency
        self.slots = asyncio.Semaphore(concurrency)
        self.rpm = rpm  # configured: hard ceilings
        self.ipm = ipm
        self.requests = Pacer(rpm)
        self.images = Pacer(ipm)
        self.paused_until = 0.0
        self.finder = RateFinder()

    async def admit(self, images: int, stopping: asyncio.Event) -> None:
        """Wait until a call for `images` images may be sent. The caller then holds a concurrency slot (and
        checks `stopping`: the waits here end early when the run stops)."""
        await self.slots.acquire()
        try:
            await self.pace(images, stopping)
        except BaseException:
            self.slots.release()
            raise

    async def pace(self, images: int, stopping: asyncio.Event) -> None:
        """The pacing part of `admit`, for a caller that holds a slot already: wait out a 429 pause and this
        call's turn in the request and image paces."""
        while not stopping.is_set():
            wait = self.paused_until - time.monotonic()
            if wait > 0:
                await _sleep_unless(stopping, wait)
                continue
            wait = max(self.requests.reserve(), self.images.reserve(images))
            if wait > 0:
                await _sleep_unless(stopping, wait)
            if self.paused_until <= time.monotonic():
                self.finder.admitted(time.monotonic())
                break  # else a 429 came while this call waited for its turn: wait out the pause too

    def release(self) -> None:
        self.slots.release()

    def ready_at(self, images: int = 1) -> float:
        """When a call could go here at the soonest (monotonic seconds; the past means now), claiming nothing:
        the end of a 429 pause, the request pace's next turn and the image pace's."""
        return max(self.paused_until, self.requests.ready_at(), self.images.ready_at())

    def on_answer(self, limits: RateLimits | None, sent_at: float) -> None:
        """An answer (any but a 429) to a call sent at `sent_at`: learn from its headers, probe the pace up."""
        now = time.monotonic()
        binding = now - self.requests.waited_at < BINDING
        self.finder.on_answer(limits, sent_at, now, binding=binding)
        self._follow()

    def on_rate_limited(self, retry_after: float | None, *, sent_at: float | None = None,
                        limits: RateLimits | None = None) -> None:
        """A 429 for a call sent at `sent_at`: hold every sender back until the provider's Retry-After (see the
        module docstring for its bounds) and slow the learned pace. A configured pace is not slowed further:
        it is already under the limit, and a slowed pace costs more images than the rare 429 it avoids."""
        now = time.monotonic()
        hint = credible_retry_after(retry_after)
        if not self.finder.on_rate_limited(limits, sent_at, now, hint):
            return
        self._follow()
        if hint is None and self.requests.interval:
            return  # no hint, but a pace: the slowed pace is the shared answer; each row backs off on its own
        pause = min(hint if hint is not None else DEFAULT_PAUSE, MAX_SHARED_PAUSE)
        self.paused_until = max(self.paused_until, now + pause)

    def found(self) -> str | None:
        """The rate learned so far, for the run's summary: "118 requests/min (from 429s)"."""
        return self.finder.describe()

    def _follow(self) -> None:
        """Pace at the learned rates, under the configured ones."""
        self.requests.set_rate(_lowest(self.rpm, self.finder.requests))
        self.images.set_rate(_lowest(self.ipm, self.finder.images))


def _lowest(configured: float | None, learned: float | None) -> float | None:
    if configured is None or learned is None:
        return configured if learned is None else learned
    return min(configured, learned)


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        pass
