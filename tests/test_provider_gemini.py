"""The Gemini adapter's pure parts: credentials, base URL, the request body, and the mapping of answers and
error bodies to results and the error taxonomy. Over-the-wire behaviour is in test_provider_gemini_http.py."""

from __future__ import annotations

from typing import Any

import orjson
import pybase64
import pytest
from multidict import CIMultiDict

from pixelmill.errors import (
    AuthError,
    ConfigError,
    InputError,
    ModelUnavailable,
    QuotaExhausted,
    RateLimited,
    Refused,
    Rejected,
    TransientError,
)
from pixelmill.models.table import ModelSpec, builtin_table, permissive_spec
from pixelmill.params import ImageParams
from pixelmill.providers.base import ChatTurn, ImageRequest, InputImage, ProviderSettings, provider_class
from pixelmill.providers.gemini.provider import (
    DEFAULT_BASE_URL,
    GeminiProvider,
    error_from_answer,
    parse_answer,
    request_body,
)

KEY = "sk-test-gemini-0123456789abcdef"
PRO = "gemini-3-pro-image"


def spec(name: str = PRO) -> ModelSpec:
    found = builtin_table().get(name)
    assert found is not None
    return found


def picture(tag: bytes, mime: str = "image/png") -> InputImage:
    return InputImage(data=b"\x89PNG\r\n\x1a\n" + tag, mime=mime, name=tag.decode())


def b64(data: bytes) -> str:
    return pybase64.b64encode(data).decode()


# ------------------------------------------------------------------------------------------ construction


def test_registered_under_the_entry_point() -> None:
    cls = provider_class("gemini")
    assert cls is GeminiProvider
    assert (cls.name, cls.family, cls.chat) == ("gemini", "gemini", True)


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        ("sk-test-flag", {"GEMINI_API_KEY": "sk-test-g", "GOOGLE_API_KEY": "sk-test-o"}, "sk-test-flag"),
        (None, {"GEMINI_API_KEY": "sk-test-g", "GOOGLE_API_KEY": "sk-test-o", "DF_API_KEY": "d"},
         "sk-test-g"),
        (None, {"GOOGLE_API_KEY": "sk-test-o", "DF_API_KEY": "sk-test-d"}, "sk-test-o"),
        (None, {"DF_API_KEY": "sk-test-d", "GEMINI_API_KEY": ""}, "sk-test-d"),
    ],
)
def test_key_precedence(flag: str | None, env: dict[str, str], expected: str) -> None:
    provider = GeminiProvider(ProviderSettings(api_key=flag), env)
    assert provider.secrets() == (expected,)


def test_missing_key_names_the_variables() -> None:
    with pytest.raises(ConfigError) as caught:
        GeminiProvider(ProviderSettings(), {"OPENAI_API_KEY": "sk-test-other"})
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "DF_API_KEY"):
        assert name in str(caught.value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, f"{DEFAULT_BASE_URL}/v1beta"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123/v1beta"),
        ("http://127.0.0.1:8123/", "http://127.0.0.1:8123/v1beta"),
        ("http://127.0.0.1:8123/v1beta", "http://127.0.0.1:8123/v1beta"),
        ("http://127.0.0.1:8123/v1beta/", "http://127.0.0.1:8123/v1beta"),
        ("https://gateway.example/google/v1alpha", "https://gateway.example/google/v1alpha"),
        ("https://gateway.example/google", "https://gateway.example/google/v1beta"),
    ],
)
def test_base_url_with_or_without_version(given: str | None, expected: str) -> None:
    provider = GeminiProvider(ProviderSettings(base_url=given), {"GEMINI_API_KEY": KEY})
    assert provider.base_url == expected


def test_base_url_precedence_and_validation() -> None:
    env = {"GEMINI_API_KEY": KEY, "GOOGLE_GEMINI_BASE_URL": "http://a.test", "DF_BASE_URL": "http://b.test"}
    assert GeminiProvider(ProviderSettings(base_url="http://c.test"), env).base_url == "http://c.test/v1beta"
    assert GeminiProvider(ProviderSettings(), env).base_url == "http://a.test/v1beta"
    env.pop("GOOGLE_GEMINI_BASE_URL")
    assert GeminiProvider(ProviderSettings(), env).base_url == "http://b.test/v1beta"
    with pytest.raises(ConfigError, match="http"):
        GeminiProvider(ProviderSettings(base_url="generativelanguage.googleapis.com"), env)


