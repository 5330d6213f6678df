"""Remote jobs (fal queue requests, Replicate predictions, BFL tasks): one state machine, computed lazily.

A job waits queued for `queue_time`, then for a free slot when its queue has a concurrency limit (fal counts
only running requests toward it), runs for its latency, and ends with its planned outcome. Nothing runs in the
background: every read (`JobQueue.get`, `.active`, `.jobs`) first advances the queue to the present, replaying
the starts and ends that happened since in time order, so the answers are the same whether a client polls every
10 ms or once an hour, and a test's clock is the monotonic clock. Each route maps the phases to its API's words
(`queued` = fal IN_QUEUE, Replicate `starting`, BFL `Pending`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Phases: queued -> running -> succeeded | failed; queued -> canceled | aborted; running -> canceled.
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
JOBS_KEPT = 100_000  # per queue; the oldest finished jobs are forgotten past this (their handles then 404)


@dataclass(slots=True)
class Job:
    id: str
    family: str  # fal | replicate | bfl
    model: str
    prompt: str
    input: dict[str, Any]
    submitted: float  # monotonic seconds
    created_wall: float  # time.time() at submit (for timestamps on the wire)
    latency: float  # run time once started
    queue_time: float  # minimum time queued
    outcome: str = "succeeded"  # planned end: succeeded | failed
    refusal: str | None = None  # a succeeded job whose content was refused: moderation | prompt_blocked | ...
    error: str | None = None  # the failure message of a failed job
    error_type: str | None = None
    deadline: float | None = None  # monotonic: Replicate Cancel-After
    phase: str = "queued"
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] | None = None  # the route's answer body, built when the job ends
    result_expires: float | None = None  # monotonic: the result (or its data) is gone after this
    data: dict[str, Any] = field(default_factory=dict)  # the route's own fields (urls, media names, ...)

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL

    def expired(self, now: float) -> bool:
        return self.result_expires is not None and now >= self.result_expires

    def wall(self, monotonic: float | None) -> float | None:
        """A monotonic instant of this job as wall-clock seconds."""
        return None if monotonic is None else self.created_wall + (monotonic - self.submitted)


Finisher = Callable[[Job], None]  # called once when a job ends (in any terminal phase): builds its result


class JobQueue:
    """One API's jobs. `limit()` is read at each step (the config may change while jobs run); None: no limit."""

    def __init__(self, limit: Callable[[], int | None], finish: Finisher | None = None) -> None:
        self._limit = limit
        self.finish = finish
        self._jobs: dict[str, Job] = {}
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._lock = threading.RLock()

    def add(self, job: Job, now: float | None = None) -> Job:
        with self._lock:
            now = time.monotonic() if now is None else now
            self._advance(now)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._advance(now)
            self._forget_old()
            return job

    def get(self, job_id: str, now: float | None = None) -> Job | None:
        with self._lock:
            self._advance(time.monotonic() if now is None else now)
            return self._jobs.get(job_id)

    def jobs(self, now: float | None = None) -> list[Job]:
        """Every job kept, oldest first."""
        with self._lock:
            self._advance(time.monotonic() if now is None else now)
            return list(self._jobs.values())

    def active(self, now: float | None = None, model: str | None = None) -> int:
        """Jobs submitted and not yet finished (queued or running)."""
        with self._lock:
            self._advance(time.monotonic() if now is None else now)
            return sum(1 for j in (*self._waiting, *self._running) if model is None or j.model == model)

    def cancel(self, job_id: str, now: float | None = None, *, phase: str = "canceled") -> Job | None:
        """End a queued or running job now in `phase`; a finished job is left as it is."""
        with self._lock:
            now = time.monotonic() if now is None else now
            self._advance(now)
            job = self._jobs.get(job_id)
            if job is None or job.done:
                return job
            if job in self._waiting:
                self._waiting.remove(job)
            else:
                self._running.remove(job)
            self._end(job, phase, now)
            self._advance(now)
            return job

    def clear(self) -> None:
        with self._lock:
            self._jobs.clear()
            self._waiting.clear()
            self._running.clear()

    # ------------------------------------------------------------ the replay

    def _advance(self, now: float) -> None:
        """Replay every start and end up to `now`, in time order."""
        clock = -1.0  # the time a slot was last freed (a start can not precede it)
        while True:
            self._start_what_fits(clock, now)
            events: list[tuple[float, Job, str]] = []
            for job in self._running:
                end = job.started + job.latency if job.started is not None else now
                if job.deadline is not None and job.deadline < end:
                    events.append((job.deadline, job, "canceled"))
                else:
                    events.append((end, job, job.outcome))
            for job in self._waiting:  # a deadline passed while queued: aborted, never started
                if job.deadline is not None:
                    events.append((job.deadline, job, "aborted"))
            due = [e for e in events if e[0] <= now]
            if not due:
                return
            at, job, phase = min(due, key=lambda e: e[0])
            if job in self._running:
                self._running.remove(job)
            else:
                self._waiting.remove(job)
            self._end(job, phase, at)
            clock = at

    def _start_what_fits(self, clock: float, now: float) -> None:
        limit = self._limit()
        kept: deque[Job] = deque()
        while self._waiting:
            job = self._waiting.popleft()
            ready = max(job.submitted + job.queue_time, clock)
            if ready <= now and (limit is None or len(self._running) < limit) \
                    and (job.deadline is None or ready < job.deadline):
                job.phase = "running"
                job.started = ready
                self._running.append(job)
            else:
                kept.append(job)
                if limit is not None and len(self._running) >= limit:
                    kept.extend(self._waiting)  # first come, first served: nobody overtakes
                    self._waiting.clear()
        self._waiting = kept

    def _end(self, job: Job, phase: str, at: float) -> None:
        job.phase = phase
        job.finished = at
        if self.finish is not None:
            self.finish(job)

    def _forget_old(self) -> None:
        while len(self._jobs) > JOBS_KEPT:
            oldest = next(iter(self._jobs.values()))
            if not oldest.done:
                return
            del self._jobs[oldest.id]

    def position(self, job: Job) -> int:
        """0-based place of a queued job among the waiting ones."""
        with self._lock:
            try:
                return self._waiting.index(job)
            except ValueError:
                return 0
