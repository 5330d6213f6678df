"""Hugging Face router and Inference Endpoint error answers -> `pixelmill.errors` (reference async-apis.md 6.3).

Error bodies are `{"error": "..."}` (a string or a list of strings), sometimes `{"detail": ...}`; UNCONFIRMED for
the router, so any shape is read and quoted, bounded and redacted.

| answer                                                      | error                                        |
|-------------------------------------------------------------|----------------------------------------------|
| 401, 403                                                    | `AuthError` (set HF_TOKEN)                   |
| 402                                                         | `QuotaExhausted` (monthly credits spent)     |
| 404                                                         | `ModelUnavailable` (no such model here)     |
| 503 "... is currently loading" / with `estimated_time`      | `RateLimited` (waits `estimated_time`)       |
| 429                                                         | `RateLimited(retry_after)` from Retry-After  |
| 408, 409, other 5xx                                         | `TransientError`                             |
| other 4xx                                                   | `Rejected`                                   |

A loading model is a wait, not a failure: as a `RateLimited` the engine's policy owns it (bounded by the row's
deadline, not by --max-retries, and every sender pauses: the next requests would find the model loading too).
The wait is the server's `estimated_time`, capped so that a wrong estimate cannot stall the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from pixelmill.errors import (
    AuthError,
    ModelUnavailable,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    Rejected,
    TransientError,
    redact_clip,
)
from pixelmill.providers.boundary import number, seq, text
from pixelmill.providers.http import Reply, parse_retry_after

__all__ = ["MAX_LOADING_WAIT", "ErrorContext", "error_from_reply"]

MAX_LOADING_WAIT = 120.0
_MAX_MESSAGE = 400
_QUOTED_BYTES = 1 << 16


@dataclass(frozen=True, slots=True)
class ErrorContext:
    label: str  # "hf black-forest-labs/FLUX.1-dev:hf-inference"
    model: str
    key_hint: str
    endpoint: bool = False  # a dedicated Inference Endpoint (hf-endpoint)
    secrets: tuple[str, ...] = ()


def error_from_reply(reply: Reply, ctx: ErrorContext) -> ProviderError:
    status = reply.status
    message, estimated = _fields(reply.body, ctx.secrets)
    server = message.rstrip(". ") or "no message"
    where = f"{ctx.label}: HTTP {status}"
    request_id = reply.headers.get("x-request-id")
    common: dict[str, Any] = {"http_status": status, "request_id": request_id}
    if status in (401, 403):
        return AuthError(f"{where}: {server}. The token was refused or lacks access: {ctx.key_hint}", **common)
    if status == 402:
        return QuotaExhausted(f"{where}: {server}. The account's Inference Providers credits are spent: add "
                              "credit or a billing method at huggingface.co/settings/billing, then re-run the same "
                              "command to resume", **common)
    if status == 503 and (estimated is not None or "loading" in server.lower()):
        wait = min(estimated, MAX_LOADING_WAIT) if estimated is not None else parse_retry_after(reply.headers)
        after = f"; waiting {wait:g} s" if wait is not None else ""
        return RateLimited(f"{where}: the model is loading{after}: {server}", retry_after=wait,
                           code="model_loading", **common)
    if status == 404:
        where_to = ("check --base-url: it must be the endpoint's URL" if ctx.endpoint else
                    f"check that {ctx.model} is served on the hf-inference route (its model page lists the "
                    "Inference Providers that serve it)")
        return ModelUnavailable(f"{where}: {server}. {where_to}", **common)
    if status == 429:
        retry_after = parse_retry_after(reply.headers)
        after = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        return RateLimited(f"{where}: rate limited{after}: {server}", retry_after=retry_after, **common)
    if status in (408, 409) or status >= 500:
        return TransientError(f"{where}: server error, worth a retry: {server}", **common)
    return Rejected(f"{where}: the request was rejected: {server}", **common)


def _fields(body: bytes, secrets: tuple[str, ...]) -> tuple[str, float | None]:
    """The error's message and its `estimated_time` (seconds), from any body."""
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _bounded(bytes(body[:_QUOTED_BYTES]).decode("utf-8", "replace"), secrets), None
    if not isinstance(parsed, dict):
        return _bounded(orjson.dumps(parsed).decode(), secrets), None
    error = parsed.get("error", parsed.get("detail"))
    message = text(error) or "; ".join(t for t in (text(e) for e in seq(error)) if t) or (
        orjson.dumps(error).decode() if error is not None else "")
    estimated = number(parsed.get("estimated_time"))
    return _bounded(message, secrets), (max(0.0, estimated) if estimated is not None else None)


def _bounded(value: str, secrets: tuple[str, ...]) -> str:
    return redact_clip(value, _MAX_MESSAGE, secrets) if value else ""
