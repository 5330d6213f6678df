"""The error answers of each API family, in their real shapes.

Handlers raise `WireError`; `exchange.observe` turns it into the HTTP answer and logs its status and code. The
factories below hold the shapes: OpenAI `{"error": {message, type, param, code}}` (all four keys always),
Azure's own shapes for its gateway errors and content filter, Gemini's `{"error": {code, message, status,
details}}`.
"""

from __future__ import annotations

import math
from typing import Any


class WireError(Exception):
    """An error answer, ready to send."""

    def __init__(
        self, status: int, body: dict[str, Any], *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code or ''}".strip())
        self.status = status
        self.body = body
        self.code = code
        self.headers = headers or {}


# ---------------------------------------------------------------- OpenAI (and Azure, which reuses it)


def openai_error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> WireError:
    body = {"error": {"message": message, "type": type, "param": param, "code": code, **extra}}
    return WireError(status, body, code=code or type, headers=headers)


def invalid_value(
    param: str, value: object, allowed: list[str] | tuple[str, ...], *, code: str = "invalid_value"
) -> WireError:
    listed = ", ".join(f"'{a}'" for a in allowed)
    return openai_error(400, f"Invalid value: '{value}'. Supported values are: {listed}.", param=param, code=code)


def unknown_parameter(param: str) -> WireError:
    return openai_error(400, f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter")


def missing_parameter(param: str) -> WireError:
    return openai_error(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def invalid_type(param: str, expected: str, got: object) -> WireError:
    return openai_error(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(got)} instead.",
        param=param,
        code="invalid_type",
    )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def openai_model_not_found(model: str) -> WireError:
    return openai_error(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def openai_route_not_found(method: str, path: str) -> WireError:
    return openai_error(
        404,
        f"Invalid URL ({method} {path})",
        param=None,
        code=None,
    )


def openai_auth(present: bool) -> WireError:
    if not present:
        return openai_error(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using "
            "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code=None,
        )
    return openai_error(
        401,
        "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )


def openai_rate_limit(retry_after: float | None, *, what: str = "requests") -> WireError:
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(retry_after)))
        headers["retry-after-ms"] = str(max(1, round(retry_after * 1000)))
    return openai_error(
        429,
        f"Rate limit reached for images per minute on {what}. Please try again later.",
        type="requests",
        code="rate_limit_exceeded",
        headers=headers,
    )


def openai_quota() -> WireError:
    return openai_error(
        429,
        "You exceeded your current quota, please check your plan and billing details. For more information on "
        "this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
        type="insufficient_quota",
        code="insufficient_quota",
    )


def openai_server(status: int) -> WireError:
    messages = {
        500: ("The server had an error while processing your request. Sorry about that!", "server_error"),
        502: ("Bad gateway.", "server_error"),
        503: ("The engine is currently overloaded, please try again later.", "server_error"),
        504: ("Gateway timeout.", "server_error"),
    }
    message, type_ = messages.get(status, ("Server error.", "server_error"))
    return openai_error(status, message, type=type_)


def openai_moderation(request_id: str, *, dalle: bool) -> WireError:
    if dalle:
        return openai_error(
            400,
            "Your request was rejected as a result of our safety system. Your prompt may contain text that is "
            "not allowed by our safety system.",
            code="content_policy_violation",
        )
    return openai_error(
        400,
        "Your request was rejected by the safety system. If you believe this is an error, contact us at "
        f"help.openai.com and include the request ID {request_id}. safety_violations=[other].",
        type="image_generation_user_error",
        code="moderation_blocked",
        moderation_details={"moderation_stage": "input", "categories": ["other"]},
    )


# ---------------------------------------------------------------- Azure


def azure_auth() -> WireError:
    body = {
        "error": {
            "code": "401",
            "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
            "a valid key for an active subscription and use a correct regional API endpoint for your resource.",
        }
    }
    return WireError(401, body, code="401")


def azure_missing_api_version() -> WireError:
    body = {
        "error": {
            "code": "MissingApiVersionParameter",
            "message": "The api-version query parameter (?api-version=) is required for all requests.",
        }
    }
    return WireError(400, body, code="MissingApiVersionParameter")


def azure_bad_api_version(version: str) -> WireError:
    body = {"error": {"code": "404", "message": f"Resource not found (unsupported api-version {version!r})."}}
    return WireError(404, body, code="404")


def azure_deployment_not_found(deployment: str) -> WireError:
    body = {
        "error": {
            "code": "DeploymentNotFound",
            "message": f"The API deployment {deployment} for this resource does not exist. If you created the "
            "deployment within the last 5 minutes, please wait a moment and try again.",
        }
    }
    return WireError(404, body, code="DeploymentNotFound")


def azure_content_filter(prompt: str) -> WireError:
    filtered = {"filtered": True, "severity": "medium"}
    safe = {"filtered": False, "severity": "safe"}
    body = {
        "error": {
            "code": "content_policy_violation",
            "inner_error": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_results": {"hate": safe, "self_harm": safe, "sexual": safe, "violence": filtered},
                "revised_prompt": prompt[:200],
            },
            "message": "Your request was rejected as a result of our safety system. Your prompt may contain text "
            "that is not allowed by our safety system.",
            "param": None,
            "type": "invalid_request_error",
        }
    }
    return WireError(400, body, code="content_policy_violation")


# ---------------------------------------------------------------- Gemini

_GOOGLE_TYPE = "type.googleapis.com/google.rpc."


