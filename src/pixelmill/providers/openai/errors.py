"""OpenAI / Azure error answers -> `pixelmill.errors` (reference image-apis.md 1.8 and 2).

| answer                                                                 | error                         |
|------------------------------------------------------------------------|-------------------------------|
| safety codes (below), in any 4xx or in a 200 that carries `error`      | `Refused(reason)`             |
| `insufficient_quota`, `billing_hard_limit_reached`, `billing_not_active` | `QuotaExhausted`            |
| `model_not_found`, Azure `DeploymentNotFound`, a 404 naming the model  | `ModelUnavailable`            |
| 401, 403                                                               | `AuthError`                   |
| other 429                                                              | `RateLimited(retry_after)`    |
| 408, 409, 5xx                                                          | `TransientError`              |
| other 4xx (400, 404, 413, 422, ...)                                    | `Rejected`                    |

Safety codes: `moderation_blocked`, `content_policy_violation`, type `image_generation_user_error`, Azure
`contentFilter` / `content_filter` and `inner_error.code: ResponsibleAIPolicyViolation`; the reason names the
categories when the answer gives them. Every error carries `http_status`, `request_id` and the answer's
`code`. Messages quote the server's message (redacted, then bounded), never the request. Error bodies of
any shape map by HTTP status: a field of an odd type (a number for `categories`, a string for `error`) reads
as absent (`pixelmill.providers.boundary`), never as a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from pixelmill.errors import (
    AuthError,
    ModelUnavailable,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    Refused,
    Rejected,
    TransientError,
    redact,
    redact_clip,
)
from pixelmill.models.table import ModelSpec
from pixelmill.providers.boundary import code as code_of
from pixelmill.providers.boundary import obj, seq
from pixelmill.providers.http import Reply, parse_rate_limits, parse_retry_after

__all__ = ["ErrorContext", "error_from_reply", "request_id_of"]

_REFUSAL_CODES = frozenset({
    "moderation_blocked",
    "content_policy_violation",
    "image_content_policy_violation",
    "contentfilter",
    "content_filter",
    "responsibleaipolicyviolation",
})
_REFUSAL_TYPES = frozenset({"image_generation_user_error"})
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active"})
_MODEL_CODES = frozenset({"model_not_found", "deploymentnotfound", "deployment_not_found"})
_SAFETY_VIOLATIONS = re.compile(r"safety_violations=\[([^\]]*)\]")
_MAX_MESSAGE = 400
_QUOTED_BYTES = 1 << 16  # of a body that is not JSON: what `redact_clip` sees (it drops the cut's edge)
_MAX_CATEGORIES = 16
_MAX_CATEGORY = 80


@dataclass(frozen=True, slots=True)
class ErrorContext:
    """What an error message may say about the call: never the key, the URL's query or the body."""

    label: str  # "openai gpt-image-2"
    model: str
    spec: ModelSpec
    key_hint: str  # "set OPENAI_API_KEY (or DF_API_KEY)"
    secrets: tuple[str, ...] = ()
    deployment: bool = False  # Azure classic: the model name is a deployment name


def request_id_of(reply: Reply) -> str | None:
    headers = reply.headers
    return headers.get("x-request-id") or headers.get("apim-request-id") or headers.get("x-ms-request-id")


