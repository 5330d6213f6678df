"""When to try a failed call again, and how long to wait.

- 429: bounded by the row's deadline only, since a rate limit clears with time and giving up would only leave
  rows to re-run by hand. The wait is never shorter than a floor that grows with the call's 429s (the same
  exponential backoff with jitter as transient errors), Retry-After or not: a provider that says
  `Retry-After: 0`, a negative delay or a date in the past is still asking to slow down, and obeying it
  literally made thousands of requests a second. A Retry-After longer than the floor is obeyed up to
  `MAX_CREDIBLE_WAIT`; one beyond it (1e9 s, a date years ahead) is a broken hint, not a plan: the wait is
  the backoff's cap, and the row goes on trying until its deadline decides.
- Transient (5xx, a connection that could not be opened): exponential backoff with full jitter, up to
  `max_retries`.
- Calls that may have been billed (`maybe_billed`): answers that arrived broken (truncated, malformed, invalid
  base64) and requests sent whose answer never came (timeouts while waiting, resets: `UnknownOutcome`), so at
  most `max_billed_retries` (default 1).
- Everything else (refusals, 400s, auth, quota, missing model): no retry.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

from pixelmill.errors import PixelmillError, RateLimited, TransientError

# The longest Retry-After taken at its word (openai-python honours up to 60 s; Gemini asks for about 40 s
# after a per-minute limit). Longer ones are capped (see the module docstring).
MAX_CREDIBLE_WAIT = 120.0


@dataclass(slots=True)
class RetryPolicy:
    max_retries: int = 5
    max_billed_retries: int = 1
    deadline: float = 600.0
    base: float = 0.5
    cap: float = 30.0


@dataclass(slots=True)
class RetryState:
    """Per (row, call): the counters the policy needs."""

    started: float
    transient: int = 0
    billed: int = 0
    rate_limited: int = 0

    @classmethod
    def start(cls) -> RetryState:
        return cls(time.monotonic())


def credible_retry_after(value: float | None) -> float | None:
    """A provider's Retry-After as something to wait: None when absent, not a number or beyond
    `MAX_CREDIBLE_WAIT`; 0 when it is zero or negative (the floor then decides)."""
    if value is None or not math.isfinite(value) or value > MAX_CREDIBLE_WAIT:
        return None
    return max(0.0, value)


def next_delay(policy: RetryPolicy, state: RetryState, error: PixelmillError, rng: random.Random) -> float | None:
    """Seconds to wait before the next attempt, or None to give up and record the error."""
    remaining = policy.deadline - (time.monotonic() - state.started)
    if isinstance(error, RateLimited):
        state.rate_limited += 1
        delay = _backoff(policy, state.rate_limited, rng)  # the floor, growing with each 429
        hint = error.retry_after
        if hint is not None and hint > MAX_CREDIBLE_WAIT:  # infinity too; NaN is no hint (below)
            hint = policy.cap  # absurd: capped, not obeyed
        hint = credible_retry_after(hint)
        if hint is not None and hint > 0:
            delay = max(delay, hint + rng.uniform(0, 0.1 * hint + 0.05))
    elif isinstance(error, TransientError):
        if error.maybe_billed:
            state.billed += 1
            if state.billed > policy.max_billed_retries:
                return None
        state.transient += 1
        if state.transient > policy.max_retries:
            return None
        delay = _backoff(policy, state.transient, rng)
    else:
        return None
    return delay if delay < remaining else None


def _backoff(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter (between half and all of the exponential step)."""
    step = min(policy.cap, policy.base * 2 ** min(attempt - 1, 60))
    return rng.uniform(step / 2, step)
