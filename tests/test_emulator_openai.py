"""The emulator's OpenAI routes, driven by the official `openai` SDK as an independent client."""

from __future__ import annotations

import base64
import io
import warnings

import openai
import pytest
from PIL import Image

from pixelmill.testing import Emulator

KEY = "sk-test-emulator-0001"


def _png(width: int = 64, height: int = 64, alpha: bool = False) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA" if alpha else "RGB", (width, height), (10, 200, 30, 0) if alpha else (10, 200, 30)).save(
        buf, "PNG"
    )
    return buf.getvalue()


@pytest.fixture
def client(emulator_thread: Emulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=emulator_thread.openai_base_url, api_key=KEY, max_retries=0)


def _decode(b64: str | None) -> Image.Image:
    assert b64 is not None
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_generate_gpt_image_2_free_size_and_format(client: openai.OpenAI, emulator_thread: Emulator) -> None:
    answer = client.images.generate(model="gpt-image-2", prompt="a lighthouse", size="1280x720",
                                    output_format="jpeg", quality="low", n=2)
    assert len(answer.data) == 2
    for item in answer.data:
        image = _decode(item.b64_json)
        assert (image.format, image.size) == ("JPEG", (1280, 720))
    assert answer.size == "1280x720" and answer.output_format == "jpeg" and answer.quality == "low"
    assert answer.usage is not None and answer.usage.output_tokens > 0
    record = emulator_thread.log[-1]
    assert (record.status, record.model, record.n, record.images, record.auth) == (200, "gpt-image-2", 2, 2, "valid")
    assert "authorization" not in {k.lower() for k in record.headers}
    assert KEY not in repr(record)


def test_generate_gpt_image_15_usage_matches_table(client: openai.OpenAI) -> None:
    answer = client.images.generate(model="gpt-image-1.5", prompt="p" * 40, size="1024x1536", quality="medium")
    assert answer.usage is not None
    assert answer.usage.output_tokens == 1584
    assert answer.usage.input_tokens_details.text_tokens == 10
    assert _decode(answer.data[0].b64_json).size == (1024, 1536)


def test_transparent_background_is_rgba(client: openai.OpenAI) -> None:
    answer = client.images.generate(model="gpt-image-1.5", prompt="a logo", background="transparent",
                                    output_format="webp")
    image = _decode(answer.data[0].b64_json)
    assert image.format == "WEBP" and image.mode == "RGBA"
    assert image.getpixel((0, 0))[3] == 0
    assert answer.background == "transparent"


def test_transparent_needs_png_or_webp(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="gpt-image-1.5", prompt="a logo", background="transparent",
                               output_format="jpeg")
    assert err.value.body["param"] == "background"  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "code", "param"),
    [
        ({"model": "gpt-image-1.5", "size": "1280x720"}, "invalid_value", "size"),
        ({"model": "gpt-image-2", "size": "1000x1000"}, "invalid_value", "size"),  # not a multiple of 16
        ({"model": "gpt-image-2", "size": "3840x960"}, "invalid_value", "size"),  # ratio 4:1
        ({"model": "gpt-image-2", "quality": "hd"}, "invalid_value", "quality"),
        ({"model": "gpt-image-2", "response_format": "b64_json"}, "unknown_parameter", "response_format"),
        ({"model": "gpt-image-2", "style": "vivid"}, "unknown_parameter", "style"),
        ({"model": "gpt-image-2", "n": 11}, "integer_above_max_value", "n"),
        ({"model": "gpt-image-2", "output_format": "png", "output_compression": 50}, "invalid_value",
         "output_compression"),
        ({"model": "gpt-image-2", "extra_body": {"colour": "red"}}, "unknown_parameter", "colour"),
    ],
)
def test_generation_rules(client: openai.OpenAI, kwargs: dict[str, object], code: str, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(prompt="x", **kwargs)  # type: ignore[arg-type]
    assert err.value.code == code
    assert err.value.body["param"] == param  # type: ignore[index]
    assert set(err.value.body) >= {"message", "type", "param", "code"}  # type: ignore[arg-type]


def test_prompt_too_long(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="gpt-image-2", prompt="x" * 32001)
    assert err.value.code == "string_above_max_length"


def test_retired_models_are_not_found_unless_served(client: openai.OpenAI, emulator_thread: Emulator) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.images.generate(model="dall-e-3", prompt="x")
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="no-such-model", prompt="x")
    emulator_thread.configure(serve_retired=True)
    answer = client.images.generate(model="dall-e-3", prompt="x", response_format="b64_json", quality="hd",
                                    size="1792x1024")
    assert answer.data[0].revised_prompt
    assert _decode(answer.data[0].b64_json).size == (1792, 1024)
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(model="dall-e-3", prompt="x", n=2)
    assert bad.value.body["param"] == "n"  # type: ignore[index]