def error_from_reply(reply: Reply, ctx: ErrorContext, *, error_body: Any = None) -> ProviderError:
    """The exception for a non-200 answer, or for a 200 whose JSON (`error_body`) carries an `error`."""
    status = reply.status
    request_id = request_id_of(reply)
    fields = _error_fields(reply.body if error_body is None else error_body, ctx.secrets)
    code = fields.code
    lowered = {(code or "").lower(), (fields.type or "").lower(), (fields.inner_code or "").lower()}
    server = redact(fields.message, ctx.secrets).rstrip(". ") if fields.message else "no message"
    where = f"{ctx.label}: HTTP {status}" + (f" {code}" if code else "")
    if reply.headers.get("x-should-retry", "").lower() == "false":
        server += " (the server says not to retry)"
    common: dict[str, Any] = {"http_status": status, "request_id": request_id, "code": code}

    if status in (401, 403):
        return AuthError(
            f"{where}: {server}. The API key was refused or lacks access to {ctx.model}: {ctx.key_hint}",
            **common,
        )
    if lowered & _QUOTA_CODES:
        return QuotaExhausted(
            f"{where}: {server}. The account is out of quota or credit: add credit or raise the limit, then "
            "re-run the same command to resume",
            **common,
        )
    if status < 500 and status != 429 and (lowered & _REFUSAL_CODES or lowered & _REFUSAL_TYPES):
        reason = (code or fields.type or fields.inner_code or "refused") + (
            f": {', '.join(fields.categories)}" if fields.categories else ""
        )
        stage = f" at the {fields.stage} stage" if fields.stage else ""
        return Refused(
            f"{where}: refused by the safety system{stage} ({reason}): {server}. Not retried; rephrase the "
            "prompt or change the input image",
            reason=reason,
            **common,
        )
    if lowered & _MODEL_CODES or (status == 404 and _names_model(fields, ctx)):
        return ModelUnavailable(f"{where}: {server}. {_model_advice(ctx)}", **common)
    if status == 429:
        retry_after = parse_retry_after(reply.headers)
        after = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        return RateLimited(f"{where}: rate limited{after}: {server}", retry_after=retry_after,
                           limits=parse_rate_limits(reply.headers), **common)
    if status in (408, 409) or status >= 500:
        return TransientError(f"{where}: server error, worth a retry: {server}", **common)
    param = f" (parameter {fields.param})" if fields.param else ""
    hint = ""
    if status == 404:
        hint = ". Check --base-url: the endpoint was not found there"
    elif status == 413:
        hint = ". The request is too large: send smaller input images"
    return Rejected(f"{where}: the request was rejected{param}: {server}{hint}", param=fields.param, **common)


@dataclass(slots=True)
class _Fields:
    message: str = ""
    code: str | None = None
    type: str | None = None
    param: str | None = None
    inner_code: str | None = None
    stage: str | None = None
    categories: tuple[str, ...] = ()


def _error_fields(body: Any, secrets: tuple[str, ...] = ()) -> _Fields:
    """What an error body says, whatever its shape; texts redacted with `secrets` before they are cut."""
    if isinstance(body, bytes | bytearray):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _Fields(message=_bounded(bytes(body[:_QUOTED_BYTES]).decode("utf-8", "replace"), secrets))
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return _Fields(message=_bounded(error, secrets))
    if not isinstance(error, dict):
        return _Fields(message=_bounded(orjson.dumps(body).decode(), secrets) if body is not None else "")
    fields = _Fields(
        message=_bounded(error.get("message"), secrets),
        code=code_of(error.get("code")),
        type=code_of(error.get("type")),
        param=code_of(error.get("param")),
    )
    categories: list[str] = []
    details = obj(error.get("moderation_details"))
    fields.stage = code_of(details.get("moderation_stage"))
    categories += _category_names(details.get("categories"))
    inner = obj(error.get("inner_error") or error.get("innererror"))
    fields.inner_code = code_of(inner.get("code"))
    results = obj(inner.get("content_filter_results") or inner.get("content_filter_result"))
    categories += [name for name, verdict in results.items() if obj(verdict).get("filtered")]
    if not categories and fields.message:
        found = _SAFETY_VIOLATIONS.search(fields.message)
        if found:
            categories += [c.strip() for c in found.group(1).split(",") if c.strip()]
    fields.categories = tuple(dict.fromkeys(c[:_MAX_CATEGORY] for c in categories))[:_MAX_CATEGORIES]
    return fields


def _category_names(value: Any) -> list[str]:
    """Moderation categories: a list of names, or an object of name -> flagged."""
    if isinstance(value, dict):
        return [str(name) for name, flagged in value.items() if flagged]
    return [name for item in seq(value) if (name := code_of(item))]


def _names_model(fields: _Fields, ctx: ErrorContext) -> bool:
    text = fields.message.lower()
    return "model" in text or "deployment" in text or ctx.model.lower() in text


def _model_advice(ctx: ErrorContext) -> str:
    spec = ctx.spec
    if spec.known and spec.shutdown is not None and spec.retired():
        instead = f": use {spec.replacement} instead" if spec.replacement else ""
        return f"{spec.name} was shut down on {spec.shutdown.isoformat()}{instead}"
    if ctx.deployment:
        return (
            f"No deployment named {ctx.model} on this endpoint: --model must be the Azure deployment name; "
            "check the endpoint and the deployment"
        )
    return (
        f"{ctx.model} is not available to this key: check the name with `pixelmill models` and the key's "
        "access"
    )


def _bounded(value: Any, secrets: tuple[str, ...] = ()) -> str:
    if value is None:
        return ""
    return redact_clip(value if isinstance(value, str) else orjson.dumps(value).decode(), _MAX_MESSAGE, secrets)
