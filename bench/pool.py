"""The honest bound for a finite run (DESIGN 4): a perfect C-slot pool replayed on the realised latencies.

Each request's own time is taken from the emulator's log, in arrival order; each goes into the slot that
frees first, with no gap. The span of that schedule is what any client with C slots could at best achieve on
those latencies; efficiency = bound span / achieved span.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def perfect_pool_span(latencies: Sequence[float], slots: int) -> float:
    """Span (first send to last answer) of a perfect `slots`-slot pool serving `latencies` in order."""
    if not latencies:
        return 0.0
    free_at = [0.0] * min(slots, len(latencies))
    heapq.heapify(free_at)
    end = 0.0
    for latency in latencies:
        start = heapq.heappop(free_at)
        done = start + latency
        end = max(end, done)
        heapq.heappush(free_at, done)
    return end


def span(starts: Sequence[float], ends: Sequence[float]) -> float:
    return max(ends) - min(starts) if starts else 0.0