def test_dalle_url_answers_are_served(client: openai.OpenAI, emulator_thread: Emulator) -> None:
    import urllib.request

    emulator_thread.configure(serve_retired=True)
    answer = client.images.generate(model="dall-e-3", prompt="x")
    url = answer.data[0].url
    assert url is not None and url.startswith(emulator_thread.url + "/files/")
    assert answer.data[0].b64_json is None
    with urllib.request.urlopen(url) as resp:  # loopback only
        assert Image.open(io.BytesIO(resp.read())).size == (1024, 1024)


def test_edit_one_file_list_and_mask(client: openai.OpenAI, emulator_thread: Emulator) -> None:
    one = client.images.edit(model="gpt-image-1.5", prompt="on marble", image=("a.png", _png(300, 200), "image/png"))
    assert _decode(one.data[0].b64_json).size == (1536, 1024)  # auto follows the input's shape
    assert one.usage is not None and one.usage.input_tokens_details.image_tokens > 0
    many = client.images.edit(
        model="gpt-image-2",
        prompt="combine",
        image=[("a.png", _png(), "image/png"), ("b.png", _png(), "image/png"), ("c.png", _png(), "image/png")],
        size="1024x1024",
    )
    assert len(many.data) == 1
    assert emulator_thread.log[-1].input_images == 3
    masked = client.images.edit(model="gpt-image-1.5", prompt="fill", image=("a.png", _png(), "image/png"),
                                mask=("m.png", _png(alpha=True), "image/png"))
    assert masked.data[0].b64_json
    assert emulator_thread.log[-1].mask is True
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(model="gpt-image-1.5", prompt="fill", image=("a.png", _png(), "image/png"),
                           mask=("m.png", _png(32, 32, alpha=True), "image/png"))
    assert err.value.body["param"] == "mask"  # type: ignore[index]


