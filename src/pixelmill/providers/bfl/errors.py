"""Black Forest Labs error answers -> `pixelmill.errors` (reference async-apis.md 5.4).

| answer                                             | error                                              |
|----------------------------------------------------|----------------------------------------------------|
| 401, 403                                           | `AuthError`                                        |
| 402 (insufficient credits)                         | `QuotaExhausted`                                   |
| 404 on submit (unknown endpoint)                   | `ModelUnavailable`                                 |
| 429 (too many active tasks: 24, 6 for Kontext Max) | `RateLimited`: `Retry-After`, else the body's `retry_after` |
| 408, 409, 5xx                                      | `TransientError`                                   |
| other 4xx (400, 413, 422 with `detail[]`)          | `Rejected`, naming the field                       |

The 422 and 429 bodies are UNCONFIRMED against the live API: `{"detail": [{loc, msg, type}]}` (FastAPI) and
`{"error": "rate_limit_exceeded", "message": ..., "retry_after": 5}` are read, and any other shape maps by status.
"""

from __future__ import annotations

from collections.abc import Mapping
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
)
from pixelmill.providers.boundary import number, obj
from pixelmill.providers.http import Reply, parse_retry_after
from pixelmill.providers.jobwire import detail_fields

__all__ = ["KEY_HINT", "error_from_reply", "request_id_of"]

KEY_HINT = "set BFL_API_KEY (or DF_API_KEY) to a key made at https://dashboard.bfl.ai"


def request_id_of(headers: Mapping[str, str]) -> str | None:
    return headers.get("x-request-id")


def error_from_reply(reply: Reply, *, label: str, model: str, secrets: tuple[str, ...]) -> ProviderError:
    status = reply.status
    fields = detail_fields(reply.body, secrets)
    common: dict[str, Any] = {"http_status": status, "request_id": request_id_of(reply.headers),
                              "code": fields.type}
    said = fields.message.rstrip(". ") or "no message"
    where = f"{label}: HTTP {status}"
    if status in (401, 403):
        return AuthError(f"{where}: {said}. The key was refused or cannot use {model}: {KEY_HINT}", **common)
    if status == 402:
        return QuotaExhausted(f"{where}: {said}. The BFL account is out of credits: add credits at "
                              "https://dashboard.bfl.ai, then re-run the same command to resume", **common)
    if status == 404:
        return ModelUnavailable(f"{where}: {said}. No BFL endpoint /v1/{model}: check --model (`pixelmill models "
                                "--provider bfl` lists them) and --base-url", **common)
    if status == 429:
        retry_after = parse_retry_after(reply.headers)
        if retry_after is None:
            retry_after = _body_retry_after(reply.body)
        after = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        return RateLimited(f"{where}: too many active tasks{after}: {said}. Lower --concurrency (BFL allows 24 "
                           "active tasks, 6 for Kontext Max)", retry_after=retry_after, **common)
    if status in (408, 409) or status >= 500:
        return TransientError(f"{where}: server error, worth a retry: {said}", **common)
    field = f" (field {fields.field})" if fields.field else ""
    return Rejected(f"{where}: the request was rejected{field}: {said}", **common)


def _body_retry_after(body: bytes) -> float | None:
    try:
        value = number(obj(orjson.loads(body)).get("retry_after"))
    except orjson.JSONDecodeError:
        return None
    return max(0.0, value) if value is not None else None
