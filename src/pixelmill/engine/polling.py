"""When to poll a remote job: a schedule learned from the model's own jobs.

A fixed back-off (the provider's `poll_delay`: 0.5 s growing by half to 5 s) keeps polls per image small at any
latency, but finds a finished job late: up to a whole step after it ended, which at 2-second jobs is half a job
again, so each slot waits idle and throughput falls to about two thirds of what the provider allows. Jobs of one
model take about the same time, so once a few have ended the clock knows when the next will: the first poll goes a
little before the usual end (a low quantile of the ends seen) and the next ones follow in small steps (a tenth of
that time, 0.25 s at least), growing by a quarter while a job runs long, to the provider's 5-second cap. Polls per
image stay at about three at any latency; a finished job is found within a tenth of its run time.

Each job's end is known only between its last pending poll and the poll that found it done: the midpoint is what
the clock learns (the latest `WINDOW` per model). Until `WARM` jobs have ended, and for a job whose submit time is
not this process's (a resumed run), the provider's own back-off applies.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

WINDOW = 64  # the latest job ends learned per model
WARM = 4  # ends seen before the clock trusts them
QUANTILE = 0.25  # the first poll goes at this quantile of the ends seen, a little before most jobs end
LEAD = 0.9  # ...and a little earlier still
MIN_STEP = 0.25  # seconds between polls at least
STEP_SHARE = 0.1  # the steps after the first poll: this share of the usual run time
GROWTH = 1.25  # a job that runs long is polled less and less often
MAX_STEP = 5.0  # ...up to this


class PollClock:
    """The poll schedule of one run's jobs, per model (see the module docstring)."""

    def __init__(self) -> None:
        self._ends: dict[str, deque[float]] = {}

    def learn(self, model: str, pending_at: float, done_at: float) -> None:
        """A job of `model` was still pending `pending_at` seconds after its submit and found ended at `done_at`."""
        self._ends.setdefault(model, deque(maxlen=WINDOW)).append((pending_at + done_at) / 2)

    def usual(self, model: str) -> float | None:
        """The quantile of the ends seen for `model`, once enough have been seen."""
        ends = self._ends.get(model)
        if ends is None or len(ends) < WARM:
            return None
        ordered = sorted(ends)
        return ordered[int(QUANTILE * (len(ordered) - 1))]

    def delays(self, model: str, fallback: Callable[[int], float], *, elapsed: float | None = 0.0
               ) -> Iterator[float]:
        """The sleeps before each poll of a job submitted `elapsed` seconds ago (None: unknown, a job of an
        earlier run). `fallback(polls)` is the provider's own back-off, used until the clock knows the model."""
        usual = self.usual(model)
        if usual is None or elapsed is None:
            polls = 0
            while True:
                yield fallback(polls)
                polls += 1
        step = max(MIN_STEP, STEP_SHARE * usual)
        yield max(0.0, LEAD * usual - elapsed)
        while True:
            yield min(step, MAX_STEP)
            step *= GROWTH
