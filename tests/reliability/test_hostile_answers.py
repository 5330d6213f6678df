"""Answers of every odd shape end as errors of the taxonomy (or a good result), never as a Python exception that
ends the run: over loopback against the provider objects, through a real `pixelmill generate` process, and as a
property over random JSON fed to the answer and error mappers. An answer with more images than were asked for
keeps the first n and counts the rest."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from pixelmill.errors import ProviderError, RateLimited
from pixelmill.providers.base import ImageRequest, ImageResult, ProviderSettings
from pixelmill.providers.gemini.provider import GeminiProvider, error_from_answer, parse_answer
from pixelmill.providers.http import Reply
from pixelmill.providers.openai.errors import ErrorContext, error_from_reply
from pixelmill.providers.openai.provider import OpenAIProvider
from tests.reliability.hostile_answers import PNG, PNG_B64, Canned, ScriptedServer, gemini_image, openai_image
from tests.runs import TEST_KEY, cli_process, read_output, write_jsonl

GEMINI_KEY = "AIzaTEST-0b5e2c9d4a7f1e3b6c8d0a2f4e6b"


def openai_provider(server: ScriptedServer) -> OpenAIProvider:
    return OpenAIProvider(ProviderSettings(base_url=server.url + "/v1", api_key=TEST_KEY), env={})


def gemini_provider(server: ScriptedServer) -> GeminiProvider:
    return GeminiProvider(ProviderSettings(base_url=server.url, api_key=GEMINI_KEY), env={})


def check_result(result: ImageResult) -> None:
    """What the engine relies on in a result: typed fields, JSON-safe metadata."""
    assert result.images and all(isinstance(image.data, bytes) for image in result.images)
    assert all(isinstance(image.revised_prompt, str | None) for image in result.images)
    assert isinstance(result.usage, dict | None)
    for value in (result.text, result.finish_reason, result.request_id):
        assert isinstance(value, str | None)
    orjson.dumps(result.extra)


def check_error(exc: BaseException) -> None:
    assert isinstance(exc, ProviderError), f"{type(exc).__name__}: {exc}"
    assert isinstance(exc.code, str | None) and isinstance(exc.request_id, str | None)
    if isinstance(exc, RateLimited):
        assert exc.retry_after is None or (math.isfinite(exc.retry_after) and exc.retry_after >= 0)


async def outcome(provider: Any, model: str, n: int = 1) -> ImageResult | ProviderError:
    spec = provider.spec_for(model)
    request = ImageRequest(task="generate", model=model, prompt="p", params={"n": n} if n > 1 else {}, timeout=10)
    try:
        result: ImageResult = await provider.call(request, spec)
    except BaseException as exc:
        check_error(exc)
        return exc  # type: ignore[return-value]
    finally:
        await provider.aclose()
    check_result(result)
    return result


OPENAI_ODD = {
    "categories-a-number": Canned(400, {"error": {"message": "blocked", "code": "moderation_blocked",
                                                  "moderation_details": {"categories": 5}}}),
    "violations-a-number": Canned(400, {"error": {"message": "x", "type": "image_generation_user_error",
                                                  "moderation_details": 7}}),
    "error-a-string-200": Canned(200, {"error": "boom"}),
    "error-a-list": Canned(500, {"error": [1, 2]}),
    "error-fields-objects": Canned(400, {"error": {"message": {"m": 1}, "code": {"c": 2}, "param": [3]}}),
    "data-a-dict": Canned(200, {"data": {"b64_json": PNG_B64}}),
    "data-a-number": Canned(200, {"data": 3}),
    "item-a-string": Canned(200, {"data": ["x"]}),
    "b64-a-number": Canned(200, {"data": [{"b64_json": 12345}]}),
    "url-a-number": Canned(200, {"data": [{"url": 5}]}),
    "url-not-a-url": Canned(200, {"data": [{"url": "http://[::1"}]}),
    "usage-a-list": Canned(200, openai_image(usage=[1, 2])),
    "meta-odd": Canned(200, openai_image(output_format={"x": 1}, size=[1], created={"a": None})),
    "revised-a-dict": Canned(200, {"data": [{"b64_json": PNG_B64, "revised_prompt": {"a": 1}}]}),
    "body-a-list": Canned(200, [1, 2, 3]),
    "retry-after-garbage": Canned(429, {"error": {"message": "slow"}}, {"Retry-After": "soon-ish"}),
    "retry-after-infinite": Canned(429, {"error": {"message": "slow"}}, {"Retry-After": "1e999"}),
    "retry-after-ms-huge": Canned(429, {"error": {"message": "slow"}}, {"retry-after-ms": "9" * 400}),
}

GEMINI_ODD = {
    "usage-a-number": Canned(200, gemini_image(usageMetadata=5)),
    "finish-message-a-number": Canned(200, {"candidates": [{"finishReason": "OTHER", "finishMessage": 5}]}),
    "finish-reason-a-list": Canned(200, {"candidates": [{"content": {"parts": []}, "finishReason": ["X"]}]}),
    "prompt-feedback-a-number": Canned(200, {"promptFeedback": 5}),
    "block-message-a-dict": Canned(200, {"promptFeedback": {"blockReason": "SAFETY", "blockReasonMessage": {}}}),
    "candidates-a-dict": Canned(200, {"candidates": {"content": {}}}),
    "candidate-a-string": Canned(200, {"candidates": ["x"]}),
    "content-a-list": Canned(200, {"candidates": [{"content": [1]}]}),
    "parts-a-number": Canned(200, {"candidates": [{"content": {"parts": 5}}]}),
    "part-a-number": Canned(200, {"candidates": [{"content": {"parts": [5]}}]}),
    "inline-a-string": Canned(200, {"candidates": [{"content": {"parts": [{"inlineData": "x"}]}}]}),
    "data-a-number": Canned(200, {"candidates": [{"content": {"parts": [
        {"inlineData": {"mimeType": "image/png", "data": 5}}]}}]}),
    "mime-a-dict": Canned(200, {"candidates": [{"content": {"parts": [
        {"inlineData": {"mimeType": {}, "data": PNG_B64}}]}}]}),
    "model-version-a-list": Canned(200, gemini_image(modelVersion=[1], responseId={"a": 1})),
    "details-a-number": Canned(400, {"error": {"message": "bad", "details": 5}}),
    "violations-a-number": Canned(429, {"error": {"message": "slow", "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": 3}]}}),
    "retry-delay-not-a-duration": Canned(429, {"error": {"message": "slow", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": {"seconds": "soon"}}]}}),
    "retry-delay-huge": Canned(429, {"error": {"message": "slow", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "9" * 400 + "s"}]}}),
    "type-a-number": Canned(429, {"error": {"message": "slow", "details": [{"@type": 5, "retryDelay": "1s"}]}}),
    "error-message-a-list": Canned(500, {"error": {"message": ["x"], "status": {"s": 1}}}),
    "body-a-number": Canned(503, 12),
}


@pytest.mark.parametrize("case", sorted(OPENAI_ODD))
async def test_openai_odd_answers_are_taxonomy_errors(server: ScriptedServer, case: str) -> None:
    server.default = OPENAI_ODD[case]
    await outcome(openai_provider(server), "gpt-image-2")


@pytest.mark.parametrize("case", sorted(GEMINI_ODD))
async def test_gemini_odd_answers_are_taxonomy_errors(server: ScriptedServer, case: str) -> None:
    server.default = GEMINI_ODD[case]
    await outcome(gemini_provider(server), "gemini-3.1-flash-image")


def test_odd_answers_fail_their_rows_not_the_run(server: ScriptedServer, tmp_path: Path) -> None:
    """A real `pixelmill generate` process: each odd answer fails its own row; the good rows are done; exit 1."""
    cases = ["categories-a-number", "url-not-a-url", "revised-a-dict", "data-a-dict", "meta-odd"]
    for case in cases:
        server.script[case] = OPENAI_ODD[case]
    rows = [{"id": "good-1", "prompt": "good"}, *({"id": c, "prompt": c} for c in cases), {"id": "good-2",
                                                                                             "prompt": "fine"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    proc = cli_process("generate", src, "-o", tmp_path / "run", "--base-url", server.url + "/v1", "--id-field", "id",
                       "--max-retries", "0", "--quiet")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err.decode()[-2000:]
    assert b"Traceback" not in err
    output = {row["id"]: row for row in read_output(tmp_path / "run")}
    assert list(output) == [row["id"] for row in rows]
    statuses = {key: row["pixelmill"].get("status", "done" if row["images"] else "failed")
                for key, row in output.items()}
    assert {key for key, row in output.items() if row["images"]} == {"good-1", "good-2", "revised-a-dict",
                                                                      "meta-odd"}, statuses
    for case in ("categories-a-number", "url-not-a-url", "data-a-dict"):
        error = output[case]["pixelmill"]["error"]
        assert error["kind"] in ("refused", "transient", "rejected"), error
    assert "revised_prompt" not in output["revised-a-dict"]["pixelmill"]


@pytest.mark.parametrize("family", ["openai", "gemini"])
async def test_surplus_images_are_counted_not_kept(server: ScriptedServer, family: str) -> None:
    """50 images for n=1 (2 for n=2 on OpenAI): the first n are kept, the rest counted in `extra`."""
    if family == "openai":
        server.default = Canned(body={"data": [{"b64_json": PNG_B64}] * 50})
        one = await outcome(openai_provider(server), "gpt-image-2")
        two = await outcome(openai_provider(server), "gpt-image-2", n=2)
        assert isinstance(two, ImageResult) and len(two.images) == 2 and two.extra["surplus_images"] == 48
    else:
        part = {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}
        server.default = Canned(body={"candidates": [{"content": {"parts": [part] * 50}, "finishReason": "STOP"}]})
        one = await outcome(gemini_provider(server), "gemini-3.1-flash-image")
    assert isinstance(one, ImageResult)
    assert [image.data for image in one.images] == [PNG] and one.extra["surplus_images"] == 49


def test_surplus_images_in_a_run(server: ScriptedServer, tmp_path: Path) -> None:
    server.default = Canned(body={"data": [{"b64_json": PNG_B64}] * 50})
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "one"}])
    proc = cli_process("generate", src, "-o", tmp_path / "run", "--base-url", server.url + "/v1", "--quiet")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    [row] = read_output(tmp_path / "run")
    assert len(row["images"]) == 1 and row["pixelmill"]["response"]["surplus_images"] == 49
    assert len(list((tmp_path / "run" / "images").rglob("*.png"))) == 1


# ------------------------------------------------------------------------------- property: random JSON shapes

_KEYS = ["data", "b64_json", "url", "revised_prompt", "usage", "error", "message", "code", "type", "param",
         "moderation_details", "categories", "moderation_stage", "inner_error", "content_filter_results",
         "filtered", "output_format", "candidates", "content", "parts", "inlineData", "mimeType", "text",
         "thought", "finishReason", "finishMessage", "promptFeedback", "blockReason", "blockReasonMessage",
         "usageMetadata", "responseId", "modelVersion", "details", "@type", "retryDelay", "seconds", "nanos",
         "violations", "quotaId", "status", "reason"]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                     st.floats(allow_nan=False, allow_infinity=False),
                     st.text(max_size=20), st.sampled_from([PNG_B64, "image/png", "STOP", "SAFETY", "1.5s",
                                                           "type.googleapis.com/google.rpc.RetryInfo",
                                                           "type.googleapis.com/google.rpc.QuotaFailure"]))
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(_KEYS), inner, max_size=5)), max_leaves=25)
_STATUSES = st.sampled_from([200, 400, 401, 403, 404, 408, 409, 413, 429, 500, 503])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_JSON, status=_STATUSES)
def test_any_json_maps_to_the_taxonomy(body: Any, status: int) -> None:
    raw = orjson.dumps(body)
    headers = CIMultiDictProxy(CIMultiDict({"Retry-After": "3"}))
    gemini = GeminiProvider(ProviderSettings(api_key=GEMINI_KEY), env={})
    gemini_spec = gemini.spec_for("gemini-3.1-flash-image")
    openai = OpenAIProvider(ProviderSettings(base_url="http://127.0.0.1:9/v1", api_key=TEST_KEY), env={})
    spec = openai.spec_for("gpt-image-2")
    check_error(error_from_answer(status, raw, headers, gemini_spec, "m"))
    ctx = ErrorContext(label="openai m", model="m", spec=spec, key_hint="set it")
    check_error(error_from_reply(Reply(status, headers, raw), ctx))
    check_error(error_from_reply(Reply(status, headers, raw), ctx, error_body=body))
    try:
        check_result(parse_answer(raw, "m"))
    except ProviderError as exc:
        check_error(exc)
    request = ImageRequest(task="generate", model="gpt-image-2", prompt="p", timeout=2)

    async def openai_result() -> None:
        try:
            check_result(await openai.read_result(body, request, spec, None, "openai m"))
        except ProviderError as exc:
            check_error(exc)
        finally:
            await openai.aclose()

    asyncio.run(openai_result())
