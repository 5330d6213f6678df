"""One call with its retries: admission (budget reservation + concurrency slot), the provider call, the retry
policy's verdict on each failure, and the attempt count.

```python
async with sender.send(target, request, params, book) as outcome:   # book: engine/intents.py
    if isinstance(outcome, Failure):      # given up: outcome.error, outcome.attempts; the slot is already free
        ...
    else:                                 # an answer with images: the slot is held until the block ends
        outcome.settle(cost)              # settle the reservation with what the call cost
        ...store the images, journal them...
```

The slot is held until the caller has stored and journaled the images, so a kill loses at most --concurrency
paid calls. Every attempt is journaled before it is sent (`CallBook.sent`: an intent, charged at its
reservation by a later run if this one dies before the outcome is recorded) and resolved by its outcome: an
answer or a failure is recorded by the caller's save (which deletes the intent in the same transaction), an
error answer drops it (not billed), and a call whose outcome is unknown (sent, answer lost or broken:
`maybe_billed`) is charged at its reservation and recorded on the row (`CallBook.unanswered`).
Each attempt takes a new ticket (engine/admission.py): a failed attempt settles its reservation at once (at 0,
or at the reservation when it may have been billed) and keeps its slot through the backoff pause, as the
limiter always had it. When to retry and how long to wait is engine/retry.py's alone; what is let in,
engine/admission.py's. Stopping, the budget running out and cancellation are exceptions (`Stopped`,
`BudgetReached`, `CancelledError`); a provider's error that is not retried is an outcome (`Failure`), carrying
the attempts made like an answer does.

A step spread over several deployments (engine/deployments.py): the ticket also picks the deployment, whose
provider sends the call and whose limiter learns from its answers and 429s; a 429 there sends the next attempt
at once to another deployment that is ready, and a `FatalError` (key, quota, model) takes the deployment out
with one notice and sends the call again elsewhere, until none is left (then the row stops the run as before).

Every attempt's outcome is also told to the run's counters and to `FailureWatch` (engine/systematic.py, `_observe`):
when a step's first calls all fail the same way for a reason that is not the rows', the watch stops the run, and
a call given up on for that reason leaves its row pending (`Stopped`) instead of failing it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from pixelmill.engine.admission import Admission, Ticket
from pixelmill.engine.deployments import Deployment
from pixelmill.engine.limiter import Limiter
from pixelmill.engine.plan import StepPlan, images_per_call
from pixelmill.engine.retry import RetryPolicy, RetryState, next_delay
from pixelmill.engine.stats import RunStats
from pixelmill.engine.systematic import FailureWatch
from pixelmill.errors import (
    FatalError,
    PixelmillError,
    ProviderError,
    RateLimited,
    Refused,
    SystematicFailure,
    TransientError,
    redact,
)
from pixelmill.models.cost import expected_cost
from pixelmill.providers.base import ImageRequest, ImageResult, Provider


class Stopped(PixelmillError):
    """Raised inside a row when the run is stopping: the row stays pending."""

    kind = "interrupted"


class Held(Protocol):
    """What holds a call's reservation: its `Ticket`, or a remote job an earlier run submitted (engine/jobs.py)."""

    @property
    def reserved(self) -> float: ...

    def settle(self, actual: float, *, billed: bool = False) -> None: ...


@dataclass(slots=True)
class Answer:
    """A call's answer, with images; its ticket (slot and reservation) is held until the `async with` ends."""

    result: ImageResult
    attempts: int
    ticket: Held

    def settle(self, cost: float) -> None:
        """Settle the call's budget reservation with what it cost (its bill: the budget learns from it)."""
        self.ticket.settle(cost, billed=True)


@dataclass(slots=True)
class Failure:
    """A call given up on: the provider's last error and the attempts made (each one a request sent)."""

    error: ProviderError
    attempts: int