def test_plan_is_the_gemini_planner() -> None:
    provider = GeminiProvider(ProviderSettings(), {"GEMINI_API_KEY": KEY})
    wire = provider.plan(spec(), ImageParams(aspect_ratio="16:9", resolution="2K"), "generate")
    assert wire.params["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}


# ------------------------------------------------------------------------------------------ the request


def test_current_turn_is_text_then_images_in_order() -> None:
    images = [picture(b"first"), picture(b"second", "image/jpeg"), picture(b"third", "image/webp")]
    config = {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"aspectRatio": "1:1"}}
    request = ImageRequest(task="edit", model=PRO, prompt="combine them", images=images, params=config)
    body = request_body(request)
    assert body["generationConfig"] == request.params
    [turn] = body["contents"]
    assert turn["role"] == "user"
    assert turn["parts"][0] == {"text": "combine them"}
    sent = [p["inlineData"] for p in turn["parts"][1:]]
    assert [p["mimeType"] for p in sent] == ["image/png", "image/jpeg", "image/webp"]
    assert [pybase64.b64decode(p["data"]) for p in sent] == [i.data for i in images]


def test_history_echoes_model_turns_as_received() -> None:
    first_model = {
        "role": "model",
        "parts": [
            {"text": "thinking...", "thought": True, "thoughtSignature": "c2lnLTE="},
            {"inlineData": {"mimeType": "image/png", "data": b64(b"draft")}, "thought": True},
            {"inlineData": {"mimeType": "image/png", "data": b64(b"final")}, "thoughtSignature": "c2lnLTI="},
        ],
        "someFutureField": {"kept": [1, 2]},
    }
    history = [ChatTurn(prompt="a red car", images=[picture(b"ref")], model_content=first_model),
               ChatTurn(prompt="now blue", images=[], model_content="Here it is in blue.")]
    body = request_body(ImageRequest(task="edit", model=PRO, prompt="add rain", history=history))
    contents = body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user", "model", "user"]
    assert contents[0]["parts"][0] == {"text": "a red car"}
    assert pybase64.b64decode(contents[0]["parts"][1]["inlineData"]["data"]) == picture(b"ref").data
    assert contents[1] is first_model  # not rebuilt: every field, signatures included, goes back unchanged
    assert orjson.loads(orjson.dumps(body))["contents"][1] == first_model
    assert contents[3] == {"role": "model", "parts": [{"text": "Here it is in blue."}]}
    assert contents[4] == {"role": "user", "parts": [{"text": "add rain"}]}


def test_model_turn_without_role_gets_one() -> None:
    content = {"parts": [{"text": "ok", "thoughtSignature": "eA=="}]}
    body = request_body(ImageRequest(task="edit", model=PRO, prompt="again",
                                     history=[ChatTurn(prompt="hi", images=[], model_content=content)]))
    assert body["contents"][1] == {"role": "model", **content}


def test_history_without_a_model_answer_is_an_input_error() -> None:
    request = ImageRequest(task="edit", model=PRO, prompt="x",
                           history=[ChatTurn(prompt="hi", images=[], model_content=None)])
    with pytest.raises(InputError, match="turn 1"):
        request_body(request)


def test_request_level_params_are_lifted_out_of_generation_config() -> None:
    safety = [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]
    request = ImageRequest(task="generate", model=PRO, prompt="p",
                           params={"responseModalities": ["IMAGE"], "safetySettings": safety, "seed": 3})
    body = request_body(request)
    assert body["safetySettings"] == safety
    assert body["generationConfig"] == {"responseModalities": ["IMAGE"], "seed": 3}
    assert "safetySettings" in request.params  # the row still records it


# ------------------------------------------------------------------------------------------ the answer


def answer(parts: list[dict[str, Any]] | None, finish: str | None = "STOP", **top: Any) -> bytes:
    body: dict[str, Any] = {"responseId": "resp-1", "modelVersion": PRO,
                            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 1120}, **top}
    if parts is not None:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        body["candidates"] = [candidate]
    return orjson.dumps(body)


