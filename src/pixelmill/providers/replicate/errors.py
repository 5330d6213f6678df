"""Replicate's HTTP error answers and failed predictions -> `pixelmill.errors` (reference async-apis.md 4.5).

API errors are RFC 7807 problem details, `{type, title, status, detail, instance}`; a model that fails is not an
HTTP error but a prediction that ends `failed` with `error` set (mapped in provider.py).

| answer                                                      | error                                  |
|-------------------------------------------------------------|----------------------------------------|
| 401, 403                                                    | `AuthError` (set REPLICATE_API_TOKEN)  |
| 402                                                         | `QuotaExhausted` (add credit)          |
| 404 on a create; 422 "Invalid version or not permitted"     | `ModelUnavailable`                     |
| 404 on a poll (`unknown_job`)                               | `ResultLost`: the job was paid, gone   |
| 429 (`detail`: "... resets in ~30s.")                       | `RateLimited` (header, else the `~Ns`) |
| 408, 409, 5xx                                               | `TransientError`                       |
| 422 naming an input, other 4xx                              | `Rejected`, naming the input           |

Messages quote the server's `detail` (redacted, bounded), never the request or a URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from pixelmill.errors import (
    AuthError,
    ModelUnavailable,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    Rejected,
    ResultLost,
    TransientError,
    redact_clip,
)
from pixelmill.providers.boundary import text
from pixelmill.providers.http import Reply, parse_retry_after

__all__ = ["ErrorContext", "error_from_reply", "problem_detail", "throttle_seconds"]

_MAX_MESSAGE = 400
_QUOTED_BYTES = 1 << 16
# "Request was throttled. Your rate limit resets in ~30s." (REP-DOC rate-limits)
_THROTTLE = re.compile(r"~\s*(\d+(?:\.\d+)?)\s*s\b")
# "- input.aspect_ratio: aspect_ratio must be one of ..." (Cog's validation errors name `input.<field>`)
_INPUT_NAME = re.compile(r"\binput\.([A-Za-z_][A-Za-z0-9_]*)")

Stage = Literal["create", "poll", "cancel", "list"]


@dataclass(frozen=True, slots=True)
class ErrorContext:
    label: str  # "replicate black-forest-labs/flux-dev"
    model: str
    stage: Stage
    secrets: tuple[str, ...] = ()
    prediction: str | None = None


def problem_detail(body: bytes, secrets: tuple[str, ...] = ()) -> tuple[str, str | None]:
    """The server's words from a problem-details body (its `detail`, else its `title`), redacted and bounded,
    and its `title`; any other body is quoted as text."""
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _bounded(bytes(body[:_QUOTED_BYTES]).decode("utf-8", "replace"), secrets), None
    if isinstance(parsed, dict):
        detail = text(parsed.get("detail")) or text(parsed.get("title")) or text(parsed.get("error"))
        title = text(parsed.get("title"))
        return _bounded(detail or orjson.dumps(parsed).decode(), secrets), _bounded(title, secrets) or None
    return _bounded(orjson.dumps(parsed).decode(), secrets), None


def throttle_seconds(detail: str) -> float | None:
    """The `~30s` of Replicate's throttling text, as seconds."""
    found = _THROTTLE.search(detail)
    return float(found.group(1)) if found else None


def error_from_reply(reply: Reply, ctx: ErrorContext) -> ProviderError:
    """The exception for a non-2xx answer at `ctx.stage`."""
    status = reply.status
    server, title = problem_detail(reply.body, ctx.secrets)
    server = server.rstrip(". ") or "no message"
    where = f"{ctx.label}: HTTP {status}"
    common: dict[str, Any] = {"http_status": status, "request_id": ctx.prediction, "code": title}
    lowered = f"{title or ''} {server}".lower()

    if status in (401, 403):
        return AuthError(f"{where}: {server}. The API token was refused or lacks access to {ctx.model}: set "
                         "REPLICATE_API_TOKEN (or DF_API_KEY) to a valid token", **common)
    if status == 402:
        return QuotaExhausted(f"{where}: {server}. The account is out of credit: add credit at "
                              "replicate.com/account/billing, then re-run the same command to resume", **common)
    if status == 429:
        retry_after = parse_retry_after(reply.headers)
        if retry_after is None:
            retry_after = throttle_seconds(server)
        after = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        return RateLimited(f"{where}: rate limited{after}: {server}", retry_after=retry_after, **common)
    if status == 404 and ctx.stage == "poll":
        return ResultLost(f"{where}: Replicate no longer knows prediction {ctx.prediction}: the job was paid and "
                          "its result is lost; --retry-failed submits it again (and pays again)", **common)
    unknown_version = status == 422 and "version" in lowered and "input" not in lowered
    if (status == 404 and ctx.stage == "create") or unknown_version:
        return ModelUnavailable(f"{where}: {server}. {ctx.model} is not available to this token: check the "
                                "model's owner/name (and version) on replicate.com", **common)
    if status in (408, 409) or status >= 500:
        return TransientError(f"{where}: server error, worth a retry: {server}", **common)
    named = _INPUT_NAME.search(server)
    which = f" (input {named.group(1)})" if named else ""
    return Rejected(f"{where}: the prediction was rejected{which}: {server}", **common)


def _bounded(value: str | None, secrets: tuple[str, ...]) -> str:
    return redact_clip(value, _MAX_MESSAGE, secrets) if value else ""
