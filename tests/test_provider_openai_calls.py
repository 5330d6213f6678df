"""OpenAI, Azure and OpenAI-compatible providers against the emulator, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from pixelmill.models.table import FreeSize, ModelSpec, ModelTable, builtin_table
from pixelmill.params import ImageParams
from pixelmill.providers.base import ImageRequest, ImageResult, InputImage, Provider, ProviderSettings, Task
from pixelmill.providers.openai.provider import AzureProvider, OpenAICompatibleProvider, OpenAIProvider
from pixelmill.testing import Emulator, EmulatorConfig

KEY = "sk-test-openai-calls-0123456789"
AZURE_KEY = "azure-test-key-0123456789"


def png(width: int = 64, height: int = 64, *, alpha: bool = False, name: str = "in.png") -> InputImage:
    buf = io.BytesIO()
    mode, colour = ("RGBA", (10, 200, 30, 0)) if alpha else ("RGB", (10, 200, 30))
    Image.new(mode, (width, height), colour).save(buf, "PNG")  # type: ignore[arg-type]
    return InputImage(buf.getvalue(), "image/png", name, width, height)


def picture(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    # Through EmulatorConfig: keyword changes to Emulator() skip validation of a set of keys.
    async with Emulator(EmulatorConfig(serve_retired=True, api_keys=frozenset({KEY, AZURE_KEY}))) as emulator:
        yield emulator


@pytest.fixture
async def openai(emu: Emulator) -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider(ProviderSettings(base_url=emu.url), {"OPENAI_API_KEY": KEY})
    yield provider
    await provider.aclose()


async def send(
    provider: Provider, model: str, task: Task = "generate", prompt: str = "a red lighthouse", *,
    images: list[InputImage] | None = None, mask: InputImage | None = None, **params: Any,
) -> tuple[ImageResult, list[str]]:
    """Plan like the engine does, send every call of the plan, and return the last result and the notices."""
    spec = provider.spec_for(model)
    plan = provider.plan(spec, ImageParams(**params), task)
    result = None
    for call in plan.calls:
        request = ImageRequest(task, model, prompt, dict(call), images=images or [], mask=mask, timeout=20)
        result = await provider.call(request, spec)
    assert result is not None
    return result, plan.notices


# ---------------------------------------------------------------- generations


async def test_gpt_image_2_exact_size(openai: OpenAIProvider, emu: Emulator) -> None:
    result, notices = await send(openai, "gpt-image-2", size="1536x864", n=2, output_format="webp", quality="low")
    assert notices == []
    assert len(result.images) == 2
    for image in result.images:
        assert image.mime == "image/webp"
        assert (picture(image.data).format, picture(image.data).size) == ("WEBP", (1536, 864))
    assert result.extra["size"] == "1536x864" and result.extra["output_format"] == "webp"
    assert result.extra["quality"] == "low"
    assert result.usage is not None and result.usage["output_tokens"] > 0
    record = emu.log[-1]
    assert (record.path, record.model, record.size, record.n, record.status) == (
        "/v1/images/generations", "gpt-image-2", "1536x864", 2, 200,
    )
    assert result.request_id == record.id == result.extra["request_id"]


async def test_gpt_image_15_nearest_size_with_notice(openai: OpenAIProvider, emu: Emulator) -> None:
    result, notices = await send(openai, "gpt-image-1.5", size="1600x900")
    assert len(notices) == 1 and "sending 1536x1024 for 1600x900" in notices[0]
    assert picture(result.images[0].data).size == (1536, 1024)
    assert emu.log[-1].size == "1536x1024"


async def test_dall_e_3_b64_mapped_parameters_and_revised_prompt(openai: OpenAIProvider, emu: Emulator) -> None:
    result, _ = await send(openai, "dall-e-3", quality="high", style="natural", aspect_ratio="16:9")
    records = emu.records(endpoint="generations")
    assert [(r.n, r.quality, r.size) for r in records] == [(1, "hd", "1792x1024")]  # the emulator logs the default
    assert len(result.images) == 1
    assert result.images[0].mime == "image/png"
    assert picture(result.images[0].data).size == (1792, 1024)
    assert result.images[0].revised_prompt and "lighthouse" in result.images[0].revised_prompt
    assert result.extra["revised_prompt"] == result.images[0].revised_prompt


async def test_dall_e_3_url_answer_is_downloaded(openai: OpenAIProvider, emu: Emulator) -> None:
    result, _ = await send(openai, "dall-e-3", extra={"response_format": "url"})
    assert result.images[0].mime == "image/png"
    assert picture(result.images[0].data).size == (1024, 1024)
    assert [r.endpoint for r in emu.log] == ["generations", "files"]


@pytest.mark.parametrize("base", ["url", "url/", "openai_base_url", "openai_base_url/"])
async def test_base_url_with_or_without_v1(emu: Emulator, base: str) -> None:
    url = getattr(emu, base.rstrip("/")) + ("/" if base.endswith("/") else "")
    provider = OpenAIProvider(ProviderSettings(), {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": url})
    try:
        result, _ = await send(provider, "gpt-image-1-mini", quality="low")
    finally:
        await provider.aclose()
    assert len(result.images) == 1
    assert emu.log[-1].path == "/v1/images/generations"


# ---------------------------------------------------------------- edits and variations


async def test_edit_one_image(openai: OpenAIProvider, emu: Emulator) -> None:
    result, _ = await send(openai, "gpt-image-1.5", "edit", "make it night", images=[png(96, 64)],
                           input_fidelity="high", size="1536x1024", output_format="jpeg", compression=60)
    assert picture(result.images[0].data).format == "JPEG"
    record = emu.log[-1]
    assert (record.endpoint, record.input_images, record.mask, record.status) == ("edits", 1, False, 200)
    assert record.content_type == "multipart/form-data"
    assert result.usage is not None and result.usage["input_tokens_details"]["image_tokens"] > 4096


async def test_edit_three_images_and_a_mask(openai: OpenAIProvider, emu: Emulator) -> None:
    images = [png(64, 64, name=f"/home/user/photos/p{i}.png") for i in range(3)]
    result, _ = await send(openai, "gpt-image-2", "edit", "combine them", images=images,
                           mask=png(64, 64, alpha=True, name="mask.png"), size="1024x1024")
    assert len(result.images) == 1
    record = emu.log[-1]
    assert (record.input_images, record.mask, record.size) == (3, True, "1024x1024")


async def test_gpt_image_2_exact_size_on_edits(openai: OpenAIProvider, emu: Emulator) -> None:
    result, _ = await send(openai, "gpt-image-2", "edit", "wider", images=[png()], size="1280x720")
    assert picture(result.images[0].data).size == (1280, 720)


async def test_dall_e_2_edit_and_variation(openai: OpenAIProvider, emu: Emulator) -> None:
    result, _ = await send(openai, "dall-e-2", "edit", "add a boat", images=[png(64, 64)],
                           mask=png(64, 64, alpha=True), size="256x256")
    assert picture(result.images[0].data).size == (256, 256)
    result, _ = await send(openai, "dall-e-2", "variation", "", images=[png(64, 64)], n=2, size="512x512")
    assert len(result.images) == 2
    assert all(picture(image.data).size == (512, 512) for image in result.images)
    record = emu.log[-1]
    assert (record.endpoint, record.n, record.status) == ("variations", 2, 200)


# ---------------------------------------------------------------- Azure


async def test_azure_deployment_url(emu: Emulator) -> None:
    env = {"AZURE_OPENAI_API_KEY": AZURE_KEY, "AZURE_OPENAI_ENDPOINT": emu.azure_endpoint}
    provider = AzureProvider(ProviderSettings(), env)
    try:
        result, notices = await send(provider, "gpt-image-1.5", output_format="webp")
        edited, _ = await send(provider, "gpt-image-1.5", "edit", "night", images=[png(), png()])
    finally:
        await provider.aclose()
    assert "converting to webp" in notices[0]
    assert result.images[0].mime == "image/png"  # asked as png; the store converts
    assert len(edited.images) == 1
    first, second = emu.log
    assert first.path == "/openai/deployments/gpt-image-1.5/images/generations"
    assert (first.family, first.deployment, first.api_version, first.auth) == (
        "azure", "gpt-image-1.5", "2025-04-01-preview", "valid",
    )
    assert second.path == "/openai/deployments/gpt-image-1.5/images/edits" and second.input_images == 2


async def test_azure_v1_api(emu: Emulator) -> None:
    env = {"AZURE_OPENAI_API_KEY": AZURE_KEY, "AZURE_OPENAI_ENDPOINT": emu.azure_endpoint + "/openai/v1/"}
    provider = AzureProvider(ProviderSettings(), env)
    try:
        await send(provider, "gpt-image-1.5")
    finally:
        await provider.aclose()
    record = emu.log[-1]
    assert record.path == "/openai/v1/images/generations"
    assert (record.deployment, record.api_version, record.status, record.auth) == (
        "gpt-image-1.5", None, 200, "valid",
    )


async def test_azure_custom_deployment_name(emu: Emulator) -> None:
    emu.configure(deployments={"prod-images": "gpt-image-1"})
    provider = AzureProvider(ProviderSettings(base_url=emu.azure_endpoint, api_key=AZURE_KEY), {})
    try:
        result, _ = await send(provider, "prod-images", size="1024x1536")
    finally:
        await provider.aclose()
    assert picture(result.images[0].data).size == (1024, 1536)
    assert emu.log[-1].path == "/openai/deployments/prod-images/images/generations"


# ---------------------------------------------------------------- OpenAI-compatible


def gateway_table() -> ModelTable:
    """The builtin table plus a model that pixelmill's own table does not know, served by the 'gateway'."""
    base = builtin_table()
    custom = ModelSpec(
        name="flux-gateway", family="openai", tasks=("generate", "edit"), size_rule="free",
        free_size=FreeSize(multiple=1, min_ratio=0.1, max_ratio=10, max_pixels=4096 * 4096, min_pixels=1),
        n_max=4, qualities=("low", "medium", "high", "auto"), output_formats=("png", "jpeg", "webp"),
        backgrounds=("transparent", "opaque", "auto"), max_input_images=4,
    )
    return ModelTable({**base.specs, "flux-gateway": custom}, base.presets)


