"""One call to a remote-job provider (fal, Replicate, Black Forest Labs: `JobProvider`), from submit to collection,
journaled so that a crash, a Ctrl-C or a resume never submits (and pays for) a row twice.

```python
async with jobs.send(target, request, params, book) as outcome:   # book: engine/intents.py RowBook
    ...exactly as with engine/call.py's Sender: an Answer (store, settle, save) or a Failure
```

The order of things, each step journaled before the next (the journal discipline of images today):
1. the submit's intent is journaled (`book.sent`), then the job is submitted once (never retried blindly: a lost
   answer may be a paid job);
2. the moment the submit answers, its handle is journaled on the row's step with the amount it reserved, in the
   transaction that resolves the intent (`book.submitted`); only then is it polled;
3. polls are spaced by the provider's `poll_delay` (0.5 s growing to 5 s) until a few of the model's jobs have
   ended, then by a schedule learned from them (engine/polling.py: the first poll a little before the usual
   end, then small steps), and are free: a poll that fails
   (`TransientError`, a 429) is polled again; the job keeps its concurrency slot and its budget reservation
   until its outcome is recorded (`--concurrency` bounds jobs in flight; pacing, --rpm/--ipm, applies to submits);
4. the outcome: `done` is an `Answer` stored and journaled like any call's; `failed` is the retry policy's:
   `ResultLost` (paid, result gone) fails the row charged at its reservation, never resubmitted
   (`--retry-failed` pays again); a refusal or rejection fails the row; a job that failed on the provider's side
   (`TransientError`) is submitted again within the retry limits, each resubmit journaled (`resubmits`).

A re-run finds the journaled handle (`book.live`) and polls it, holding a slot but no new reservation: the
job's reservation is in the spend already (`Journal.spent`, `results.live`) and is replaced by its bill when it
is collected (`Earlier`). A submit whose answer never came (`UnknownOutcome`, or an intent a killed run left:
`lost_submits`) is looked for first (`JobProvider.recover`: Replicate lists its predictions); a job found is
adopted and polled, not charged as unknown; otherwise it stays charged as possibly billed and
`--max-billed-retries` decides whether it is submitted again (the lost submits of earlier runs count).

Stopping (Ctrl-C): no new submit; jobs already submitted are still polled and collected until the drain timeout;
a job cut short then (or still running at the call's deadline) stays journaled, its row pending, and a re-run
collects it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from pixelmill.engine.budget import Budget
from pixelmill.engine.call import Answer, CallBook, Failure, Held, Sender, Stopped, maybe_billed, plan_key
from pixelmill.engine.plan import StepPlan, images_per_call
from pixelmill.engine.polling import PollClock
from pixelmill.engine.retry import RetryState, next_delay
from pixelmill.engine.stats import RunStats
from pixelmill.errors import (
    FatalError,
    ProviderError,
    RateLimited,
    Refused,
    ResultLost,
    TransientError,
    UnknownOutcome,
)
from pixelmill.models.cost import expected_cost
from pixelmill.providers.base import ImageRequest, JobHandle, JobProvider, JobStatus
from pixelmill.writing.journal import add_unanswered

# Seconds before an intent's recorded send time from which a lost submit is looked for: the provider's clock and
# ours may disagree by this much.
CLOCK_SLACK = 60.0
MAX_POLL_PAUSE = 30.0  # the longest a 429 on a poll holds that job's polling back


class JobBook(CallBook, Protocol):
    """Where a job's call is journaled: a `CallBook` that also keeps the job's handle (engine/intents.py)."""

    def live(self) -> dict[str, Any] | None: ...

    def submitted(self, handle: JobHandle, reserved: float, submits: int) -> None: ...

    def ended(self) -> None: ...

    def failed_job(self, error: str) -> None: ...

    def lost_submits(self) -> list[dict[str, Any]]: ...

    def looked_for(self, entry: dict[str, Any]) -> None: ...

    def recovered(self, handle: JobHandle, entry: dict[str, Any], submits: int) -> None: ...

    @property
    def state(self) -> Any: ...


class Earlier:
    """The reservation of a job an earlier run submitted: counted in the spend already (from the journal), so
    settling it replaces that amount by the bill (the budget and this run's spend move by the difference)."""

    __slots__ = ("_budget", "_reserved", "_settled", "_stats")

    def __init__(self, budget: Budget, stats: RunStats, reserved: float) -> None:
        self._budget = budget
        self._stats = stats
        self._reserved = reserved
        self._settled = False

    @property
    def reserved(self) -> float:
        return self._reserved

    def settle(self, actual: float, *, billed: bool = False) -> None:
        if self._settled:
            raise RuntimeError("this job's reservation is already settled")
        self._settled = True
        self._budget.spent += actual - self._reserved
        self._stats.spent -= self._reserved  # the caller adds the bill: this run's spend moves by the difference


class JobStillRunning(Stopped):
    """A job still running at its call's deadline: it stays journaled (the row pending) and a re-run collects it."""


class JobSender:
    """Sends the calls of job providers for every row of a run (see the module docstring)."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.admission = sender.admission
        self.policy = sender.policy
        self.clock = PollClock()  # when to poll each model's jobs, learned as they end (engine/polling.py)
        self.stats = sender.stats
        self.stopping = sender.stopping

    @asynccontextmanager
    async def send(self, target: StepPlan, request: ImageRequest, params: dict[str, Any],
                   book: JobBook) -> AsyncIterator[Answer | Failure]:
        provider = target.provider
        assert isinstance(provider, JobProvider)
        images = images_per_call(params)
        expected = expected_cost(target.spec, params, images, len(request.prompt), len(request.images))
        bound = expected.high if expected else 0.0
        key = (target.spec.name, plan_key(params))
        retry = RetryState.start()
        lost = book.lost_submits()
        retry.billed = len(lost)  # submits of this call a killed run left unanswered: each may have been billed
        job = book.live()
        submits = int(job.get("submits", 1)) if job is not None else len(lost)
        if job is None and lost and not lost[-1].get("looked"):
            job = await self._find(provider, target, request, book, lost[-1], submits)
        if job is None and retry.billed > self.policy.max_billed_retries:
            error = UnknownOutcome(f"{retry.billed} submit(s) of this job were sent and their answer lost (the run "
                                   "was stopped at once): the job may have been paid and cannot be found; "
                                   "--retry-failed submits it again (and may pay again)")
            yield Failure(error, 0)
            return
        while True:
            if job is not None:  # submitted earlier (an earlier run, or found by listing): collect it
                earlier = JobHandle.from_json(job)
                async with self.admission.slot():
                    outcome = await self._follow(target, earlier, Earlier(self.admission.budget, self.stats,
                                                                         float(job.get("reserved", 0.0))),
                                                 book, submits, retry)
                    if outcome is not None:
                        yield outcome
                        return
                job = None
                continue
            if self.stopping.is_set():
                raise Stopped()
            async with self.admission.ticket(images=images, reserve=bound, key=key) as ticket:
                if self.stopping.is_set():  # stopped while waiting for a slot or the pace: submit nothing more
                    raise Stopped()
                submits += 1
                handle, delay, failure = await self._submit(target, request, ticket, book, retry, submits)
                if handle is not None:
                    outcome = await self._follow(target, handle, ticket, book, submits, retry)
                    if outcome is not None:
                        yield outcome
                        return
                    continue  # the job failed on the provider's side and the policy sends it again
                if failure is not None:
                    watch = self.sender.watch
                    if watch is not None and watch.gave_up(target, failure):
                        raise Stopped()  # the run stops for this very reason: the row stays pending
                    yield Failure(failure, submits)
                    return
                assert delay is not None
                self.stats.retries += 1
                await self.sender._pause(delay)  # the slot is held through the pause, as for any call

    # ------------------------------------------------------------ submit
    async def _submit(self, target: StepPlan, request: ImageRequest, ticket: Held, book: JobBook,
                      retry: RetryState, submits: int) -> tuple[JobHandle | None, float | None, ProviderError | None]:
        """Submit once (the call's submit number `submits`): (handle journaled, None, None), or (None, delay
        before another submit, None), or (None, None, the error given up on)."""
        provider = target.provider
        assert isinstance(provider, JobProvider)
        book.sent(ticket.reserved)
        self.stats.requests += 1
        self.stats.in_flight += 1
        sent, sent_wall = time.monotonic(), time.time()
        try:
            handle = await provider.submit(request, target.spec)
        except ProviderError as exc:
            self.sender._observe(target, exc, submits, provider)  # a wrong base URL stops the run (systematic.py)
            if maybe_billed(exc):  # sent, answer lost: the job may exist; look for it before charging it
                found = await self._recover(provider, target, request, sent_wall)
                if found is not None:
                    book.submitted(found, ticket.reserved, submits)
                    self.stats.jobs_recovered += 1
                    self._started()
                    return found, None, None
                self._charge(ticket, unanswered=True)
                book.unanswered(ticket.reserved)
            else:
                ticket.settle(0.0)  # an error answer: no job, nothing billed
                book.answered()
            delay = self.sender._verdict(self.admission.limiter, retry, exc, sent)
            return None, delay, exc if delay is None else None
        except asyncio.CancelledError:  # sent and abandoned: its intent stays, a re-run looks for the job
            self._charge(ticket, unanswered=True)
            raise
        finally:
            self.stats.in_flight -= 1
        self.admission.limiter.on_answer(None, sent)  # an answer: the pace may probe up (engine/ratefinder.py)
        self.sender._observe(target, None, submits, provider)
        book.submitted(handle, ticket.reserved, submits)
        self._started()
        return handle, None, None

    def _started(self) -> None:
        self.stats.jobs_submitted += 1

    async def _recover(self, provider: JobProvider, target: StepPlan, request: ImageRequest,
                       since: float) -> JobHandle | None:
        try:
            return await provider.recover(request, target.spec, since - CLOCK_SLACK)
        except ProviderError:
            return None  # the list cannot be read now: the submit stays an unknown outcome

    async def _find(self, provider: JobProvider, target: StepPlan, request: ImageRequest, book: JobBook,
                    entry: dict[str, Any], submits: int) -> dict[str, Any] | None:
        """Look for the job of a submit a killed run left unanswered; adopt it when found."""
        if self.stopping.is_set():
            return None
        handle = await self._recover(provider, target, request, float(entry.get("sent", 0.0)))
        if handle is None:
            book.looked_for(entry)
            return None
        book.recovered(handle, entry, submits)
        self.stats.jobs_recovered += 1
        return book.live()

    # ------------------------------------------------------------ poll and collect
    async def _follow(self, target: StepPlan, handle: JobHandle, held: Held, book: JobBook, submits: int,
                      retry: RetryState) -> Answer | Failure | None:
        """Poll the job to its end: an Answer (the caller stores it), a Failure, or None when the job failed on
        the provider's side and the policy submits it again. Raises `JobStillRunning` at the deadline and lets
        a cancellation through: the job then stays journaled for a re-run."""
        self.stats.jobs_live += 1
        try:
            status = await self._poll(target, handle)
        except (asyncio.CancelledError, JobStillRunning):
            self._charge(held, unanswered=False)  # still live: its reservation stays spent (the journal has it)
            raise
        finally:
            self.stats.jobs_live -= 1
        if status.state == "done":
            assert status.result is not None
            book.ended()
            if status.result.images:
                return Answer(status.result, submits, held)
            held.settle(0.0)
            return Failure(Refused(f"the job {handle.id} ended without an image", reason="no_image"), submits)
        error = status.error or TransientError(f"the job {handle.id} failed without a reason")
        if isinstance(error, FatalError):  # the job may still run: it stays journaled for a re-run or a cancel
            self._charge(held, unanswered=False)
            return Failure(error, submits)
        book.ended()
        if isinstance(error, ResultLost):
            self._charge(held, unanswered=True)
            add_unanswered(book.state.info, 1, held.reserved)
            return Failure(result_lost(handle, error), submits)
        held.settle(0.0)  # failed on the provider's side (or refused): not billed
        delay = next_delay(self.policy, retry, error, self.sender.rng)
        if delay is not None and self.stopping.is_set():
            raise Stopped()  # would be submitted again, but the run is stopping: the row stays pending
        if delay is None:
            return Failure(error, submits)
        book.failed_job(f"job {handle.id}: {error}")
        self.stats.jobs_resubmitted += 1
        self.stats.retries += 1
        await self.sender._pause(delay)
        return None

    async def _poll(self, target: StepPlan, handle: JobHandle) -> JobStatus:
        """Poll until the job is no longer pending, at the times the run's `PollClock` gives (engine/polling.py:
        learned from the model's jobs that ended). Polls that fail are polled again (they are free); the call's
        deadline bounds the wait."""
        provider = target.provider
        assert isinstance(provider, JobProvider)
        started = time.monotonic()
        model = target.spec.name
        # Seconds since the submit, by the handle's wall clock (a job of an earlier run: polled at once).
        elapsed = max(0.0, time.time() - handle.submitted) if handle.submitted else None
        delays = self.clock.delays(model, provider.poll_delay, elapsed=elapsed)
        polls = 0
        pause = 0.0
        pending_at: float | None = None  # seconds after the submit of the latest poll that found it pending
        while True:
            if time.monotonic() - started > self.policy.deadline:  # polls failing or pending alike: bounded
                self.stats.jobs_waiting += 1
                raise JobStillRunning(f"job {handle.id} still running after {self.policy.deadline:.0f} s")
            await asyncio.sleep(max(pause, next(delays)))
            polls += 1
            pause = 0.0
            self.stats.polls += 1
            asked = time.monotonic()
            try:
                status = await provider.poll(handle, target.spec)
            except RateLimited as exc:
                pause = min(MAX_POLL_PAUSE, max(exc.retry_after or 0.0, provider.poll_delay(polls)))
                continue
            except TransientError:
                continue
            except ProviderError as exc:  # auth, quota, a rejection of the poll itself: the job's outcome
                return JobStatus("failed", error=exc)
            since_submit = None if elapsed is None else elapsed + asked - started
            if status.state != "pending":
                if status.state == "done" and pending_at is not None and since_submit is not None:
                    self.clock.learn(model, pending_at, since_submit)
                return status
            pending_at = since_submit

    def _charge(self, held: Held, *, unanswered: bool) -> None:
        """Settle `held` at its reservation: the job may have been billed (and is still live, or lost)."""
        held.settle(held.reserved)
        self.stats.spent += held.reserved
        if unanswered:
            self.stats.unanswered += 1
            self.stats.unanswered_cost += held.reserved


def result_lost(handle: JobHandle, error: ProviderError) -> ResultLost:
    """The row's error for a job paid and its result gone."""
    return ResultLost(f"the job {handle.id} was paid and its result lost ({error}); run again with --retry-failed "
                      "to submit it again (it is paid again)", http_status=error.http_status,
                      request_id=error.request_id or handle.id, code=error.code)
