"""The rate a provider allows, found while the run goes when the user gave none (`--rpm` / `--ipm`).

Two sources, the better first:

- The provider's own accounting: OpenAI sends `x-ratelimit-limit-requests` / `-images` (per minute) on its
  answers and its 429s. A limit read there is paced like a configured one (engine/limiter.py: 1% under it),
  and later 429s do not slow it: they are timing jitter, as with a configured limit.
- 429s alone (Gemini, most gateways), AIMD-style: unpaced until the first 429; then the pace is set to the
  calls the provider took over its window as the first round's 429s reveal it (`_first_rate`), and each
  later 429 episode multiplies it by `DECREASE` (at most once per `MIN_CUT_SPACING`); while answers come and
  the pace is what holds senders back, it grows with each answer: fast until a probe first meets the limit
  (`SEARCH_PER_ANSWER`), slowly after (`PROBE_PER_ANSWER`). An episode is one round of sending: a
  429 for a call sent before the last episode began is old news (it was sent at the old pace) and changes
  nothing, so that 32 calls in flight cut the pace once, not 32 times.

The numbers: a sawtooth from `DECREASE` x L up to L averages about (1 + 0.94) / 2 = 0.97 of the limit; probing
0.03% an answer crosses L about every 200 answers, and each crossing costs the few calls in flight at that
moment, well under 2% of the requests (bench/ratelimit.py measures both).
"""

from __future__ import annotations

import bisect
import math
from collections import deque

from pixelmill.errors import RateLimits

DECREASE = 0.94  # pace after a 429 episode, as a share of the pace before it
# Growth of a learned pace per answer while the pace is what holds senders back. Per answer, not per second,
# so that it suits 10 requests a minute as well as 1,200: until a probe has met the limit once (SEARCH), fast,
# since the first estimate is rough; after that (PROBE), slow, since each crossing of the limit costs 429s.
SEARCH_PER_ANSWER = 0.002
PROBE_PER_ANSWER = 0.0003
MIN_PER_MINUTE = 1.0  # a learned pace never goes below this
# ... nor below this share of the first estimate: a provider whose 429s come at random (overload, injected
# faults) and not from a rate would otherwise cut the pace by DECREASE every second, to nothing.
FLOOR_SHARE = 0.5
# At most one decrease a second: a decrease needs a moment to show in the provider's window, and a provider
# that answers 429 at random (overload, not a rate) would otherwise cut the pace to nothing.
MIN_CUT_SPACING = 1.0
WINDOW = 60.0  # seconds of answers that measure the rate received (providers' limits are per minute)


class RateFinder:
    """Learns `requests` and `images` (per minute; None: nothing learned) from answers and 429s."""

    def __init__(self) -> None:
        self.requests: float | None = None
        self.images: float | None = None
        self.source: str | None = None  # "rate-limit headers" | "429s"
        self._told = False  # a limit came from headers: 429s no longer steer the pace
        self._answers: deque[float] = deque()  # when answers arrived, the last WINDOW seconds
        self._admitted: list[float] = []  # when calls were let in, until the first estimate is refined
        self._first_sent: float | None = None
        self._episode_at = -math.inf  # when the last 429 episode began
        self._first_episode_at = math.inf  # when the first one did
        self._decreased_at = -math.inf
        self._searching = True  # no probe has met the limit yet
        self._floor = MIN_PER_MINUTE

    def admitted(self, now: float) -> None:
        """A call is let in (for the first estimate: how many calls the provider took before its first 429)."""
        if self._searching and self.source is None and len(self._admitted) < 100_000:
            self._admitted.append(now)

    def on_answer(self, limits: RateLimits | None, sent_at: float, now: float, *, binding: bool) -> None:
        """An answer arrived for a call sent at `sent_at`; `binding`: the pace held senders back just now."""
        self._sent(sent_at)
        self._answers.append(now)
        while self._answers and self._answers[0] < now - WINDOW:
            self._answers.popleft()
        if self._learn(limits):
            return
        if self.requests is not None and not self._told and binding:
            self.requests *= 1.0 + (SEARCH_PER_ANSWER if self._searching else PROBE_PER_ANSWER)

    def on_rate_limited(self, limits: RateLimits | None, sent_at: float | None, now: float,
                        retry_after: float | None = None) -> bool:
        """A 429 for a call sent at `sent_at` (None: unknown), with the provider's (credible) Retry-After.
        True when it begins a new episode (the call was sent after the last one began): only then may the
        shared pause start again."""
        if sent_at is not None:
            self._sent(sent_at)
        news = sent_at is None or sent_at >= self._episode_at
        if news:
            self._episode_at = now
            self._first_episode_at = min(self._first_episode_at, now)
        if self._learn(limits) or self._told:
            return news
        first_round = sent_at is not None and sent_at < self._first_episode_at
        if self.requests is None or (first_round and self._decreased_at < 0):
            # The first round: each of its 429s may lower the first estimate (calls come back out of order)
            first = self._first_rate(now, sent_at, retry_after)
            if first is not None:
                self.requests = first if self.requests is None else min(self.requests, first)
                self._floor = max(MIN_PER_MINUTE, self.requests * FLOOR_SHARE)
                self.source = "429s"
        elif news and now - self._decreased_at >= MIN_CUT_SPACING:
            self.requests = max(self._floor, self.requests * DECREASE)
            self._decreased_at = now
            self._searching = False
            self._admitted.clear()
        return news

    def describe(self) -> str | None:
        """"1200 images/min (from rate-limit headers)", or None when nothing was learned."""
        parts = []
        if self.requests is not None:
            parts.append(f"{self.requests:.0f} requests/min")
        if self.images is not None:
            parts.append(f"{self.images:.0f} images/min")
        return f"{', '.join(parts)} (from {self.source})" if parts else None

    def _learn(self, limits: RateLimits | None) -> bool:
        """Take the limits a provider stated; True when it stated one."""
        if limits is None or (limits.requests_limit is None and limits.images_limit is None):
            return False
        if limits.requests_limit is not None:
            self.requests = limits.requests_limit
        elif not self._told:
            self.requests = None  # a pace learned from 429s gives way to the provider's own figure
        if limits.images_limit is not None:
            self.images = limits.images_limit
        self._told = True
        self.source = "rate-limit headers"
        return True

    def _sent(self, sent_at: float) -> None:
        if self._first_sent is None or sent_at < self._first_sent:
            self._first_sent = sent_at

    def _first_rate(self, now: float, sent_at: float | None, retry_after: float | None) -> float | None:
        """An estimate from a 429 of the first round: the calls the provider took before this one (those let
        in before it), over the provider's window as the 429 reveals it (the time since the first call plus
        the wait it asks for: a burst that used up a per-minute limit in 3 s hears "retry in 57 s"). Without
        a Retry-After the time since the first call stands for the window; later episodes correct an
        estimate too high."""
        if self._first_sent is None:
            return None
        window = min(WINDOW, now - self._first_sent + (retry_after or 0.0))
        if sent_at is not None and self._admitted:
            taken = max(0, bisect.bisect_left(self._admitted, sent_at) - 1)  # not counting this call itself
        else:
            taken = len(self._answers)
        if window <= 0 or taken == 0:
            return None
        return max(MIN_PER_MINUTE, taken * 60.0 / window)
