"""fal error answers -> `pixelmill.errors` (reference async-apis.md 3.6).

| answer                                                                  | error                       |
|-------------------------------------------------------------------------|-----------------------------|
| 401, 403 saying the account is locked or out of balance                 | `QuotaExhausted`            |
| other 401, 403                                                          | `AuthError`                 |
| 404 on submit (no such endpoint)                                        | `ModelUnavailable`          |
| 422 (or any 4xx) whose `detail[]` is a content-policy error             | `Refused(reason)`           |
| 429                                                                     | `RateLimited(retry_after)`  |
| 408, 409, 5xx (`X-Fal-Error-Type`/`error_type`: request_timeout, ...)   | `TransientError`            |
| other 4xx (400, 413, 422 validation)                                    | `Rejected`, naming the field|

A 404 on a status or result URL is not here: the provider maps it to `ResultLost` (the job was submitted, so
paid, and fal no longer knows it). Messages quote fal's words (redacted, bounded), never the request or a URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pixelmill.errors import (
    AuthError,
    ModelUnavailable,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    Refused,
    Rejected,
    TransientError,
)
from pixelmill.providers.http import Reply, parse_retry_after
from pixelmill.providers.jobwire import Detail, detail_fields

__all__ = ["error_from_reply", "job_error", "request_id_of"]

_POLICY_TYPES = frozenset({"content_policy_violation", "content_policy", "nsfw", "moderation",
                           "image_moderation", "model_moderated"})
_LOCKED = ("balance", "locked", "billing", "credit")
KEY_HINT = "set FAL_KEY (or DF_API_KEY) to a key made at https://fal.ai/dashboard/keys"


def request_id_of(headers: Mapping[str, str]) -> str | None:
    return headers.get("x-fal-request-id") or headers.get("x-request-id")


def error_from_reply(reply: Reply, *, label: str, model: str, secrets: tuple[str, ...],
                     submit: bool = True) -> ProviderError:
    """The exception for an answer that is not a success."""
    status = reply.status
    fields = detail_fields(reply.body, secrets)
    error_type = fields.error_type or reply.headers.get("X-Fal-Error-Type")
    common: dict[str, Any] = {"http_status": status, "request_id": request_id_of(reply.headers),
              "code": error_type or fields.type}
    said = fields.message.rstrip(". ") or "no message"
    where = f"{label}: HTTP {status}" + (f" {error_type}" if error_type else "")
    if status in (401, 403):
        if any(word in said.lower() for word in _LOCKED):
            return QuotaExhausted(f"{where}: {said}. The fal account is out of balance: add credit at "
                                  "https://fal.ai/dashboard/billing, then re-run the same command to resume",
                                  **common)
        return AuthError(f"{where}: {said}. The key was refused or cannot use {model}: {KEY_HINT}", **common)
    refusal = _refusal(fields)
    if refusal is not None and status < 500 and status != 429:
        return Refused(f"{where}: refused by fal's content policy ({refusal}): {said}. Not retried; rephrase the "
                       "prompt or change the input image", reason=refusal, **common)
    if status == 404 and submit:
        return ModelUnavailable(f"{where}: {said}. No fal endpoint named {model}: check the id on "
                                "https://fal.ai/models (ids look like fal-ai/flux/dev)", **common)
    if status == 429:
        retry_after = parse_retry_after(reply.headers)
        after = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        return RateLimited(f"{where}: rate limited{after}: {said}", retry_after=retry_after, **common)
    if status in (408, 409) or status >= 500:
        hint = ""
        if reply.headers.get("X-Fal-Retryable", reply.headers.get("X-Fal-Needs-Retry", "")).lower() == "false":
            hint = " (fal marks it not retryable)"
        return TransientError(f"{where}: server error, worth a retry{hint}: {said}", **common)
    field = f" (field {fields.field})" if fields.field else ""
    return Rejected(f"{where}: the request was rejected{field}: {said}", **common)


def job_error(error: str, error_type: str | None, *, label: str, request_id: str) -> ProviderError:
    """A job that ended COMPLETED with `error` set: refused by the content policy, else failed on fal's side
    (worth sending again: fal bills outputs, and a failed job made none)."""
    kind = (error_type or "").lower()
    if kind in _POLICY_TYPES:
        return Refused(f"{label}: the job was refused by fal's content policy ({kind}): {error}. Not retried; "
                       "rephrase the prompt or change the input image", reason=kind, request_id=request_id,
                       code=error_type)
    what = f" ({error_type})" if error_type else ""
    return TransientError(f"{label}: the job failed on fal's side{what}: {error}", request_id=request_id,
                          code=error_type)


def _refusal(fields: Detail) -> str | None:
    kinds = {(fields.type or "").lower(), (fields.error_type or "").lower()}
    if kinds & _POLICY_TYPES or fields.categories:
        return (fields.type or "content_policy_violation") + (
            f": {', '.join(fields.categories)}" if fields.categories else "")
    return None
