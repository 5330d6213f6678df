"""What the OpenAI-family providers put on the wire, checked against OpenAI's official schemas
(`../shared/reference/openai-images.openapi.yaml`; that check is skipped when the file is absent).

A small loopback server records each request exactly as it arrived (the emulator validates requests but does
not keep their bodies) and answers with one PNG."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pybase64
import pytest
from aiohttp import web
from PIL import Image

from pixelmill.params import ImageParams
from pixelmill.providers.base import ImageRequest, InputImage, ProviderSettings, Task
from pixelmill.providers.openai.provider import AzureProvider, OpenAIProvider

KEY = "sk-test-schema-0123456789abcdef"
SPEC_FILE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "openai-images.openapi.yaml"
# Multipart fields arrive as text; the schema types them.
INTEGER_FIELDS = ("n", "output_compression", "partial_images")
BOOLEAN_FIELDS = ("stream",)


def png_bytes(width: int = 32, height: int = 32, alpha: bool = False) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA" if alpha else "RGB", (width, height)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Captured:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    content_type: str
    body: dict[str, Any]  # JSON, or the multipart form turned into the schema's dict
    parts: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # (name, filename, type)


@pytest.fixture
async def capture() -> AsyncIterator[tuple[str, list[Captured]]]:
    seen: list[Captured] = []
    answer = orjson.dumps({"created": 1, "data": [{"b64_json": pybase64.b64encode(png_bytes()).decode()}]})

    async def handler(request: web.Request) -> web.Response:
        parts: list[tuple[str, str | None, str | None]] = []
        if request.content_type == "multipart/form-data":
            body: dict[str, Any] = {}
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                name = part.name or ""
                parts.append((name, part.filename, part.headers.get("Content-Type")))
                if part.filename is not None:
                    await part.read()  # type: ignore[union-attr]
                    if name == "image[]":
                        body.setdefault("image", []).append("<binary>")
                    else:
                        body[name] = "<binary>"
                    continue
                text = await part.text()  # type: ignore[union-attr]
                body[name] = int(text) if name in INTEGER_FIELDS else (
                    text == "true" if name in BOOLEAN_FIELDS else text)
        else:
            body = orjson.loads(await request.read())
        seen.append(Captured(request.path, dict(request.query), dict(request.headers), request.content_type, body,
                             parts))
        return web.Response(body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    if not SPEC_FILE.exists():
        pytest.skip(f"the official spec is not at {SPEC_FILE}")
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))["components"]  # type: ignore[no-any-return]


def check(schemas: dict[str, Any], name: str, body: dict[str, Any]) -> None:
    """Valid against the schema, and every field one the schema defines (it allows others silently)."""
    from jsonschema import Draft202012Validator

    Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": schemas}).validate(body)
    unknown = set(body) - set(schemas["schemas"][name]["properties"])
    assert not unknown, f"fields not in {name}: {unknown}"


async def send(provider: OpenAIProvider, model: str, task: Task = "generate", *, images: list[InputImage] | None = None,
               mask: InputImage | None = None, **params: Any) -> None:
    spec = provider.spec_for(model)
    plan = provider.plan(spec, ImageParams(**params), task)
    for call in plan.calls:
        await provider.call(ImageRequest(task, model, "a lighthouse at dusk" if task != "variation" else "",
                                         call, images=images or [], mask=mask, timeout=10), spec)


@pytest.fixture
async def openai(capture: tuple[str, list[Captured]]) -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider(ProviderSettings(base_url=capture[0]), {"OPENAI_API_KEY": KEY})
    yield provider
    await provider.aclose()


def test_the_schema_check_can_fail(schemas: dict[str, Any]) -> None:
    from jsonschema import ValidationError

    with pytest.raises(ValidationError):
        check(schemas, "CreateImageRequest", {"prompt": "x", "quality": "ultra"})
    with pytest.raises(AssertionError, match="seed"):
        check(schemas, "CreateImageRequest", {"prompt": "x", "seed": 1})


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("gpt-image-2", {"size": "1536x864", "quality": "high", "n": 3, "background": "transparent",
                         "output_format": "webp", "compression": 80, "moderation": "low"}),
        ("gpt-image-1.5", {"aspect_ratio": "16:9", "quality": "low", "output_format": "jpeg"}),
        ("gpt-image-1-mini", {}),
        ("dall-e-3", {"quality": "high", "style": "natural", "aspect_ratio": "9:16"}),
        ("dall-e-2", {"resolution": "512", "n": 4, "extra": {"user": "u-1"}}),
    ],
)
async def test_generation_bodies_match_the_spec(
    openai: OpenAIProvider, capture: tuple[str, list[Captured]], schemas: dict[str, Any], model: str,
    params: dict[str, Any],
) -> None:
    await send(openai, model, **params)
    for seen in capture[1]:
        assert seen.path == "/v1/images/generations" and seen.content_type == "application/json"
        assert seen.body["model"] == model
        check(schemas, "CreateImageRequest", seen.body)
    assert capture[1][0].headers["Authorization"] == f"Bearer {KEY}"
    assert capture[1][0].headers["User-Agent"].startswith("pixelmill/")


async def test_multipart_edit_with_three_images_and_a_mask(
    openai: OpenAIProvider, capture: tuple[str, list[Captured]], schemas: dict[str, Any]
) -> None:
    images = [InputImage(png_bytes(), "image/png", f"/home/someone/private/photo {i}.png", 32, 32)
              for i in range(3)]
    mask = InputImage(png_bytes(alpha=True), "image/png", "mask.png", 32, 32)
    await send(openai, "gpt-image-2", "edit", images=images, mask=mask, size="1024x1536", quality="medium",
               input_fidelity="high", output_format="jpeg", compression=70, n=2)
    (seen,) = capture[1]
    assert seen.path == "/v1/images/edits" and seen.content_type == "multipart/form-data"
    check(schemas, "CreateImageEditRequest", seen.body)
    assert seen.body == {
        "model": "gpt-image-2", "prompt": "a lighthouse at dusk", "image": ["<binary>"] * 3, "mask": "<binary>",
        "size": "1024x1536", "quality": "medium", "input_fidelity": "high", "output_format": "jpeg",
        "output_compression": 70, "n": 2,
    }
    files = [(name, filename, ctype) for name, filename, ctype in seen.parts if filename is not None]
    assert files == [("image[]", "photo_0.png", "image/png"), ("image[]", "photo_1.png", "image/png"),
                     ("image[]", "photo_2.png", "image/png"), ("mask", "mask.png", "image/png")]


async def test_multipart_edit_with_one_image_uses_the_plain_field(
    openai: OpenAIProvider, capture: tuple[str, list[Captured]], schemas: dict[str, Any]
) -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (32, 32)).save(jpeg, "JPEG")
    await send(openai, "gpt-image-1.5", "edit",
               images=[InputImage(jpeg.getvalue(), "image/jpeg", "shot.jpeg", 32, 32)])
    (seen,) = capture[1]
    check(schemas, "CreateImageEditRequest", seen.body)
    assert [(n, f, t) for n, f, t in seen.parts if f] == [("image", "shot.jpg", "image/jpeg")]


async def test_variation_body(
    openai: OpenAIProvider, capture: tuple[str, list[Captured]], schemas: dict[str, Any]
) -> None:
    await send(openai, "dall-e-2", "variation", images=[InputImage(png_bytes(), "image/png", "v.png", 32, 32)],
               n=2, size="256x256")
    (seen,) = capture[1]
    assert seen.path == "/v1/images/variations"
    check(schemas, "CreateImageVariationRequest", seen.body)
    assert seen.body == {"model": "dall-e-2", "image": "<binary>", "n": 2, "size": "256x256",
                         "response_format": "b64_json"}


async def test_azure_sends_api_key_header_not_bearer(capture: tuple[str, list[Captured]],
                                                     schemas: dict[str, Any]) -> None:
    provider = AzureProvider(ProviderSettings(base_url=capture[0], api_key="azure-test-schema-123456"), {})
    try:
        await send(provider, "gpt-image-1.5", quality="high")
    finally:
        await provider.aclose()
    (seen,) = capture[1]
    assert seen.path == "/openai/deployments/gpt-image-1.5/images/generations"
    assert seen.query == {"api-version": "2025-04-01-preview"}
    assert seen.headers["api-key"] == "azure-test-schema-123456"
    assert "Authorization" not in seen.headers
    check(schemas, "CreateImageRequest", seen.body)