async def test_openai_compatible_unknown_model_and_param_passthrough() -> None:
    async with Emulator(table=gateway_table()) as gateway:
        provider = OpenAICompatibleProvider(ProviderSettings(base_url=gateway.url), {"DF_API_KEY": KEY})
        try:
            spec = provider.spec_for("flux-gateway")
            assert spec.known is False
            result, notices = await send(provider, "flux-gateway", size="1000x700", quality="medium",
                                         extra={"user": "dataset-42"})
        finally:
            await provider.aclose()
        assert notices == []
        assert picture(result.images[0].data).size == (1000, 700)
        record = gateway.log[-1]
        assert (record.model, record.size, record.quality, record.auth) == ("flux-gateway", "1000x700", "medium",
                                                                              "valid")


async def test_openai_compatible_sends_unknown_parameters_unchecked() -> None:
    """Parameters the OpenAI wire does not know reach the server, which decides (here it refuses `seed`)."""
    from pixelmill.errors import Rejected

    async with Emulator(table=gateway_table()) as gateway:
        provider = OpenAICompatibleProvider(ProviderSettings(base_url=gateway.openai_base_url, api_key=KEY), {})
        try:
            with pytest.raises(Rejected, match="seed") as caught:
                await send(provider, "flux-gateway", seed=7)
        finally:
            await provider.aclose()
    assert caught.value.http_status == 400 and caught.value.code == "unknown_parameter"