class CallBook(Protocol):
    """Where a row's calls are journaled (engine/intents.py): each attempt before it is sent, and its outcome."""

    def sent(self, reserved: float) -> None:
        """The call is about to be sent, holding `reserved` of the budget."""

    def answered(self) -> None:
        """The call was answered with an error: not billed; its intent goes."""

    def unanswered(self, charged: float) -> None:
        """The call may have been billed without a usable answer: charged at `charged`, recorded on the row."""


def maybe_billed(error: ProviderError) -> bool:
    """Whether a failed call may have been billed: sent and its answer lost, or arrived broken."""
    return isinstance(error, TransientError) and error.maybe_billed


def plan_key(params: dict[str, Any]) -> str:
    """A call's plan as a stable string: bills are learned per model and plan (engine/budget.py)."""
    return orjson.dumps(params, option=orjson.OPT_SORT_KEYS, default=str).decode()


class Sender:
    """Sends calls for every row of a run: through admission, to the provider, retried by the policy."""

    def __init__(self, admission: Admission, policy: RetryPolicy, stats: RunStats,
                 rng: random.Random | None = None, watch: FailureWatch | None = None,
                 notice: Callable[[str], None] = lambda _: None, secrets: tuple[str, ...] = ()) -> None:
        self.admission = admission
        self.notice = notice  # one line when a deployment is taken out
        self.secrets = secrets
        self.policy = policy
        self.stats = stats
        self.rng = rng or random.Random()
        self.stopping = admission.stopping
        self.watch = watch  # stops the run when a step's first calls all fail the same way (engine/systematic.py)

    @asynccontextmanager
    async def send(self, target: StepPlan, request: ImageRequest, params: dict[str, Any],
                   book: CallBook | None = None) -> AsyncIterator[Answer | Failure]:
        """Send `request` until it is answered with images or the policy gives up (see the module docstring)."""
        images = images_per_call(params)
        expected = expected_cost(target.spec, params, images, len(request.prompt), len(request.images))
        reserve = expected.high if expected else 0.0
        key = (target.spec.name, plan_key(params))
        retry = RetryState.start()
        attempts = 0
        provider = target.provider  # the last attempt's (a deployment's, when the step has several)
        while True:
            if self.stopping.is_set() and attempts:
                raise Stopped()
            error: ProviderError | None = None
            async with self.admission.ticket(images=images, reserve=reserve, key=key, pool=target.pool) as ticket:
                if self.stopping.is_set():  # stopped while waiting for a slot or a pause: send nothing more
                    raise Stopped()
                deployment = ticket.deployment
                limiter = deployment.limiter if deployment is not None else self.admission.limiter
                provider = deployment.provider if deployment is not None else target.provider
                sending = request
                if deployment is not None and deployment.wire_model != request.model:  # an Azure deployment's name
                    sending = dataclasses.replace(request, model=deployment.wire_model)
                if book is not None:
                    book.sent(ticket.reserved)
                attempts += 1
                self.stats.requests += 1
                self.stats.in_flight += 1
                result: ImageResult | None = None
                sent = time.monotonic()
                try:
                    result = await provider.call(sending, target.spec)
                    self._learn(limiter, result, sent)
                    self._observe(target, None, attempts, provider)
                    if deployment is not None:  # which key or endpoint served the row: a name, never the key
                        result.extra.setdefault("deployment", deployment.name)
                except ProviderError as exc:
                    error = exc
                    self._observe(target, exc, attempts, provider)
                    if maybe_billed(exc):  # no usable answer, and perhaps billed: charged at its reservation
                        self._charge_unanswered(ticket)
                        if book is not None:
                            book.unanswered(ticket.reserved)
                    else:
                        ticket.settle(0.0)  # an error answer is charged nothing
                        if book is not None:
                            book.answered()
                    if deployment is not None and isinstance(exc, FatalError) and self._take_out(target, deployment,
                                                                                                   exc):
                        continue  # sent again at once, to a deployment still in
                    delay = self._verdict(limiter, retry, exc, sent)
                    if delay is not None and deployment is not None and isinstance(exc, RateLimited) \
                            and target.pool is not None and target.pool.ready_elsewhere(deployment):
                        delay = 0.0  # this deployment is paused; another one can take the call now
                    if delay is not None:
                        self.stats.retries += 1
                        await self._pause(delay)  # the slot is held through the pause
                        continue
                except asyncio.CancelledError:  # sent and abandoned (stopped at once): its intent stays journaled
                    self._charge_unanswered(ticket)
                    raise
                finally:
                    self.stats.in_flight -= 1  # an answer counts no more: it is being stored
                if result is not None:
                    if result.images:
                        yield Answer(result, attempts, ticket)
                        return
                    error = Refused(f"the provider answered without an image (finish reason {result.finish_reason})",
                                    reason=result.finish_reason or "no_image")
            # Given up: the slot and reservation are back before the row records the failure.
            assert error is not None
            if self.watch is not None and self.watch.gave_up(target, error, provider):
                raise Stopped()  # the run stops for this very reason: the row stays pending
            yield Failure(error, attempts)
            return

    def _observe(self, target: StepPlan, error: ProviderError | None, attempts: int, provider: Provider) -> None:
        """Every attempt's outcome, for the live counters and the watch on systematic failure (which judges
        each deployment of a step by its own provider)."""
        if error is None:
            self.stats.attempt_answered()
            if self.watch is not None:
                self.watch.answered(target, provider)
            return
        self.stats.attempt_failed(error.kind, str(error))
        if self.watch is not None:
            self.watch.failed(target, error, retry=attempts > 1, provider=provider)

    def _charge_unanswered(self, ticket: Ticket) -> None:
        ticket.settle(ticket.reserved)
        self.stats.spent += ticket.reserved
        self.stats.unanswered += 1
        self.stats.unanswered_cost += ticket.reserved

    def _take_out(self, target: StepPlan, deployment: Deployment, error: FatalError) -> bool:
        """A deployment failed for a reason that is not the row's (key, quota, model): out for the rest of the
        run, said once. True when other deployments carry on (the call goes to one of them)."""
        pool = target.pool
        assert pool is not None
        if pool.take_out(deployment, error):
            self._tell_out(target, deployment, f"{error.kind}: {error}")
        return bool(pool.live())

    def divert(self, target: StepPlan, url: str, reason: str) -> bool:
        """`FailureWatch`'s verdict on a deployment (its first calls all fail the same way): take the step's
        deployments at `url` out, unless none would be left (then the watch stops the run)."""
        pool = target.pool
        if pool is None:
            return False
        at_url = [d for d in pool.live() if getattr(d.provider, "base_url", None) == url]
        if not at_url or len(at_url) == len(pool.live()):
            return False
        for deployment in at_url:
            pool.take_out(deployment, SystematicFailure(reason))
            self._tell_out(target, deployment, reason)
        return True

    def _tell_out(self, target: StepPlan, deployment: Deployment, why: str) -> None:
        left = len(target.pool.live()) if target.pool else 0
        carry = f"{left} other{'s' if left != 1 else ''} carry on" if left else "none is left: the run stops"
        self.notice(redact(f"step {target.config.name!r}: deployment {deployment.name!r} taken out ({why}); "
                           f"{carry}", self.secrets))

    def _verdict(self, limiter: Limiter, retry: RetryState, error: ProviderError, sent: float) -> float | None:
        """The policy's delay before another attempt, or None to give up; a 429 pauses every sender of the
        limiter (the run's, or the deployment's that answered it)."""
        if isinstance(error, RateLimited):
            limiter.on_rate_limited(error.retry_after, sent_at=sent, limits=error.limits)
            self.stats.rate_limited += 1
            self.stats.rate_found = limiter.found()
        return next_delay(self.policy, retry, error, self.rng)

    def _learn(self, limiter: Limiter, result: ImageResult, sent: float) -> None:
        """An answer: the limiter (the run's, or the deployment's) learns the provider's pace from it
        (engine/ratefinder.py)."""
        limiter.on_answer(result.rate_limits, sent)
        self.stats.rate_found = limiter.found()

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless the run is stopping: then the row stops where it is (pending)."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            return
        raise Stopped()
