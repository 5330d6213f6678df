"""When to try a failed call again, and how long to wait.

- 429: wait the provider's Retry-After (else exponential backoff); bounded by the row's deadline only, since a
  rate limit clears with time and giving up would only leave rows to re-run by hand.
- Transient (5xx, a connection that could not be opened): exponential backoff with full jitter, up to
  `max_retries`.
- Calls that may have been billed (`maybe_billed`): answers that arrived broken (truncated, malformed, invalid
  base64) and requests sent whose answer never came (timeouts while waiting, resets: `UnknownOutcome`), so at
  most `max_billed_retries` (default 1).
- Everything else (refusals, 400s, auth, quota, missing model): no retry.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from pixelmill.errors import PixelmillError, RateLimited, TransientError


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


def next_delay(policy: RetryPolicy, state: RetryState, error: PixelmillError, rng: random.Random) -> float | None:
    """Seconds to wait before the next attempt, or None to give up and record the error."""
    remaining = policy.deadline - (time.monotonic() - state.started)
    if isinstance(error, RateLimited):
        state.rate_limited += 1
        if error.retry_after is not None:
            delay = error.retry_after + rng.uniform(0, 0.1 * error.retry_after + 0.05)
        else:
            delay = _backoff(policy, state.rate_limited, rng)
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
    step = min(policy.cap, policy.base * 2 ** (attempt - 1))
    return rng.uniform(step / 2, step)