def gemini_error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> WireError:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return WireError(code, {"error": error}, code=status)


def gemini_invalid(message: str) -> WireError:
    return gemini_error(400, "INVALID_ARGUMENT", message)


def gemini_model_not_found(model: str) -> WireError:
    return gemini_error(
        404,
        "NOT_FOUND",
        f"models/{model} is not found for API version v1beta, or is not supported for generateContent. "
        "Call ListModels to see the list of available models and their supported methods.",
    )


def gemini_auth(present: bool) -> WireError:
    if not present:
        return gemini_error(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API "
            "Key or other form of API consumer identity to call this API.",
        )
    err = gemini_error(
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        [
            {
                "@type": _GOOGLE_TYPE + "ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ],
    )
    err.code = "API_KEY_INVALID"
    return err


def gemini_rate_limit(model: str, retry_after: float | None) -> WireError:
    details: list[dict[str, Any]] = [
        {
            "@type": _GOOGLE_TYPE + "QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    "quotaDimensions": {"model": model, "location": "global"},
                }
            ],
        },
        {"@type": _GOOGLE_TYPE + "Help", "links": [{"description": "Learn more about Gemini API quotas",
                                                     "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
    ]
    if retry_after is not None:
        details.append({"@type": _GOOGLE_TYPE + "RetryInfo", "retryDelay": _duration(retry_after)})
    return gemini_error(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details. For more information on "
        "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
        details,
    )


def gemini_quota(model: str) -> WireError:
    details = [
        {
            "@type": _GOOGLE_TYPE + "QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests_per_day",
                    "quotaId": "GenerateRequestsPerDayPerProjectPerModel",
                    "quotaDimensions": {"model": model, "location": "global"},
                }
            ],
        }
    ]
    err = gemini_error(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details. Your project has reached "
        "its daily limit or spend cap.",
        details,
    )
    err.code = "QUOTA_EXHAUSTED"
    return err


def gemini_server(status: int) -> WireError:
    statuses = {
        500: ("INTERNAL", "An internal error has occurred. Please retry or report in "
                          "https://developers.generativeai.google/guide/troubleshooting"),
        502: ("UNAVAILABLE", "Bad gateway."),
        503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
        504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
    }
    name, message = statuses.get(status, ("INTERNAL", "Internal error."))
    return gemini_error(status, name, message)


def _duration(seconds: float) -> str:
    """google.protobuf.Duration JSON: "37s", "1.5s"."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


# ---------------------------------------------------------------- fal (FastAPI-style `detail`)


def fal_validation(loc: list[str | int], msg: str, type: str, **extra: Any) -> WireError:
    """fal's model/validation error: 422 `{"detail": [{loc, msg, type, ...}]}` (the reference's §3.6)."""
    item = {"loc": ["body", *loc], "msg": msg, "type": type, **extra}
    return WireError(422, {"detail": [item]}, code=type, headers={"X-Fal-Retryable": "false"})


def fal_request_error(status: int, detail: str, error_type: str) -> WireError:
    """fal's request/infrastructure error: `{"detail", "error_type"}` and the same category in a header."""
    return WireError(status, {"detail": detail, "error_type": error_type}, code=error_type,
                     headers={"X-Fal-Error-Type": error_type})


def fal_auth(present: bool) -> WireError:
    # UNCONFIRMED body: fal's 401 is not documented in the reference; this is the shape of its other errors.
    detail = "Invalid Key Authorization header format. Use 'Key <key>'." if not present else \
        "Cannot access application: invalid key"
    return WireError(401, {"detail": detail}, code="unauthorized")


def fal_server(status: int) -> WireError:
    kind = {500: "internal_error", 502: "runner_disconnected", 503: "runner_scheduling_failure",
            504: "request_timeout"}.get(status, "internal_error")
    return fal_request_error(status, "The request could not be processed: upstream error", kind)


# ---------------------------------------------------------------- Replicate (RFC 7807 problem details)


def replicate_problem(status: int, title: str, detail: str, **headers: str) -> WireError:
    body = {"type": f"https://replicate.com/docs/reference/http#{status}", "title": title, "status": status,
            "detail": detail}
    return WireError(status, body, code=title.lower().replace(" ", "_"), headers=dict(headers))


def replicate_rate_limit(retry_after: float | None) -> WireError:
    # The reference's 429 body is a bare `detail` text; whether a Retry-After header comes with it is UNCONFIRMED.
    seconds = max(1, math.ceil(retry_after or 30))
    headers = {"Retry-After": str(seconds)} if retry_after is not None else {}
    return WireError(429, {"detail": f"Request was throttled. Your rate limit resets in ~{seconds}s."},
                     code="throttled", headers=headers)


# ---------------------------------------------------------------- BFL


def bfl_error(status: int, detail: str, code: str | None = None, **extra: Any) -> WireError:
    return WireError(status, {"detail": detail, **extra}, code=code or str(status))


def bfl_validation(loc: list[str | int], msg: str, type: str) -> WireError:
    # UNCONFIRMED: BFL's API is FastAPI-generated, so its 422 is presumably FastAPI's `detail[]`.
    return WireError(422, {"detail": [{"loc": ["body", *loc], "msg": msg, "type": type}]}, code=type)


# ---------------------------------------------------------------- Hugging Face


def hf_error(status: int, message: str, **extra: Any) -> WireError:
    # Router error bodies are UNCONFIRMED; the serverless API's `{"error": ...}` shape is used throughout.
    return WireError(status, {"error": message, **extra}, code=str(status))