# ---------------------------------------------------------------- one session, many in flight


async def test_one_session_carries_many_requests_in_flight(openai: OpenAIProvider, emu: Emulator) -> None:
    emu.configure(latency=0.3)
    spec = openai.spec_for("gpt-image-1-mini")
    request = ImageRequest("generate", "gpt-image-1-mini", "p", {"quality": "low"}, timeout=20)
    started = time.monotonic()
    results = await asyncio.gather(*(openai.call(request, spec) for _ in range(64)))
    elapsed = time.monotonic() - started
    assert len(results) == 64 and all(len(r.images) == 1 for r in results)
    assert emu.max_in_flight == 64
    assert elapsed < 2.0  # 64 x 0.3 s one after another would be 19 s
    session = openai.http.session()
    assert session.connector is not None and session.connector.limit >= 1024


async def test_compatible_servers_answering_relative_or_data_urls() -> None:
    """Some OpenAI-compatible servers answer `url` with a path on themselves, or with a data URL."""
    import pybase64
    from aiohttp import web

    image = png(16, 16).data

    async def generations(request: web.Request) -> web.Response:
        inline = "data:image/png;base64," + pybase64.b64encode(image).decode()
        return web.json_response({"created": 1, "data": [{"url": "/outputs/a.png"}, {"url": inline}]})

    async def output(request: web.Request) -> web.Response:
        return web.Response(body=image, content_type="image/png")

    app = web.Application()
    app.router.add_post("/api/v1/images/generations", generations)
    app.router.add_get("/outputs/a.png", output)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    provider = OpenAICompatibleProvider(ProviderSettings(base_url=f"http://127.0.0.1:{port}/api/v1"), {})
    try:
        result, _ = await send(provider, "local-sdxl", n=2)
    finally:
        await provider.aclose()
        await runner.cleanup()
    assert [(i.data, i.mime) for i in result.images] == [(image, "image/png"), (image, "image/png")]
