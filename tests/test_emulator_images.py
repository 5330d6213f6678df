"""The emulator's images: real bytes of the asked size and format, padded on request, encoded once."""

from __future__ import annotations

import io

import openai
import pybase64
import pytest
from PIL import Image

from pixelmill.testing import Emulator
from pixelmill.testing.images import ImageCache, colour_for, inspect, pad

KEY = "sk-test-images-0001"


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("size", [(1024, 1024), (1536, 864), (256, 768)])
def test_rendered_images_decode_to_their_size(fmt: str, size: tuple[int, int]) -> None:
    cache = ImageCache()
    rendered = cache.get(*size, fmt, colour_for("x"))
    with Image.open(io.BytesIO(rendered.data)) as image:
        image.load()
        assert (image.format, image.size) == ({"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt], size)
    assert pybase64.b64decode(rendered.b64) == rendered.data


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_padding_reaches_the_target_and_still_decodes(fmt: str) -> None:
    cache = ImageCache()
    rendered = cache.get(512, 512, fmt, (10, 20, 30), pad_to=1_000_000, transparent=fmt != "jpeg")
    assert 990_000 <= len(rendered.data) <= 1_000_000
    with Image.open(io.BytesIO(rendered.data)) as image:
        image.load()
        assert image.size == (512, 512)
        assert image.mode == ("RGB" if fmt == "jpeg" else "RGBA")
        if fmt != "jpeg":
            assert image.getpixel((0, 0))[3] == 0  # type: ignore[index]
    info = inspect(rendered.data)
    assert info is not None and info.format == fmt


def test_pad_leaves_small_targets_alone() -> None:
    data = ImageCache().get(64, 64, "png", (1, 2, 3)).data
    assert pad(data, "png", 10) == data


def test_cache_encodes_each_image_once(emulator_thread: Emulator) -> None:
    client = openai.OpenAI(base_url=emulator_thread.openai_base_url, api_key=KEY, max_retries=0)
    before = emulator_thread.images.encoded
    for _ in range(5):
        client.images.generate(model="gpt-image-2", prompt="the same prompt", size="1280x720",
                               output_format="webp")
    assert emulator_thread.images.encoded - before <= 1


def test_image_bytes_option_reaches_the_client(emulator_thread: Emulator) -> None:
    emulator_thread.configure(image_bytes=300_000)
    client = openai.OpenAI(base_url=emulator_thread.openai_base_url, api_key=KEY, max_retries=0)
    answer = client.images.generate(model="gpt-image-2", prompt="big", output_format="jpeg")
    data = pybase64.b64decode(answer.data[0].b64_json or "")
    assert 295_000 <= len(data) <= 300_000
    assert Image.open(io.BytesIO(data)).size == (1024, 1024)


def test_prompts_get_stable_distinct_colours() -> None:
    assert colour_for("a red bicycle") == colour_for("a red bicycle")
    assert len({colour_for(f"prompt {i}") for i in range(200)}) > 16