def test_edit_rejects_non_images_and_too_many(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(model="gpt-image-1.5", prompt="x", image=("a.png", b"not an image", "image/png"))
    assert err.value.code == "invalid_image_format"
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(model="gpt-image-1.5", prompt="x", image=[("a.png", _png(8, 8), "image/png")] * 17)
    assert err.value.code == "array_above_max_length"


def test_input_fidelity_not_on_mini(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(model="gpt-image-1-mini", prompt="x", image=("a.png", _png(), "image/png"),
                           input_fidelity="high")
    assert err.value.body["param"] == "input_fidelity"  # type: ignore[index]


def test_json_edit_with_data_urls(client: openai.OpenAI, emulator_thread: Emulator) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(_png(200, 300)).decode()
    answer = client.post(
        "/images/edits",
        body={"model": "gpt-image-1.5", "prompt": "x", "images": [{"image_url": data_url}, {"file_id": "file-1"}]},
        cast_to=openai.types.ImagesResponse,
    )
    assert _decode(answer.data[0].b64_json).size == (1024, 1536)  # type: ignore[index]
    assert emulator_thread.log[-1].input_images == 2
    with pytest.raises(openai.BadRequestError):
        client.post(
            "/images/edits",
            body={"model": "gpt-image-1.5", "prompt": "x", "images": [{"image_url": data_url, "file_id": "file-1"}]},
            cast_to=openai.types.ImagesResponse,
        )


def _variation(client: openai.OpenAI, **kwargs: object) -> openai.types.ImagesResponse:
    with warnings.catch_warnings():  # the SDK marks create_variation deprecated (dall-e-2 is retired)
        warnings.simplefilter("ignore", DeprecationWarning)
        return client.images.create_variation(**kwargs)  # type: ignore[arg-type]


def test_variation_dalle2_only(client: openai.OpenAI, emulator_thread: Emulator) -> None:
    emulator_thread.configure(serve_retired=True)
    answer = _variation(client, model="dall-e-2", image=("a.png", _png(), "image/png"), n=2, size="256x256",
                        response_format="b64_json")
    assert [_decode(d.b64_json).size for d in answer.data] == [(256, 256), (256, 256)]
    with pytest.raises(openai.BadRequestError):
        _variation(client, model="dall-e-2", image=("a.png", _png(64, 32), "image/png"))
    with pytest.raises(openai.BadRequestError):
        _variation(client, model="gpt-image-1.5", image=("a.png", _png(), "image/png"))


def test_models_list_has_shutdown_dates(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert "gpt-image-2" in models and "dall-e-3" not in models
    assert getattr(models["gpt-image-1.5"], "shutdown_date", None) == "2026-12-01"
    assert getattr(models["gpt-image-2"], "shutdown_date", "absent") is None


def test_route_without_v1_is_an_openai_404(emulator_thread: Emulator) -> None:
    client = openai.OpenAI(base_url=emulator_thread.url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as err:
        client.images.generate(model="gpt-image-2", prompt="x")
    assert set(err.value.body) == {"message", "type", "param", "code"}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        ("moderation", openai.BadRequestError, "moderation_blocked"),
        ("auth", openai.AuthenticationError, "invalid_api_key"),
        ("rate_limit", openai.RateLimitError, "rate_limit_exceeded"),
        ("quota", openai.RateLimitError, "insufficient_quota"),
        ("server_error", openai.InternalServerError, None),
        ("unavailable", openai.InternalServerError, None),
    ],
)
def test_fault_markers_reach_the_sdk(client: openai.OpenAI, fault: str, error: type[Exception],
                                     code: str | None) -> None:
    with pytest.raises(error) as err:
        client.images.generate(model="gpt-image-2", prompt=f"a cat [[fault:{fault}]]")
    assert getattr(err.value, "code", None) == code
    response = err.value.response  # type: ignore[attr-defined]
    if fault == "rate_limit":
        assert response.headers["retry-after"] == "1" and response.headers["retry-after-ms"] == "1000"
    if fault == "quota":
        assert "retry-after" not in response.headers
        assert err.value.body["type"] == "insufficient_quota"  # type: ignore[attr-defined]
    if fault == "moderation":
        assert err.value.body["moderation_details"]["moderation_stage"] == "input"  # type: ignore[attr-defined]


def test_sdk_honours_retry_after(emulator_thread: Emulator) -> None:
    emulator_thread.configure(fail_after=0, fail_with="rate_limit", retry_after=0.05)
    client = openai.OpenAI(base_url=emulator_thread.openai_base_url, api_key=KEY, max_retries=2)
    with pytest.raises(openai.RateLimitError):
        client.images.generate(model="gpt-image-2", prompt="x")
    records = emulator_thread.records(status=429)
    assert len(records) == 3  # the SDK retried twice, after the hinted 1 s (retry-after-ms = 50)
    assert records[-1].started - records[0].started < 1.0


def test_wrong_and_missing_keys(emulator_thread: Emulator) -> None:
    emulator_thread.configure(api_keys={KEY})
    wrong = openai.OpenAI(base_url=emulator_thread.openai_base_url, api_key="sk-test-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.images.generate(model="gpt-image-2", prompt="x")
    assert err.value.code == "invalid_api_key"
    assert emulator_thread.log[-1].auth == "invalid"
    good = openai.OpenAI(base_url=emulator_thread.openai_base_url, api_key=KEY, max_retries=0)
    assert good.images.generate(model="gpt-image-2", prompt="x").data
