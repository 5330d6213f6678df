"""Stop on systematic failure: when the first calls of a step all fail the same way, for a reason that is not the
rows', every further call would too. The run stops within seconds (exit 3, like a budget or auth stop: calls in
flight drain, rows not done stay pending, the output is written) with the reason and the fix in one line, instead
of failing every row one by one after its retries (a wrong `--base-url` made 576 connection attempts over 74 s for
96 rows, about two hours for 10,000).

`FailureWatch` sees the outcome of every attempt of every call (engine/call.py), per target (a step's model at its
base URL: a fallback model is watched on its own, and so is each deployment of a step spread over several). It
judges a target only until its first answer: an image, a refusal, any answer from the model. After that the URL,
the key and the model are known to work, and a later outage is the provider's: retries ride out short ones, and
rows that run out of retries fail with the reason (`--retry-failed` sends them again). A sustained outage after
success is therefore not stopped: stopping would turn a provider's blip into a stopped run, and the live display
shows the latest reason and the counts per kind, so a user watching can stop it.

"The same way" is one signature: the error's class, HTTP status, code and message (providers build messages
from the answer, so a gateway's fixed answer gives one message, while errors about a row usually name it).
Any other failure between them starts the count again, so only consecutive identical failures count. What is
judged, and when the run stops:

- the connection could not be opened (`Unreachable`: refused, DNS, TLS, connect timeout): nothing reached a
  server, so nothing about the rows can be at fault. Counted in attempts, not rows: stop at
  `UNREACHABLE_ATTEMPTS` identical failures once one of them was a retry, i.e. the failure outlasted a backoff
  pause (a server restarting at the very moment the run starts is not a wrong URL). With 16 calls in flight the
  first round fails at once and the first retry, about a quarter of a second later, stops the run; with one call
  in flight, four attempts take about 2-3 s. Without the watch each row made 6 attempts over about 11 s.
- the same 4xx answer (`Rejected`, before any answer: a 404 for the route, a gateway's 400 for its key): stop at
  `REJECTED_CALLS` identical failures, each one a call of its own row (4xx are not retried). Five rows in a row
  failing identically with no success at all is a configuration, not five bad rows. Never a rejection that is
  about the row: one that names a row's parameter (the prompt, an input image, the mask: OpenAI's
  `error.param`), one whose message speaks of the prompt or an input image (providers without `param`), a 413
  (input images too large). Never a refusal (`Refused`: moderation is about the row's content; it counts as an
  answer), a 429 (rate limits say nothing about the configuration: `RunStats.rate_limited_share` is for them),
  nor an unknown outcome (sent, answer lost: perhaps a slow model; `--timeout` is the remedy, and the answer
  may have been billed).
- the same 5xx (`TransientError` with a status: a gateway with no route behind it, a service that is down):
  a 5xx is normally the server's passing trouble, so each row first runs through its retries; stop when
  `SERVER_ROWS` rows have given up on the identical error with no answer at all (about 11 s with the default
  backoff).

The call that trips the watch, and every call given up on afterwards for the same reason, leave their rows
pending (`gave_up` is True: engine/call.py raises `Stopped`); rows that failed before it keep their failure
(fewer than the threshold: `REJECTED_CALLS - 1` rows, or `SERVER_ROWS - 1`).
Only remote providers (those with a base URL) are judged: a local model's failures are its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pixelmill.engine.plan import StepPlan
from pixelmill.errors import (
    FatalError,
    ProviderError,
    RateLimited,
    Refused,
    Rejected,
    SystematicFailure,
    TransientError,
    UnknownOutcome,
    Unreachable,
)
from pixelmill.netpolicy import strip_userinfo
from pixelmill.providers.base import Provider

UNREACHABLE_ATTEMPTS = 4  # identical connection failures, one of them a retry
REJECTED_CALLS = 5  # identical 4xx answers, one row each
SERVER_ROWS = 3  # rows given up on the identical 5xx, each after its retries

# A rejection naming one of these parameters is about the row's own content (prefixes: `image[]`, `image[0]`).
ROW_PARAMS = ("prompt", "image", "mask", "input", "messages", "contents")
# ... and so is one whose message speaks of the prompt or an input image (providers that name no parameter).
_ROW_WORDS = re.compile(r"\b(prompt|input image|image file|invalid image|image data|mask)\b", re.IGNORECASE)

# What to check, per reason a connection could not be opened (errors.Unreachable.reason).
_CONNECT_FIX = {
    "host name not found": "check the host name in --base-url",
    "TLS handshake failed": "check --base-url (http or https?) and the server's certificate",
}

Signature = tuple[str, int | None, str | None, str]


@dataclass(slots=True)
class _Streak:
    """Consecutive identical failures of one target, before its first answer."""

    signature: Signature
    error: ProviderError
    attempts: int = 0
    retried: bool = False  # one of them was a retry: the failure outlasted a backoff pause
    rows: int = 0  # calls given up on (rows failed) this way


class FailureWatch:
    """Judges whether the first calls of each target fail systematically; calls `stop(reason, kind)` if so."""

    def __init__(self, stop: Callable[[str, str], None],
                 divert: Callable[[StepPlan, str, str], bool] | None = None) -> None:
        self._stop = stop
        # A step spread over several deployments: `divert(target, url, reason)` takes the deployments at `url`
        # out instead of stopping the run, and says whether others carry on (engine/deployments.py).
        self.divert = divert
        self._answered: set[tuple[str, str, str]] = set()
        self._streaks: dict[tuple[str, str, str], _Streak] = {}
        self._tripped: dict[tuple[str, str, str], Signature] = {}

    def answered(self, target: StepPlan, provider: Provider | None = None) -> None:
        """The target answered (an image, a refusal): it works; it is judged no more. `provider`: the deployment's
        that sent the call, when the step has several (each one is judged on its own)."""
        key = _key(target, provider)
        if key is not None:
            self._answered.add(key)
            self._streaks.pop(key, None)

    def failed(self, target: StepPlan, error: ProviderError, *, retry: bool, provider: Provider | None = None) -> None:
        """One attempt failed with `error`; `retry`: the attempt was a retry of the same call."""
        key = _key(target, provider)
        if key is None or key in self._answered or key in self._tripped:
            return
        if isinstance(error, Refused):  # the model answered: the route, the key and the model work
            self.answered(target, provider)
            return
        if isinstance(error, RateLimited):  # says nothing about the configuration either way
            return
        signature = _signature(error)
        streak = self._streaks.get(key)
        if signature is None:  # about the row, or not judged: the count starts again
            self._streaks.pop(key, None)
            return
        if streak is None or streak.signature != signature:
            streak = self._streaks[key] = _Streak(signature, error)
        streak.attempts += 1
        streak.retried = streak.retried or retry
        unreachable = isinstance(error, Unreachable) and streak.attempts >= UNREACHABLE_ATTEMPTS and streak.retried
        if unreachable or (isinstance(error, Rejected) and streak.attempts >= REJECTED_CALLS):
            self._trip(key, target, streak)

    def gave_up(self, target: StepPlan, error: ProviderError, provider: Provider | None = None) -> bool:
        """A call was given up on with `error`. True when the run is stopping for this very reason: the row then
        stays pending, like every row the stop leaves unsent."""
        key = _key(target, provider)
        signature = _signature(error)
        if key is None or signature is None:
            return False
        streak = self._streaks.get(key)
        if (key not in self._tripped and streak is not None and streak.signature == signature
                and isinstance(error, TransientError) and not isinstance(error, Unreachable)):
            streak.rows += 1
            if streak.rows >= SERVER_ROWS:
                self._trip(key, target, streak)
        return self._tripped.get(key) == signature

    def _trip(self, key: tuple[str, str, str], target: StepPlan, streak: _Streak) -> None:
        reason = _reason(target, streak, key[2])
        if self.divert is not None and self.divert(target, key[2], reason):
            self._answered.add(key)  # out of the run, judged no more; its rows go on elsewhere
            self._streaks.pop(key, None)
            return
        self._tripped[key] = streak.signature
        self._stop(str(SystematicFailure(reason)), SystematicFailure.kind)


def _key(target: StepPlan, provider: Provider | None = None) -> tuple[str, str, str] | None:
    url = getattr(provider or target.provider, "base_url", None)
    if not isinstance(url, str):
        return None  # a local model
    return target.config.name, target.wire_model, url


def _signature(error: ProviderError) -> Signature | None:
    """What makes two failures "the same way", or None for a failure that is not judged (see the docstring)."""
    if isinstance(error, Unreachable):
        return ("unreachable", None, None, error.reason)
    if isinstance(error, Rejected):
        if _about_the_row(error):
            return None
    elif isinstance(error, UnknownOutcome | FatalError) or not isinstance(error, TransientError):
        return None
    elif error.http_status is None or error.http_status < 500:
        return None  # a broken answer, a 408/409: not a route or a service that is missing
    return (type(error).__name__, error.http_status, error.code, str(error))


def _about_the_row(error: Rejected) -> bool:
    if error.http_status == 413:  # input images too large
        return True
    if error.http_status in (404, 405):  # the route is not there, whatever the row
        return False
    param = (error.param or "").lower()
    return param.startswith(ROW_PARAMS) or _ROW_WORDS.search(str(error)) is not None


def _reason(target: StepPlan, streak: _Streak, url: str) -> str:
    """The run's stop line: what failed, how many times, and what to check."""
    url = strip_userinfo(url)
    error = streak.error
    step = f"step {target.config.name!r}: " if target.config.name not in ("generate", "edit") else ""
    if isinstance(error, Unreachable):
        fix = _CONNECT_FIX.get(error.reason, "check --base-url (is the server running there, on that port?)")
        return f"{step}the first {streak.attempts} calls to {url} could not connect ({error.reason}); {fix}"
    if isinstance(error, Rejected):
        said = str(error)
        fix = "" if "--base-url" in said else "; check --base-url, the key and the model for this endpoint"
        return (f"{step}the first {streak.attempts} calls to {url} were all rejected the same way, with no answer "
                f"before them (the configuration, not the rows): {said}{fix}")
    return (f"{step}the first {streak.rows} rows sent to {url} each ran out of retries on the same server error, "
            f"with no answer before them: {error}; check --base-url, or run the same command again later")
