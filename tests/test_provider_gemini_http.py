"""The Gemini provider over real HTTP against the emulator: generation per model, edits, multi-turn chats with
thought signatures, thought drafts, refusals, error mapping, transport faults, base URLs and key hygiene."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pybase64
import pytest
from PIL import Image

from pixelmill.errors import (
    AuthError,
    InputError,
    ModelUnavailable,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    Refused,
    Rejected,
    TransientError,
    UnknownOutcome,
)
from pixelmill.params import ImageParams
from pixelmill.providers.base import ChatTurn, ImageRequest, ImageResult, InputImage, ProviderSettings, Task
from pixelmill.providers.gemini.provider import GeminiProvider, request_body
from pixelmill.testing import Emulator, EmulatorConfig

KEY = "sk-test-gemini-http-5f2c9a7d"
PRO = "gemini-3-pro-image"
FLASH = "gemini-3.1-flash-image"
LITE = "gemini-3.1-flash-lite-image"
OLD = "gemini-2.5-flash-image"


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(api_keys=frozenset({KEY}))) as emulator:
        yield emulator


@pytest.fixture
async def gemini(emu: Emulator) -> AsyncIterator[GeminiProvider]:
    provider = GeminiProvider(ProviderSettings(base_url=emu.gemini_base_url), {"GEMINI_API_KEY": KEY})
    yield provider
    await provider.aclose()


def picture(width: int, height: int, colour: str = "red", fmt: str = "PNG") -> InputImage:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, fmt)
    return InputImage(data=buf.getvalue(), mime=f"image/{fmt.lower()}", name=f"{colour}.{fmt.lower()}",
                      width=width, height=height)


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


async def call(provider: GeminiProvider, model: str, prompt: str = "a lighthouse at dusk", *,
               images: list[InputImage] | None = None, history: list[ChatTurn] | None = None,
               time_limit: float = 30.0, **params: Any) -> ImageResult:
    spec = provider.spec_for(model)
    task: Task = "edit" if images or history else "generate"
    plan = provider.plan(spec, ImageParams(**params), task)
    request = ImageRequest(task=task, model=model, prompt=prompt, params=plan.params, images=images or [],
                           history=history or [], timeout=time_limit)
    return await provider.call(request, spec)


async def failure(provider: GeminiProvider, model: str = PRO, prompt: str = "a cat", **kw: Any) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await call(provider, model, prompt, **kw)
    assert KEY not in str(caught.value)
    return caught.value


# ------------------------------------------------------------------------------------------ generation


@pytest.mark.parametrize(
    ("model", "params"),
    [
        (PRO, {"aspect_ratio": "16:9", "resolution": "2K"}),
        (PRO, {"aspect_ratio": "21:9"}),
        (PRO, {"size": "1024x1024", "resolution": "4K"}),
        (FLASH, {"aspect_ratio": "1:4", "resolution": "512"}),
        (FLASH, {"aspect_ratio": "8:1", "resolution": "1K", "seed": 11, "extra": {"thinking_level": "MINIMAL"}}),
        (LITE, {"size": "1248x832"}),
        (OLD, {"aspect_ratio": "9:16"}),
    ],
)
async def test_generate_honours_ratio_and_size_per_model(
    emu: Emulator, gemini: GeminiProvider, model: str, params: dict[str, Any]
) -> None:
    emu.configure(serve_retired=True)  # gemini-2.5-flash-image is past its shutdown date
    plan = gemini.plan(gemini.spec_for(model), ImageParams(**params), "generate")
    result = await call(gemini, model, **params)
    [image] = result.images
    assert image.mime == "image/png"
    assert size_of(image.data) == plan.expected_size
    assert result.finish_reason == "STOP"
    assert result.text == "Here is the image you asked for."
    assert result.usage and result.usage["candidatesTokenCount"] > 0
    assert result.request_id and result.model_content["role"] == "model"
    [record] = emu.log
    assert (record.status, record.model, record.endpoint) == (200, model, "generateContent")
    assert record.path == f"/v1beta/models/{model}:generateContent"


async def test_default_generation_is_square(gemini: GeminiProvider) -> None:
    result = await call(gemini, PRO)
    assert size_of(result.images[0].data) == (1024, 1024)


async def test_n_calls_are_single_image_requests(emu: Emulator, gemini: GeminiProvider) -> None:
    spec = gemini.spec_for(FLASH)
    plan = gemini.plan(spec, ImageParams(n=3, aspect_ratio="3:2"), "generate")
    for params in plan.calls:
        request = ImageRequest(task="generate", model=FLASH, prompt="a kite", params=params)
        assert len((await gemini.call(request, spec)).images) == 1
    assert emu.count(status=200) == 3


# ------------------------------------------------------------------------------------------ editing


async def test_edit_with_one_image_follows_its_shape(emu: Emulator, gemini: GeminiProvider) -> None:
    result = await call(gemini, PRO, "make it blue", images=[picture(160, 90)])
    assert size_of(result.images[0].data) == (1376, 768)  # no ratio asked: the emulator matches the input
    assert emu.log[0].input_images == 1


@pytest.mark.parametrize(
    ("shapes", "expected"),
    [([(160, 90), (90, 160), (100, 100)], (1376, 768)), ([(90, 160), (160, 90), (100, 100)], (768, 1376))],
)
async def test_edit_with_three_images_keeps_their_order(
    emu: Emulator, gemini: GeminiProvider, shapes: list[tuple[int, int]], expected: tuple[int, int]
) -> None:
    images = [picture(w, h, colour) for (w, h), colour in zip(shapes, ("red", "green", "blue"), strict=True)]
    result = await call(gemini, FLASH, "put them together", images=images)
    # The emulator sizes an edit after the turn's first image: the first one sent is the first one given.
    assert size_of(result.images[0].data) == expected
    assert emu.log[0].input_images == 3


async def test_jpeg_and_webp_inputs(gemini: GeminiProvider) -> None:
    result = await call(gemini, PRO, "merge", images=[picture(64, 64, fmt="JPEG"), picture(64, 64, fmt="WEBP")])
    assert len(result.images) == 1


async def test_more_images_than_the_model_takes_fails_the_row_before_sending(
    emu: Emulator, gemini: GeminiProvider
) -> None:
    emu.configure(serve_retired=True)
    with pytest.raises(InputError) as caught:
        await call(gemini, OLD, "collage", images=[picture(32, 32)] * 4)
    assert caught.value.field == "images" and "at most 3" in str(caught.value)
    assert emu.count() == 0


# ------------------------------------------------------------------------------------------ conversations


async def test_second_turn_echoes_the_first_model_turn_with_its_signatures(
    emu: Emulator, gemini: GeminiProvider
) -> None:
    assert gemini.spec_for(FLASH).strict_thought_signatures
    first_prompt = "a red bicycle [[fault:thoughts]]"
    first = await call(gemini, FLASH, first_prompt, images=[picture(100, 100)])
    parts = first.model_content["parts"]
    assert any(p.get("thought") for p in parts)
    assert all("thoughtSignature" in p for p in parts if not p.get("thought"))

    history = [ChatTurn(prompt=first_prompt, images=[picture(100, 100)], model_content=first.model_content)]
    second = await call(gemini, FLASH, "now paint it green", history=history)
    assert len(second.images) == 1
    assert emu.log[-1].status == 200  # the strict model accepted the echoed signatures
    sent = request_body(ImageRequest(task="edit", model=FLASH, prompt="now paint it green", history=history))
    assert sent["contents"][1] is first.model_content  # the raw turn, not a rebuilt one

    third = await call(gemini, FLASH, "add a bell", history=[
        *history, ChatTurn(prompt="now paint it green", images=[], model_content=second.model_content)])
    assert len(third.images) == 1


async def test_a_changed_signature_is_rejected_by_a_strict_model(gemini: GeminiProvider) -> None:
    first = await call(gemini, FLASH, "a red bicycle")
    tampered = {**first.model_content, "parts": [
        {**p, "thoughtSignature": "AAAA" + p["thoughtSignature"][4:]} if "thoughtSignature" in p else p
        for p in first.model_content["parts"]
    ]}
    error = await failure(gemini, FLASH, "green now",
                          history=[ChatTurn(prompt="a red bicycle", images=[], model_content=tampered)])
    assert type(error) is Rejected and "thought signature" in str(error)


# ------------------------------------------------------------------------------------------ thoughts


async def test_thought_drafts_are_not_the_answer(emu: Emulator, gemini: GeminiProvider) -> None:
    emu.configure(faults={"thoughts": 1.0}, thought_drafts=2)
    result = await call(gemini, PRO, "a fox in snow", aspect_ratio="1:1")
    drafts = [pybase64.b64decode(p["inlineData"]["data"]) for p in result.model_content["parts"]
              if p.get("thought") and "inlineData" in p]
    assert len(drafts) == 2
    [final] = result.images
    assert final.data not in drafts
    assert result.extra["draft_images_ignored"] == 2
    assert "Composing" not in (result.text or "")  # thought text is not the model's answer
    assert emu.log[0].thoughts == 3


# ------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("fault", "reason", "words"),
    [
        ("prompt_blocked", "SAFETY", "blocked the prompt"),
        ("image_safety", "IMAGE_SAFETY", "may violate our policies"),
        ("no_image", "NO_IMAGE", "ask for the image explicitly"),
        ("text_only", "text_only", "I can't create that image"),
    ],
)
async def test_refusals_carry_their_reason(gemini: GeminiProvider, fault: str, reason: str, words: str) -> None:
    error = await failure(gemini, PRO, f"something [[fault:{fault}]]")
    assert isinstance(error, Refused)
    assert error.reason == reason and error.http_status == 200
    assert words in str(error)


async def test_moderation_fault_is_one_of_the_safety_refusals(gemini: GeminiProvider) -> None:
    error = await failure(gemini, PRO, "something [[fault:moderation]]")
    assert isinstance(error, Refused) and error.reason in ("SAFETY", "IMAGE_SAFETY")


# ------------------------------------------------------------------------------------------ errors


async def test_rate_limit_gives_retry_info_delay(emu: Emulator, gemini: GeminiProvider) -> None:
    emu.configure(retry_after=1.5)
    error = await failure(gemini, PRO, "x [[fault:rate_limit]]")
    assert isinstance(error, RateLimited)
    assert error.retry_after == pytest.approx(1.5) and error.http_status == 429
    bare = await failure(gemini, PRO, "x [[fault:rate_limit_no_header]]")
    assert isinstance(bare, RateLimited) and bare.retry_after is None


async def test_configured_rate_limit_is_rate_limited(emu: Emulator, gemini: GeminiProvider) -> None:
    emu.configure(rpm=1)
    await call(gemini, PRO)
    error = await failure(gemini, PRO)
    assert isinstance(error, RateLimited) and error.retry_after is not None and error.retry_after > 0


async def test_daily_quota_aborts(gemini: GeminiProvider) -> None:
    error = await failure(gemini, PRO, "x [[fault:quota]]")
    assert isinstance(error, QuotaExhausted)


@pytest.mark.parametrize(("fault", "status"),
                         [("server_error", 500), ("bad_gateway", 502), ("unavailable", 503),
                          ("gateway_timeout", 504)])
async def test_server_errors_are_transient(gemini: GeminiProvider, fault: str, status: int) -> None:
    error = await failure(gemini, PRO, f"x [[fault:{fault}]]")
    assert type(error) is TransientError and error.http_status == status and not error.maybe_billed


@pytest.mark.parametrize(("fault", "billed"),
                         [("truncated", True), ("malformed", True), ("invalid_base64", True)])
async def test_broken_answers_are_transient(gemini: GeminiProvider, fault: str, billed: bool) -> None:
    error = await failure(gemini, PRO, f"x [[fault:{fault}]]")
    assert type(error) is TransientError and error.maybe_billed is billed


async def test_a_reset_after_sending_is_an_unknown_outcome(gemini: GeminiProvider) -> None:
    error = await failure(gemini, PRO, "x [[fault:reset]]")
    assert type(error) is UnknownOutcome and error.maybe_billed and error.kind == "unknown_outcome"


async def test_slow_answers_time_out_as_unknown_outcomes(emu: Emulator, gemini: GeminiProvider) -> None:
    error = await failure(gemini, PRO, "x [[latency:2]]", time_limit=0.3)
    assert type(error) is UnknownOutcome and error.maybe_billed and "0.3" in str(error)


async def test_retired_model_is_unavailable_with_its_replacement(gemini: GeminiProvider) -> None:
    error = await failure(gemini, OLD)
    assert isinstance(error, ModelUnavailable) and error.http_status == 404
    assert "shut down on 2026-10-02" in str(error) and "gemini-3.1-flash-image" in str(error)


async def test_unknown_model_is_unavailable(gemini: GeminiProvider) -> None:
    error = await failure(gemini, "gemini-9-imaginary-image")
    assert isinstance(error, ModelUnavailable) and "pixelmill models" in str(error)


async def test_wrong_key_aborts_and_is_never_echoed(emu: Emulator) -> None:
    wrong = "sk-test-wrong-key-0000000000"
    provider = GeminiProvider(ProviderSettings(base_url=emu.gemini_base_url), {"GOOGLE_API_KEY": wrong})
    try:
        with pytest.raises(AuthError) as caught:
            await call(provider, PRO)
    finally:
        await provider.aclose()
    assert wrong not in str(caught.value) and "GEMINI_API_KEY" in str(caught.value)
    assert emu.log[0].auth == "invalid"


async def test_auth_fault_aborts(gemini: GeminiProvider) -> None:
    assert isinstance(await failure(gemini, PRO, "x [[fault:auth]]"), AuthError)


async def test_bad_request_is_rejected_for_the_row(gemini: GeminiProvider) -> None:
    spec = gemini.spec_for(PRO)
    request = ImageRequest(task="generate", model=PRO, prompt="x",
                           params={"imageConfig": {"aspectRatio": "1:8"}})  # skipped planning: the server says no
    with pytest.raises(Rejected) as caught:
        await gemini.call(request, spec)
    assert caught.value.http_status == 400 and "1:8" in str(caught.value)


# ------------------------------------------------------------------------------------------ base URL and key


@pytest.mark.parametrize("suffix", ["", "/", "/v1beta", "/v1beta/"])
async def test_base_url_with_or_without_v1beta(emu: Emulator, suffix: str) -> None:
    provider = GeminiProvider(ProviderSettings(), {"GEMINI_API_KEY": KEY, "DF_BASE_URL": emu.url + suffix})
    try:
        result = await call(provider, PRO)
    finally:
        await provider.aclose()
    assert len(result.images) == 1
    assert emu.log[0].path == f"/v1beta/models/{PRO}:generateContent"


async def test_key_travels_in_the_header_only(emu: Emulator, gemini: GeminiProvider) -> None:
    await call(gemini, PRO)
    [record] = emu.log
    assert record.auth == "valid"
    assert KEY not in record.path and "key=" not in record.path
    assert "x-goog-api-key" not in {k.lower() for k in record.headers}  # the log strips credentials
