"""Every way an OpenAI-family call can fail ends in the right `pixelmill.errors` type, with status, request id
and code, and never with the key in the message. Faults come from the emulator over real HTTP; answer shapes
the emulator does not produce are fed to the mapper directly."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from pixelmill.errors import (
    AuthError,
    ModelUnavailable,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    Refused,
    Rejected,
    TransientError,
    UnknownOutcome,
    Unreachable,
)
from pixelmill.models.table import builtin_table
from pixelmill.providers.base import ImageRequest, ProviderSettings
from pixelmill.providers.http import Reply
from pixelmill.providers.openai.errors import ErrorContext, error_from_reply
from pixelmill.providers.openai.provider import AzureProvider, OpenAIProvider
from pixelmill.testing import Emulator, EmulatorConfig

KEY = "sk-test-errors-0123456789abcdef"
AZURE_KEY = "azure-test-errors-0123456789"


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    config = EmulatorConfig(api_keys=frozenset({KEY, AZURE_KEY}), timeout_hold=5.0, retry_after=2.5)
    async with Emulator(config) as emulator:
        yield emulator


@pytest.fixture
async def openai(emu: Emulator) -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider(ProviderSettings(base_url=emu.openai_base_url), {"OPENAI_API_KEY": KEY})
    yield provider
    await provider.aclose()


async def fail(
    provider: OpenAIProvider, prompt: str = "a lighthouse", *, model: str = "gpt-image-1.5",
    params: dict[str, object] | None = None, time_limit: float = 10.0,
) -> ProviderError:
    spec = provider.spec_for(model)
    request = ImageRequest("generate", model, prompt, dict(params or {}), timeout=time_limit)
    with pytest.raises(ProviderError) as caught:
        await provider.call(request, spec)
    error = caught.value
    assert KEY not in str(error) and AZURE_KEY not in str(error)
    assert KEY not in repr(vars(error))
    return error


# ---------------------------------------------------------------- answers with a status


async def test_moderation_is_refused_with_categories(openai: OpenAIProvider, emu: Emulator) -> None:
    error = await fail(openai, "a lighthouse [[fault:moderation]]")
    assert isinstance(error, Refused)
    assert error.reason == "moderation_blocked: other"
    assert (error.http_status, error.code) == (400, "moderation_blocked")
    assert error.request_id == emu.log[-1].id
    assert "input stage" in str(error)


async def test_dall_e_content_policy_is_refused(emu: Emulator, openai: OpenAIProvider) -> None:
    emu.configure(serve_retired=True)
    error = await fail(openai, "x [[fault:moderation]]", model="dall-e-3")
    assert isinstance(error, Refused) and error.code == "content_policy_violation"


async def test_azure_content_filter_is_refused_with_the_filtered_categories(emu: Emulator) -> None:
    provider = AzureProvider(ProviderSettings(base_url=emu.azure_endpoint, api_key=AZURE_KEY), {})
    try:
        error = await fail(provider, "x [[fault:moderation]]")
    finally:
        await provider.aclose()
    assert isinstance(error, Refused)
    assert error.reason == "content_policy_violation: violence"


async def test_other_400_is_rejected_with_the_parameter(openai: OpenAIProvider) -> None:
    error = await fail(openai, params={"size": "1000x1000"})  # what plan() would never send
    assert isinstance(error, Rejected)
    assert (error.http_status, error.code) == (400, "invalid_value")
    assert "parameter size" in str(error) and "1000x1000" in str(error)


async def test_401_is_an_auth_error_naming_the_variable(emu: Emulator) -> None:
    wrong = "sk-test-wrong-key-0123456789"
    provider = OpenAIProvider(ProviderSettings(base_url=emu.url), {"OPENAI_API_KEY": wrong})
    try:
        error = await fail(provider)
    finally:
        await provider.aclose()
    assert isinstance(error, AuthError)
    assert error.http_status == 401 and error.code == "invalid_api_key"
    assert "OPENAI_API_KEY" in str(error)
    assert wrong not in str(error)


async def test_azure_401_names_the_azure_variable(emu: Emulator) -> None:
    provider = AzureProvider(ProviderSettings(base_url=emu.azure_endpoint, api_key="azure-wrong-key-123456"), {})
    try:
        error = await fail(provider)
    finally:
        await provider.aclose()
    assert isinstance(error, AuthError) and "AZURE_OPENAI_API_KEY" in str(error)
    assert "azure-wrong-key-123456" not in str(error)


async def test_404_model_not_found_mentions_retirement(openai: OpenAIProvider) -> None:
    error = await fail(openai, model="dall-e-3")  # retired, and this emulator does not serve retired models
    assert isinstance(error, ModelUnavailable)
    assert (error.http_status, error.code) == (404, "model_not_found")
    assert "shut down on 2026-05-12" in str(error) and "gpt-image-2" in str(error)
    unknown = await fail(openai, model="gpt-image-9")
    assert isinstance(unknown, ModelUnavailable) and "pixelmill models" in str(unknown)


async def test_azure_unknown_deployment_is_model_unavailable(emu: Emulator) -> None:
    provider = AzureProvider(ProviderSettings(base_url=emu.azure_endpoint, api_key=AZURE_KEY), {})
    try:
        error = await fail(provider, model="no-such-deployment")
    finally:
        await provider.aclose()
    assert isinstance(error, ModelUnavailable)
    assert error.code == "DeploymentNotFound" and "deployment name" in str(error)


async def test_429_rate_limited_with_retry_after(openai: OpenAIProvider) -> None:
    error = await fail(openai, "x [[fault:rate_limit]]")
    assert isinstance(error, RateLimited)
    assert error.retry_after == 2.5  # retry-after-ms beats the whole seconds of retry-after
    assert error.http_status == 429 and error.code == "rate_limit_exceeded"
    bare = await fail(openai, "x [[fault:rate_limit_no_header]]")
    assert isinstance(bare, RateLimited) and bare.retry_after is None


async def test_insufficient_quota_is_fatal(openai: OpenAIProvider) -> None:
    error = await fail(openai, "x [[fault:quota]]")
    assert isinstance(error, QuotaExhausted)
    assert (error.http_status, error.code) == (429, "insufficient_quota")


@pytest.mark.parametrize(
    ("fault", "status"), [("server_error", 500), ("bad_gateway", 502), ("unavailable", 503), ("gateway_timeout", 504)]
)
async def test_5xx_is_transient(openai: OpenAIProvider, fault: str, status: int) -> None:
    error = await fail(openai, f"x [[fault:{fault}]]")
    assert type(error) is TransientError
    assert error.http_status == status and error.maybe_billed is False
    assert error.request_id


# ---------------------------------------------------------------- broken transports and bodies


async def test_timeout_with_a_short_request_timeout(openai: OpenAIProvider) -> None:
    started = time.monotonic()
    error = await fail(openai, "x [[fault:timeout]]", time_limit=0.3)
    # Sent, then no answer: the provider may have done (and billed) the work.
    assert type(error) is UnknownOutcome and error.maybe_billed
    assert "0.3 s" in str(error) and "--timeout" in str(error)
    assert time.monotonic() - started < 2.0


async def test_reset_after_sending_is_an_unknown_outcome(openai: OpenAIProvider) -> None:
    error = await fail(openai, "x [[fault:reset]]")
    assert type(error) is UnknownOutcome and error.maybe_billed is True


@pytest.mark.parametrize(("fault", "code"), [("truncated", None), ("malformed", "malformed_body"),
                                              ("invalid_base64", "invalid_base64")])
async def test_damaged_answers_are_transient_and_maybe_billed(openai: OpenAIProvider, fault: str,
                                                              code: str | None) -> None:
    error = await fail(openai, f"x [[fault:{fault}]]")
    assert type(error) is TransientError
    assert error.maybe_billed is True
    assert error.code == code


async def test_connection_refused_is_transient() -> None:
    async with Emulator() as gone:
        url = gone.url
    provider = OpenAIProvider(ProviderSettings(base_url=url), {"OPENAI_API_KEY": KEY})
    try:
        error = await fail(provider)
    finally:
        await provider.aclose()
    # A transient error (retried) of its own class, never billed, with its reason in a few words (engine/systematic.py
    # stops a run whose first calls all fail this way).
    assert type(error) is Unreachable and isinstance(error, TransientError) and "base URL" in str(error)
    assert error.maybe_billed is False and error.reason == "connection refused"


async def test_expired_image_url_is_transient_and_billed(openai: OpenAIProvider, emu: Emulator) -> None:
    emu.configure(serve_retired=True)
    spec = openai.spec_for("dall-e-3")
    request = ImageRequest("generate", "dall-e-3", "p", {"response_format": "url"}, timeout=10)

    class Forgetful(dict[str, tuple[bytes, str]]):
        def __setitem__(self, key: str, value: tuple[bytes, str]) -> None:  # the URL expires at once
            pass

    emu.files = Forgetful()
    with pytest.raises(TransientError) as caught:
        await openai.call(request, spec)
    assert caught.value.maybe_billed is True and caught.value.http_status == 404


# ---------------------------------------------------------------- answer shapes fed to the mapper


def reply(status: int, body: object, **headers: str) -> Reply:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return Reply(status, CIMultiDictProxy(CIMultiDict({"x-request-id": "req_1", **headers})), raw)


GPT_IMAGE_2 = builtin_table().get("gpt-image-2")
assert GPT_IMAGE_2 is not None
CTX = ErrorContext(label="openai gpt-image-2", model="gpt-image-2", spec=GPT_IMAGE_2, key_hint="set OPENAI_API_KEY",
                   secrets=(KEY,))


def err(
    message: str = "m", code: str | None = None, type: str = "invalid_request_error", **more: object
) -> dict[str, object]:
    return {"error": {"message": message, "type": type, "param": None, "code": code, **more}}


def test_azure_inner_error_content_filter() -> None:
    body = err("Your request was rejected as a result of our safety system.", "content_policy_violation",
               inner_error={"code": "ResponsibleAIPolicyViolation",
                            "content_filter_results": {"sexual": {"filtered": True}, "hate": {"filtered": False}}})
    error = error_from_reply(reply(400, body), CTX)
    assert isinstance(error, Refused) and error.reason == "content_policy_violation: sexual"


def test_azure_content_filter_code_and_200_with_error() -> None:
    body = {"created": 1, "error": {"code": "contentFilter", "message": "Generated image was filtered."}}
    error = error_from_reply(reply(200, b""), CTX, error_body=body)
    assert isinstance(error, Refused) and error.reason == "contentFilter" and error.http_status == 200


def test_image_generation_user_error_without_code_is_refused() -> None:
    error = error_from_reply(reply(400, {"error": {"message": None, "type": "image_generation_user_error",
                                                   "param": None, "code": None}}), CTX)
    assert isinstance(error, Refused) and error.reason == "image_generation_user_error"


def test_billing_hard_limit_is_quota() -> None:
    error = error_from_reply(reply(429, err("hard limit", "billing_hard_limit_reached")), CTX)
    assert isinstance(error, QuotaExhausted)
    error = error_from_reply(reply(429, err("quota", None, type="insufficient_quota")), CTX)
    assert isinstance(error, QuotaExhausted)


def test_retry_after_as_http_date() -> None:
    soon = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    error = error_from_reply(reply(429, err("slow down", "rate_limit_exceeded"), **{"retry-after": soon}), CTX)
    assert isinstance(error, RateLimited) and error.retry_after is not None and 25 <= error.retry_after <= 31


@pytest.mark.parametrize(("status", "kind"), [(403, AuthError), (408, TransientError), (409, TransientError),
                                              (413, Rejected), (422, Rejected), (404, Rejected)])
def test_other_statuses(status: int, kind: type[ProviderError]) -> None:
    error = error_from_reply(reply(status, err("Invalid URL (POST /v1/nope)")), CTX)
    assert type(error) is kind
    assert (error.http_status, error.request_id) == (status, "req_1")


def test_404_naming_the_model_is_model_unavailable() -> None:
    error = error_from_reply(reply(404, err("The model gpt-image-2 is not available in your region")), CTX)
    assert isinstance(error, ModelUnavailable)


def test_non_json_error_bodies_and_should_retry_header() -> None:
    error = error_from_reply(reply(502, b"<html><body>Bad   gateway</body></html>", **{"x-should-retry": "false"}),
                             CTX)
    assert type(error) is TransientError
    assert "Bad gateway" in str(error) and "not to retry" in str(error)


def test_a_key_echoed_by_the_server_is_redacted() -> None:
    error = error_from_reply(reply(401, err(f"Incorrect API key provided: {KEY}.", "invalid_api_key")), CTX)
    assert KEY not in str(error)
    error = error_from_reply(reply(400, err("bad key sk-test-someoneelse-1234567890")), CTX)
    assert "sk-test-someoneelse" not in str(error)
