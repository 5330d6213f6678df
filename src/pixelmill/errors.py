"""The one exception tree of pixelmill.

```
PixelmillError
├── ConfigError            before anything is sent: bad flag, bad pipeline file, impossible parameters (exit 2)
│   ├── MissingField       a field the configuration names is in none of the source's first rows (preflight)
│   ├── UnknownAlias       a pipeline step names a model alias that is not defined (a typo of one that is)
│   └── MissingDependency  an optional package the run needs is not installed (says the pip command)
├── InputError             one row: missing prompt, unreadable image, hostile field (row recorded as failed)
└── ProviderError          what a provider call can end in
    ├── RateLimited        429: retried after `retry_after`, bounded by the row's deadline
    ├── TransientError     5xx, timeouts, resets, truncated or malformed bodies: retried with backoff
    │   ├── UnknownOutcome     sent, then no answer (timeout, reset, closed): may have been billed
    │   └── Unreachable        the connection could not be opened (refused, DNS, TLS, connect timeout)
    ├── Refused            safety / moderation / no image: recorded, not retried
    ├── Rejected           400-class: the request itself is wrong for this row: recorded, not retried
    ├── ResultLost         a remote job was paid and its result is gone (expired, or the provider forgot the
    │                      job): recorded, not retried (--retry-failed pays again)
    └── FatalError         abort the run at once: no more paid calls (exit 3)
        ├── AuthError          401/403: the key is missing, wrong or lacks access
        ├── QuotaExhausted     the account is out of credit or quota
        └── ModelUnavailable   the model does not exist (or no longer exists) for this key
BudgetReached              --max-cost would be passed: the run stops (exit 3)
SystematicFailure          the first calls of a step all failed the same way, for a reason not the rows'
                           (engine/systematic.py): the run stops (exit 3); rows not done stay pending
DiskFull                   an image or the journal cannot be written (no space, quota, read-only, I/O error):
                           the run stops sending (exit 3); rows not done stay pending
InternalError              an unexpected exception while handling one row (a bug, an odd value): that row fails
PublishError               `pixelmill push`: the Hub refused the upload or could not be reached (exit 3)
```

Every message says what to do next. Messages never contain API keys: providers build them from response
bodies and the request's public parts only, redact everything a server said before keeping it (`redact_clip`
redacts before it cuts, so that no tail of a key survives the cut; `redact_json` walks answer metadata), and
`redact` is applied once more at the journal boundary.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from typing import Any, ClassVar


class PixelmillError(Exception):
    """Base of every error pixelmill raises on purpose."""

    kind: ClassVar[str] = "error"


class ConfigError(PixelmillError):
    """The configuration cannot work; raised before any request is sent."""

    kind = "config"


class MissingField(ConfigError):
    """A field the configuration names (prompt field, template field, image or mask field, id field) is in none
    of the first rows of the source, nor written by an earlier step: a typo or the wrong file, which would fail
    every row one by one. `present` lists the fields the rows have; `suggestion` the closest of them."""

    def __init__(self, message: str, *, field: str, present: tuple[str, ...] = (),
                 suggestion: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.present = present
        self.suggestion = suggestion


class UnknownAlias(ConfigError):
    """A pipeline step's `model` is neither a model alias of the file nor a known model, and is close to an alias
    that is defined (`fats` for `fast`)."""

    def __init__(self, message: str, *, alias: str, defined: tuple[str, ...]) -> None:
        super().__init__(message)
        self.alias = alias
        self.defined = defined


class MissingDependency(ConfigError):
    """An optional package the run needs (an output or source format, local models) is not installed. Raised
    before anything is sent: the message says what needs it and the pip command that installs it."""

    def __init__(self, needed_by: str, packages: tuple[str, ...], install: str) -> None:
        names = " and ".join(packages)
        super().__init__(f"{needed_by} needs the {names} package{'s' if len(packages) > 1 else ''}, which "
                         f"{'are' if len(packages) > 1 else 'is'} not installed: pip install '{install}'")
        self.needed_by = needed_by
        self.packages = packages
        self.install = install


class InputError(PixelmillError):
    """One row cannot be turned into a request. The row is recorded as failed; the run goes on."""

    kind = "input"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ProviderError(PixelmillError):
    """A provider call failed. `http_status` and `request_id` are kept for the row's record."""

    kind = "provider"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        request_id: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.request_id = request_id
        self.code = code