def test_final_image_comes_from_non_thought_parts_only() -> None:
    parts = [
        {"text": "Let me sketch", "thought": True},
        {"inlineData": {"mimeType": "image/png", "data": b64(b"draft-1")}, "thought": True},
        {"inlineData": {"mimeType": "image/png", "data": b64(b"draft-2")}, "thought": True},
        {"text": "Here is your cat."},
        {"inlineData": {"mimeType": "image/jpeg", "data": b64(b"final")}, "thoughtSignature": "c2ln"},
        {"text": "Enjoy."},
    ]
    result = parse_answer(answer(parts), PRO)
    assert [(i.data, i.mime) for i in result.images] == [(b"final", "image/jpeg")]
    assert result.text == "Here is your cat.\nEnjoy."
    assert result.finish_reason == "STOP"
    assert result.request_id == "resp-1"
    assert result.usage == {"promptTokenCount": 10, "candidatesTokenCount": 1120}
    assert result.model_content == {"role": "model", "parts": parts}
    assert result.extra == {"model_version": PRO, "draft_images_ignored": 2}


def test_snake_case_inline_data_and_list_wrapped_bodies() -> None:
    part = {"inline_data": {"mime_type": "image/webp", "data": b64(b"w")}}
    raw = orjson.dumps([orjson.loads(answer([part]))])
    result = parse_answer(raw, PRO)
    assert [(i.data, i.mime) for i in result.images] == [(b"w", "image/webp")]
    assert result.text is None


def test_blocked_prompt_is_refused_with_its_block_reason() -> None:
    raw = orjson.dumps({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "responseId": "r9"})
    with pytest.raises(Refused) as caught:
        parse_answer(raw, PRO)
    assert caught.value.reason == "PROHIBITED_CONTENT"
    assert caught.value.http_status == 200 and caught.value.request_id == "r9"
    assert "rephrase" in str(caught.value)


@pytest.mark.parametrize(
    "finish",
    ["SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "IMAGE_PROHIBITED_CONTENT", "BLOCKLIST", "SPII",
     "RECITATION", "IMAGE_RECITATION", "NO_IMAGE", "IMAGE_OTHER", "OTHER", "MAX_TOKENS"],
)
def test_candidate_without_image_is_refused_with_its_finish_reason(finish: str) -> None:
    raw = answer([{"text": "I can't draw that."}], finish=finish)
    with pytest.raises(Refused) as caught:
        parse_answer(raw, PRO)
    assert caught.value.reason == finish
    assert "I can't draw that." in str(caught.value)


def test_draft_images_alone_are_not_an_answer() -> None:
    parts = [{"inlineData": {"mimeType": "image/png", "data": b64(b"draft")}, "thought": True}]
    with pytest.raises(Refused) as caught:
        parse_answer(answer(parts, finish="IMAGE_OTHER"), PRO)
    assert caught.value.reason == "IMAGE_OTHER"


def test_text_only_answer_quotes_the_model_truncated() -> None:
    words = "I would rather describe it: " + "a very long description " * 40
    with pytest.raises(Refused) as caught:
        parse_answer(answer([{"text": words}]), PRO)
    assert caught.value.reason == "text_only"
    message = str(caught.value)
    assert "I would rather describe it" in message and "…" in message and len(message) < 700


def test_empty_normal_answer_is_no_image() -> None:
    with pytest.raises(Refused) as caught:
        parse_answer(answer([]), PRO)
    assert caught.value.reason == "NO_IMAGE"


@pytest.mark.parametrize(
    "raw",
    [b'{"candidates": [', b"<html>oops</html>", b'{"candidates": "nope"}', b"[1, 2]", b"{}",
     orjson.dumps({"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png",
                                                                         "data": "!!not base64!!"}}]}}]})],
)
def test_broken_answers_are_transient_and_maybe_billed(raw: bytes) -> None:
    with pytest.raises(TransientError) as caught:
        parse_answer(raw, PRO)
    assert caught.value.maybe_billed


# ------------------------------------------------------------------------------------------ the errors


def google_error(code: int, status: str, message: str, *details: dict[str, Any]) -> bytes:
    error = {"code": code, "status": status, "message": message, "details": list(details)}
    return orjson.dumps({"error": error})


RETRY = "type.googleapis.com/google.rpc.RetryInfo"
QUOTA = "type.googleapis.com/google.rpc.QuotaFailure"


def mapped(status: int, raw: bytes, headers: dict[str, str] | None = None, model: str = PRO,
           model_spec: ModelSpec | None = None) -> Exception:
    return error_from_answer(status, raw, CIMultiDict(headers or {}), model_spec or spec(model), model,
                             secrets=(KEY,))


@pytest.mark.parametrize(("delay", "seconds"), [("37s", 37.0), ("1.5s", 1.5), ("0.250s", 0.25),
                                                ({"seconds": 2, "nanos": 500_000_000}, 2.5)])
