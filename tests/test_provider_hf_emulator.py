"""The Hugging Face providers against the emulator's HF routes (pixelmill.testing), over real loopback HTTP: the
router's hf-inference route and a dedicated endpoint, a cold start (503 "currently loading" with
`estimated_time`) waited out and then served, errors, and the key kept out of messages."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from pixelmill.errors import AuthError, RateLimited, TransientError
from pixelmill.params import ImageParams
from pixelmill.providers.base import ImageRequest, ProviderSettings
from pixelmill.providers.hf.provider import HfEndpointProvider, HfProvider
from pixelmill.testing import Emulator

KEY = "hf_emulated-0123456789abcdef"
FLUX = "black-forest-labs/FLUX.1-schnell"


@pytest.fixture
async def hf(emulator: Emulator) -> AsyncIterator[HfProvider]:
    made = HfProvider(ProviderSettings(base_url=emulator.url), {"HF_TOKEN": KEY})
    yield made
    await made.aclose()


async def test_generate_through_the_router(emulator: Emulator, hf: HfProvider) -> None:
    spec = hf.spec_for(FLUX)
    params = hf.plan(spec, ImageParams(size="768x512", steps=4, seed=3), "generate").params
    result = await hf.call(ImageRequest("generate", FLUX, "a red bicycle", params, timeout=10.0), spec)
    assert result.images[0].mime == "image/png" and result.extra["emulated"]
    assert Image.open(io.BytesIO(result.images[0].data)).size == (768, 512)


async def test_a_cold_model_is_waited_for_then_served(emulator: Emulator, hf: HfProvider) -> None:
    emulator.configure(hf_cold_start=1.0)
    spec = hf.spec_for(FLUX)
    request = ImageRequest("generate", FLUX, "a cat", {}, timeout=10.0)
    with pytest.raises(RateLimited) as caught:
        await hf.call(request, spec)
    assert caught.value.code == "model_loading" and caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 1.0
    await asyncio.sleep(caught.value.retry_after + 0.2)  # what the engine's retry policy waits
    assert (await hf.call(request, spec)).images


async def test_errors(emulator: Emulator, hf: HfProvider) -> None:
    spec = hf.spec_for(FLUX)
    for prompt, kind in (("x [[fault:auth]]", AuthError), ("x [[fault:server_error]]", TransientError)):
        with pytest.raises(kind) as caught:
            await hf.call(ImageRequest("generate", FLUX, prompt, {}, timeout=10.0), spec)
        assert KEY not in str(caught.value)


async def test_dedicated_endpoint(emulator: Emulator) -> None:
    endpoint = HfEndpointProvider(ProviderSettings(base_url=emulator.hf_endpoint_url("my-flux")), {"HF_TOKEN": KEY})
    try:
        spec = endpoint.spec_for(FLUX)
        params = endpoint.plan(spec, ImageParams(aspect_ratio="16:9", resolution="512"), "generate").params
        result = await endpoint.call(ImageRequest("generate", FLUX, "a lighthouse", params, timeout=10.0), spec)
        assert result.images and params == {"width": 688, "height": 384}
    finally:
        await endpoint.aclose()