@dataclass(frozen=True, slots=True)
class RateLimits:
    """What a provider's answer said about its rate limits (OpenAI's `x-ratelimit-*` headers): limits per
    minute, what remains of them, and seconds until they reset. Any field may be missing. Carried by answers
    (`ImageResult.rate_limits`) and by 429s (`RateLimited.limits`); the engine's limiter learns from them."""

    requests_limit: float | None = None
    requests_remaining: float | None = None
    requests_reset: float | None = None
    images_limit: float | None = None
    images_remaining: float | None = None
    images_reset: float | None = None
    tokens_limit: float | None = None
    tokens_remaining: float | None = None
    tokens_reset: float | None = None


class RateLimited(ProviderError):
    """A 429. `retry_after` is the provider's hint as given (seconds; it may be absent, zero or absurd: the
    retry policy bounds it); `limits` what its headers said."""

    kind = "rate_limited"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, limits: RateLimits | None = None,
                 **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after
        self.limits = limits


class TransientError(ProviderError):
    """Worth another try. `maybe_billed` marks answers that arrived (truncated, malformed): the call may
    have been paid for, so the retry policy allows fewer of those."""

    kind = "transient"
    retryable = True

    def __init__(self, message: str, *, maybe_billed: bool = False, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.maybe_billed = maybe_billed


class UnknownOutcome(TransientError):
    """The request was sent and its answer never came (a timeout while waiting, a reset, the server closing the
    connection): the provider may have done the work and billed it. Always `maybe_billed`: retried at most
    `--max-billed-retries` times and charged against the budget at the call's reservation. A connection that
    could not be opened is a plain `TransientError` (nothing was sent, nothing billed)."""

    kind = "unknown_outcome"

    def __init__(self, message: str, **kw: object) -> None:
        kw.pop("maybe_billed", None)
        super().__init__(message, maybe_billed=True, **kw)


class Unreachable(TransientError):
    """The connection could not be opened: refused, the host name not found, the TLS handshake failed, or no
    connection within the connect timeout. Nothing was sent (not billed). Retried like any transient error; the
    engine also watches for it at the start of a step (engine/systematic.py): a wrong `--base-url` fails every
    call this way. `reason` says which, in a few words ("connection refused"); the kind stays `transient`."""

    def __init__(self, message: str, *, reason: str, **kw: object) -> None:
        kw.pop("maybe_billed", None)
        super().__init__(message, maybe_billed=False, **kw)
        self.reason = reason


class Refused(ProviderError):
    kind = "refused"

    def __init__(self, message: str, *, reason: str | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.reason = reason


class Rejected(ProviderError):
    """A 400-class answer: the request is wrong. `param` is the request parameter the provider named, when it
    named one (OpenAI's `error.param`): a rejection that names the prompt or an input image is about the row."""

    kind = "rejected"

    def __init__(self, message: str, *, param: str | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.param = param


class ResultLost(ProviderError):
    """A remote job (submit-and-poll providers) that was submitted, and so paid, whose result can no longer be
    fetched: it expired before it was collected, or the provider no longer knows the job. Never retried by the
    engine: a new job is paid again, which only `--retry-failed` may decide."""

    kind = "result_lost"


class FatalError(ProviderError):
    """The run cannot go on: every further request would fail the same way (and some may be paid)."""

    kind = "fatal"


class AuthError(FatalError):
    kind = "auth"


class QuotaExhausted(FatalError):
    kind = "quota"


class ModelUnavailable(FatalError):
    kind = "model_unavailable"


class BudgetReached(PixelmillError):
    """`--max-cost` would be passed by the next request. Stops the run (exit 3); raise the budget to resume."""

    kind = "budget"


class SystematicFailure(PixelmillError):
    """The first calls of a step all failed the same way for a reason that is not the rows' (cannot connect,
    the same 404 or 400 from a gateway, the same server error): every further call would too. The run stops
    (exit 3) with the reason and the fix (engine/systematic.py); rows not done stay pending."""

    kind = "systematic"


class DiskFull(PixelmillError):
    """Writing to the run directory failed for want of space or of a writable disk (ENOSPC, EDQUOT, EROFS, EIO):
    every further answer would be paid and lost, so the run stops sending. The message says what to do."""

    kind = "disk_full"


# What makes a write fail for the disk's sake, not the row's: a full disk, a quota, a read-only or failing device.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def disk_full(exc: OSError, what: str) -> DiskFull:
    """The `DiskFull` for an `OSError` of `DISK_ERRNOS` raised while writing `what` (a path or a name)."""
    if exc.errno in (errno.EROFS, errno.EIO):
        return DiskFull(f"cannot write {what} ({exc.strerror}): make the disk writable and run the same command "
                        "again")
    return DiskFull(f"disk full ({exc.strerror}) writing {what}: free space and run the same command again")


class PublishError(PixelmillError):
    """`pixelmill push` could not publish: the Hub refused (no or wrong token, no right on the namespace) or could
    not be reached. Nothing of the run changes; the message says what the Hub said and what to do."""

    kind = "publish"


class InternalError(PixelmillError):
    """An exception pixelmill did not expect while handling one row (a bug, or a value of an odd type): the row
    fails with the exception named, and the run goes on."""

    kind = "internal"

    @classmethod
    def of(cls, exc: BaseException) -> InternalError:
        text = str(exc)
        return cls(f"internal error: {type(exc).__name__}{': ' + text if text else ''} (please report it; "
                   "--retry-failed sends the row again)")


_SECRET_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"AIza[0-9A-Za-z_\-]{20,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}"),
    re.compile(r"(?i)((?:api[-_]?key|x-goog-api-key|key)[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9._\-]{8,}"),
]


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove API keys from text that is about to be written or shown: the known secrets verbatim, and
    anything shaped like a key."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.lastindex else "") + "***", text)
    return text


# Room beyond a cut for the key that straddles it: longer than any key.
_CLIP_SLACK = 1024


def redact_clip(text: str, limit: int, secrets: tuple[str, ...] = (), *, ellipsis: str = "...") -> str:
    """`text` redacted, its whitespace collapsed, and cut to `limit` characters. Redaction comes first: a key
    cut in two no longer matches, and its first part would be kept. A long text is redacted on a prefix only;
    the prefix's last `_CLIP_SLACK` characters, where a key cut by it would lie unrecognised, are dropped
    (collapsing a run of spaces could otherwise bring them within the limit)."""
    cut = len(text) > limit + 2 * _CLIP_SLACK
    head = redact(text[: limit + 2 * _CLIP_SLACK] if cut else text, secrets)
    if cut:
        head = head[:-_CLIP_SLACK]
    head = " ".join(head.split())
    return head if len(head) <= limit and not cut else head[: limit - len(ellipsis)] + ellipsis


def redact_json(value: Any, secrets: tuple[str, ...] = (), *, keep: frozenset[str] = frozenset()) -> Any:
    """A copy of a JSON-like value with every string redacted (keys included). Values under the names in
    `keep` are left as they are: image data and signatures, which must go back byte for byte and are far too
    large to scan."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {redact(str(k), secrets): (v if k in keep else redact_json(v, secrets, keep=keep))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(v, secrets, keep=keep) for v in value]
    return value
