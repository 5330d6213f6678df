"""The one exception tree of pixelmill.

```
PixelmillError
├── ConfigError            before anything is sent: bad flag, bad pipeline file, impossible parameters (exit 2)
├── InputError             one row: missing prompt, unreadable image, hostile field (row recorded as failed)
└── ProviderError          what a provider call can end in
    ├── RateLimited        429: retried after `retry_after`, bounded by the row's deadline
    ├── TransientError     5xx, timeouts, resets, truncated or malformed bodies: retried with backoff
    ├── Refused            safety / moderation / no image: recorded, not retried
    ├── Rejected           400-class: the request itself is wrong for this row: recorded, not retried
    └── FatalError         abort the run at once: no more paid calls (exit 3)
        ├── AuthError          401/403: the key is missing, wrong or lacks access
        ├── QuotaExhausted     the account is out of credit or quota
        └── ModelUnavailable   the model does not exist (or no longer exists) for this key
```

Every message says what to do next. Messages never contain API keys: providers build them from response
bodies and the request's public parts only, and `redact` is applied once more at the journal boundary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar


class PixelmillError(Exception):
    """Base of every error pixelmill raises on purpose."""

    kind: ClassVar[str] = "error"


class ConfigError(PixelmillError):
    """The configuration cannot work; raised before any request is sent."""

    kind = "config"


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


class Refused(ProviderError):
    kind = "refused"

    def __init__(self, message: str, *, reason: str | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.reason = reason


class Rejected(ProviderError):
    kind = "rejected"


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