def test_429_is_rate_limited_after_retry_info(delay: Any, seconds: float) -> None:
    per_minute = {"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}
    raw = google_error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan.",
                       {"@type": QUOTA, "violations": [per_minute]}, {"@type": RETRY, "retryDelay": delay})
    error = mapped(429, raw)
    assert isinstance(error, RateLimited) and error.retry_after == pytest.approx(seconds)
    assert error.http_status == 429 and error.code == "RESOURCE_EXHAUSTED"


def test_429_falls_back_to_retry_after_header() -> None:
    error = mapped(429, google_error(429, "RESOURCE_EXHAUSTED", "slow down"), {"Retry-After": "4"})
    assert isinstance(error, RateLimited) and error.retry_after == 4.0
    plain = mapped(429, b"")
    assert isinstance(plain, RateLimited) and plain.retry_after is None


@pytest.mark.parametrize(
    ("violation", "message"),
    [({"quotaId": "GenerateRequestsPerDayPerProjectPerModel", "quotaMetric": "generate_requests"}, "quota"),
     ({"quotaId": "MonthlySpendCapPerProject"}, "quota"),
     ({"quotaId": "x"}, "Your project has reached its monthly spending cap.")],
)
def test_429_daily_quota_or_spend_cap_aborts(violation: dict[str, str], message: str) -> None:
    raw = google_error(429, "RESOURCE_EXHAUSTED", message, {"@type": QUOTA, "violations": [violation]},
                       {"@type": RETRY, "retryDelay": "20s"})
    error = mapped(429, raw)
    assert isinstance(error, QuotaExhausted)
    assert "midnight Pacific" in str(error)


@pytest.mark.parametrize("status", [499, 500, 502, 503, 504])
def test_server_trouble_is_transient(status: int) -> None:
    error = mapped(status, google_error(status, "UNAVAILABLE", "The model is overloaded."))
    assert isinstance(error, TransientError) and not error.maybe_billed and error.http_status == status


def test_non_json_error_bodies_map_by_status() -> None:
    error = mapped(502, b"<html><body>Bad Gateway</body></html>")
    assert isinstance(error, TransientError) and "Bad Gateway" in str(error)


def test_400_invalid_argument_is_rejected_for_the_row() -> None:
    error = mapped(400, google_error(400, "INVALID_ARGUMENT", "Unable to submit request because it has an "
                                     "invalid thought signature for content at index 1"))
    assert type(error) is Rejected and "thought signature" in str(error)


def test_bad_key_is_auth_even_as_400() -> None:
    info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
    bad = "API key not valid. Please pass a valid API key."
    error = mapped(400, google_error(400, "INVALID_ARGUMENT", bad, info))
    assert isinstance(error, AuthError) and "GEMINI_API_KEY" in str(error)
    assert isinstance(mapped(403, google_error(403, "PERMISSION_DENIED", "denied")), AuthError)
    assert isinstance(mapped(401, google_error(401, "UNAUTHENTICATED", "who")), AuthError)


def test_failed_precondition_aborts_as_auth() -> None:
    where = "User location is not supported for the API use."
    error = mapped(400, google_error(400, "FAILED_PRECONDITION", where))
    assert isinstance(error, AuthError) and "billing" in str(error)


def test_404_names_the_retirement_of_a_retired_model() -> None:
    old = spec("gemini-2.5-flash-image")
    assert old.retired(), "the table dates gemini-2.5-flash-image's shutdown 2026-10-02"
    error = mapped(404, google_error(404, "NOT_FOUND", "models/gemini-2.5-flash-image is not found"),
                   model="gemini-2.5-flash-image", model_spec=old)
    assert isinstance(error, ModelUnavailable)
    assert "shut down on 2026-10-02" in str(error) and "gemini-3.1-flash-image" in str(error)
    unknown = mapped(404, google_error(404, "NOT_FOUND", "not found"), model="gemini-9",
                     model_spec=permissive_spec("gemini-9", "gemini"))
    assert isinstance(unknown, ModelUnavailable) and "pixelmill models" in str(unknown)


def test_keys_never_reach_messages() -> None:
    echoed = f"bad request for key={KEY} (AIzaSyA1234567890abcdefghijklmnop)"
    raw = google_error(400, "INVALID_ARGUMENT", echoed)
    error = mapped(400, raw)
    assert KEY not in str(error) and "AIzaSyA1234567890" not in str(error)
    html = mapped(500, f"<p>{KEY}</p>".encode())
    assert KEY not in str(html)
