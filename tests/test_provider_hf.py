"""The Hugging Face providers over real loopback HTTP: the router's hf-inference route (`hf`) and a dedicated
Inference Endpoint (`hf-endpoint`) served by a scripted server; every error, the 503 "model loading" wait, and
the planning of neutral parameters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from pixelmill.errors import (
    AuthError,
    ConfigError,
    ModelUnavailable,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    Rejected,
    TransientError,
)
from pixelmill.models.table import builtin_table
from pixelmill.params import ImageParams
from pixelmill.providers.base import ImageRequest, ProviderSettings
from pixelmill.providers.hf.errors import MAX_LOADING_WAIT
from pixelmill.providers.hf.provider import HfEndpointProvider, HfProvider
from tests.reliability.hostile_servers import LocalServer, png_bytes

KEY = "hf_test-router-0123456789abcdef"
PNG = png_bytes((16, 16))
FLUX = "black-forest-labs/FLUX.1-dev"


class HfServer(LocalServer):
    """Answers by prompt: `script[prompt]` = (status, body, headers); anything else gets a PNG."""

    def __init__(self) -> None:
        super().__init__()
        self.script: dict[str, tuple[int, Any, dict[str, str]]] = {}
        self.seen: list[tuple[str, dict[str, str], Any]] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/hf-inference/models/{owner}/{name}", self.answer)
        app.router.add_post("/endpoint", self.answer)

    async def answer(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append((request.path, dict(request.headers), body))
        status, reply, headers = self.script.get(body["inputs"], (200, PNG, {}))
        if isinstance(reply, bytes):
            return web.Response(status=status, body=reply, headers={"Content-Type": "image/png", **headers})
        return web.json_response(reply, status=status, headers=headers)


@pytest.fixture
async def server() -> AsyncIterator[HfServer]:
    scripted = HfServer()
    await scripted.start()
    yield scripted
    await scripted.stop()


@pytest.fixture
async def hf(server: HfServer) -> AsyncIterator[HfProvider]:
    made = HfProvider(ProviderSettings(base_url=server.url), {"HF_TOKEN": KEY})
    yield made
    await made.aclose()


async def test_hf_inference_route(server: HfServer, hf: HfProvider) -> None:
    spec = hf.spec_for(FLUX)
    assert spec.known and spec.name == f"{FLUX}:hf-inference" and spec.family == "hf"
    params = hf.plan(spec, ImageParams(size="1024x768", steps=28, guidance_scale=3.5, seed=7), "generate").params
    result = await hf.call(ImageRequest("generate", FLUX, "a red bicycle", params, timeout=10.0), spec)
    assert [image.data for image in result.images] == [PNG] and result.images[0].mime == "image/png"
    path, headers, body = server.seen[0]
    assert path == f"/hf-inference/models/{FLUX}"
    assert headers["Authorization"] == f"Bearer {KEY}" and headers["Accept"] == "image/png"
    assert body == {"inputs": "a red bicycle", "parameters": {"width": 1024, "height": 768, "num_inference_steps": 28,
                                                              "guidance_scale": 3.5, "seed": 7}}
    # The router's own name for the same model goes to the same place.
    await hf.call(ImageRequest("generate", f"{FLUX}:hf-inference", "again", {}, timeout=10.0), spec)
    assert server.seen[1][0] == f"/hf-inference/models/{FLUX}"


@pytest.mark.parametrize(("status", "body", "kind", "says"), [
    (401, {"error": f"Invalid credentials in Authorization header ({KEY})"}, AuthError, "HF_TOKEN"),
    (402, {"error": "You have exceeded your monthly included credits for Inference Providers."}, QuotaExhausted,
     "billing"),
    (404, {"error": "Model not found"}, ModelUnavailable, "hf-inference route"),
    (429, {"error": "rate limited"}, RateLimited, "rate limited"),
    (400, {"error": ["width must be a multiple of 8"]}, Rejected, "width must be a multiple of 8"),
    (500, b"<html>oops</html>", TransientError, "worth a retry"),
    (200, {"images": []}, TransientError, "not an image"),
])
async def test_errors(server: HfServer, hf: HfProvider, status: int, body: Any, kind: type[ProviderError],
                      says: str) -> None:
    server.script["boom"] = (status, body, {})
    with pytest.raises(ProviderError) as caught:
        await hf.call(ImageRequest("generate", FLUX, "boom", {}, timeout=10.0), hf.spec_for(FLUX))
    assert type(caught.value) is kind and says in str(caught.value)
    assert KEY not in str(caught.value) and KEY not in repr(vars(caught.value))


async def test_a_loading_model_is_a_bounded_wait(server: HfServer, hf: HfProvider) -> None:
    spec = hf.spec_for(FLUX)
    server.script["cold"] = (503, {"error": f"Model {FLUX} is currently loading", "estimated_time": 20.5}, {})
    server.script["frozen"] = (503, {"error": "Model is currently loading", "estimated_time": 1e9}, {})
    with pytest.raises(RateLimited) as caught:
        await hf.call(ImageRequest("generate", FLUX, "cold", {}, timeout=10.0), spec)
    assert caught.value.retry_after == 20.5 and caught.value.code == "model_loading"
    assert "loading" in str(caught.value)
    with pytest.raises(RateLimited) as capped:
        await hf.call(ImageRequest("generate", FLUX, "frozen", {}, timeout=10.0), spec)
    assert capped.value.retry_after == MAX_LOADING_WAIT
    server.script["down"] = (503, {"error": "Service Unavailable"}, {})
    with pytest.raises(TransientError):
        await hf.call(ImageRequest("generate", FLUX, "down", {}, timeout=10.0), spec)


async def test_dedicated_endpoint_gets_the_same_payload_at_its_url(server: HfServer) -> None:
    endpoint = HfEndpointProvider(ProviderSettings(base_url=f"{server.url}/endpoint"), {})
    try:
        spec = endpoint.spec_for("my-sdxl")
        assert not spec.known
        result = await endpoint.call(ImageRequest("generate", "my-sdxl", "a cat", {"seed": 1}, timeout=10.0), spec)
        assert result.images[0].data == PNG
        path, headers, body = server.seen[0]
        assert path == "/endpoint" and "Authorization" not in headers
        assert body == {"inputs": "a cat", "parameters": {"seed": 1}}
        server.script["cold"] = (503, {"error": "Model is currently loading", "estimated_time": 3}, {})
        with pytest.raises(RateLimited):
            await endpoint.call(ImageRequest("generate", "my-sdxl", "cold", {}, timeout=10.0), spec)
        server.script["gone"] = (404, {"error": "Not Found"}, {})
        with pytest.raises(ModelUnavailable, match="--base-url"):
            await endpoint.call(ImageRequest("generate", "my-sdxl", "gone", {}, timeout=10.0), spec)
    finally:
        await endpoint.aclose()
    assert HfEndpointProvider(ProviderSettings(base_url="https://x.endpoints.huggingface.cloud"), {}
                              ).spec_for(FLUX).known


def test_configuration() -> None:
    with pytest.raises(ConfigError, match="HF_TOKEN"):
        HfProvider(ProviderSettings(), {})
    assert HfProvider(ProviderSettings(), {"DF_API_KEY": KEY}).base_url == "https://router.huggingface.co"
    assert HfProvider(ProviderSettings(base_url="https://router.huggingface.co/hf-inference/"),
                      {"HF_TOKEN": KEY}).base_url == "https://router.huggingface.co"
    with pytest.raises(ConfigError, match="--base-url"):
        HfEndpointProvider(ProviderSettings(), {"HF_TOKEN": KEY})
    hf = HfProvider(ProviderSettings(), {"HF_TOKEN": KEY})
    with pytest.raises(ConfigError, match="--provider fal"):
        hf.spec_for(f"{FLUX}:fal-ai")
    with pytest.raises(ConfigError, match="openai-compatible"):
        hf.spec_for(f"{FLUX}:together")
    assert not hf.spec_for("someone/new-model").known


def test_diffusers_keeps_the_bare_hub_ids() -> None:
    """The table names HF models with their route, so `--provider diffusers --model <hub id>` is unaffected."""
    assert builtin_table().get(FLUX) is None


@pytest.mark.parametrize(("params", "says"), [
    ({"negative_prompt": "blurry"}, "does not take negative_prompt"),
    ({"steps": 500}, "does not take steps=500; allowed: 1 to 100"),
    ({"size": "1000x1000"}, "multiples of 16 (nearest valid size: 992x992)"),
    ({"resolution": "4K"}, "does not take resolution=4K; allowed: 512, 1K, 2K"),
    ({"quality": "high"}, "does not take quality"),
])
def test_impossible_values_are_refused(params: dict[str, Any], says: str) -> None:
    hf = HfProvider(ProviderSettings(), {"HF_TOKEN": KEY})
    with pytest.raises(ConfigError) as caught:
        hf.plan(hf.spec_for(FLUX), ImageParams(**params), "generate")
    assert says in str(caught.value) and FLUX in str(caught.value)


def test_planning() -> None:
    hf = HfProvider(ProviderSettings(), {"HF_TOKEN": KEY})
    spec = hf.spec_for(FLUX)
    made = hf.plan(spec, ImageParams(n=3, aspect_ratio="16:9", output_format="webp"), "generate")
    assert made.calls == [{"width": 1360, "height": 768}] * 3 and made.convert_to == "webp"
    assert any("3 calls" in n for n in made.notices)
    sdxl = hf.spec_for("stabilityai/stable-diffusion-xl-base-1.0")
    assert hf.plan(sdxl, ImageParams(negative_prompt="blurry"), "generate").params == {"negative_prompt": "blurry"}
    with pytest.raises(ConfigError, match="generates only"):
        hf.plan(spec, ImageParams(), "edit")
