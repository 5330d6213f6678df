"""Live counters of a run: the engine writes them, progress displays and summaries read them.

Besides the rows, the outcome of every attempt (engine/call.py): failed attempts per error kind with the latest
reason (the live display shows why calls fail while it happens), and a window of the latest answers for the
share of 429s (a high share says the run sends faster than the provider allows: reports/progress.py suggests
`--ipm` / `--rpm`).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

RECENT_CALLS = 100  # the window of latest attempts that the share of 429s is taken over


@dataclass(slots=True)
class RunStats:
    started: float = field(default_factory=time.monotonic)
    total: int | None = None  # rows in the source, when known
    rows_read: int = 0
    rows_skipped: int = 0  # already done in an earlier run
    rows_done: int = 0
    rows_failed: int = 0
    images: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    rate_found: str | None = None  # the provider's rate as learned without --rpm/--ipm (engine/ratefinder.py)
    in_flight: int = 0
    spent: float = 0.0  # this run (calls whose outcome is unknown included, at their reservation)
    unanswered: int = 0  # calls that may have been billed without a usable answer (sent, answer lost or broken)
    unanswered_cost: float = 0.0  # what they were charged: the most they can have cost
    spent_before: float = 0.0  # earlier runs of the same RUNDIR
    failures: dict[str, int] = field(default_factory=dict)  # error kind -> rows
    # A full disk: paid answers whose images could not be written, and results the journal could not record even
    # after the reserve was freed. Their rows stay pending: a re-run pays for those calls again.
    unstored: int = 0
    unrecorded: int = 0
    failed_attempts: dict[str, int] = field(default_factory=dict)  # error kind -> attempts (retried ones too)
    last_failure: str | None = None  # the latest failed attempt's error (messages never hold a key)
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=RECENT_CALLS))  # latest attempts: a 429?
    # Remote jobs (engine/jobs.py): submitted by this run (resubmits and found lost submits included), being
    # polled now, submitted again after failing on the provider's side, found by listing after a lost submit,
    # still running at their deadline, polls made; and, at the end, jobs left running (journaled: a re-run
    # collects them).
    jobs_submitted: int = 0
    jobs_live: int = 0
    jobs_resubmitted: int = 0
    jobs_recovered: int = 0
    jobs_waiting: int = 0
    polls: int = 0
    jobs_left: int = 0
    # --batch (engine/batch/): rows sent again in a new batch because an expired, cancelled or failed batch left
    # them unanswered.
    batch_resubmitted: int = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def images_per_minute(self) -> float:
        elapsed = self.elapsed()
        return self.images * 60.0 / elapsed if elapsed > 0 else 0.0

    def attempt_failed(self, kind: str, message: str) -> None:
        """An attempt failed (it may be retried) with an error of this kind."""
        self.failed_attempts[kind] = self.failed_attempts.get(kind, 0) + 1
        self.last_failure = message
        self.recent.append(kind == "rate_limited")

    def attempt_answered(self) -> None:
        self.recent.append(False)

    def recent_429_share(self, least: int = 20) -> float | None:
        """The share of 429s among the latest attempts, or None before `least` of them."""
        recent = self.recent
        return sum(recent) / len(recent) if len(recent) >= least else None

    def count_failure(self, kind: str) -> None:
        """A row failed, for a reason of this kind."""
        self.rows_failed += 1
        self.failures[kind] = self.failures.get(kind, 0) + 1

    def forget_failure(self, kind: str) -> None:
        """A failure counted by `count_failure` no longer stands (the row goes on to a fallback model)."""
        self.rows_failed -= 1
        self.failures[kind] -= 1
