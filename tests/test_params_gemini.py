"""Neutral parameters -> Gemini generationConfig (pixelmill.providers.gemini.params), per model of the table."""

from __future__ import annotations

from typing import Any

import pytest

from pixelmill.errors import ConfigError, InputError
from pixelmill.models.table import ModelSpec, builtin_table, permissive_spec
from pixelmill.params import ImageParams
from pixelmill.providers.base import InputImage
from pixelmill.providers.gemini.params import check_inputs, expected_size, plan_gemini

PRO = "gemini-3-pro-image"
FLASH = "gemini-3.1-flash-image"
LITE = "gemini-3.1-flash-lite-image"
OLD = "gemini-2.5-flash-image"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


def spec(name: str) -> ModelSpec:
    found = builtin_table().get(name)
    assert found is not None, name
    return found


def plan(name: str, **params: Any) -> Any:
    return plan_gemini(spec(name), ImageParams(**params), "generate")


def image(mime: str = "image/png", size: int = 40, name: str = "a.png") -> InputImage:
    return InputImage(data=PNG + b"\0" * max(0, size - len(PNG)), mime=mime, name=name)


# ------------------------------------------------------------------------------------------ defaults


def test_defaults_ask_for_text_and_image_and_nothing_else() -> None:
    wire = plan(PRO)
    assert wire.calls == [{"responseModalities": ["TEXT", "IMAGE"]}]
    assert wire.params == wire.calls[0]
    assert wire.notices == []
    assert wire.convert_to is None
    assert wire.expected_size is None


@pytest.mark.parametrize(
    "alias", ["gemini-3-pro-image-preview", "nano-banana", "gemini-3.1-flash-image-preview"]
)
def test_aliases_resolve_to_table_entries(alias: str) -> None:
    assert plan(alias, aspect_ratio="1:1").params["imageConfig"] == {"aspectRatio": "1:1"}


# ------------------------------------------------------------------------------------------ aspect ratio


@pytest.mark.parametrize("name", [PRO, FLASH, LITE, OLD])
def test_every_listed_ratio_is_sent_as_is(name: str) -> None:
    for ratio in spec(name).aspect_ratios:
        wire = plan(name, aspect_ratio=ratio)
        assert wire.params["imageConfig"]["aspectRatio"] == ratio
        assert wire.expected_size == tuple(spec(name).ratio_pixels[ratio])


def test_ratio_outside_the_model_list_is_refused_naming_model_and_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        plan(PRO, aspect_ratio="1:4")
    message = str(caught.value)
    assert PRO in message and "aspect_ratio" in message and "21:9" in message and "16:9" in message


def test_extreme_ratios_only_on_flash() -> None:
    assert plan(FLASH, aspect_ratio="8:1").params["imageConfig"]["aspectRatio"] == "8:1"
    with pytest.raises(ConfigError, match=OLD):
        plan(OLD, aspect_ratio="8:1")


# ------------------------------------------------------------------------------------------ resolution


def test_resolution_becomes_image_size_with_uppercase_k() -> None:
    wire = plan(PRO, resolution="2k", aspect_ratio="16:9")
    assert wire.params["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}
    assert wire.expected_size == (2752, 1536)


def test_512_only_where_the_model_has_it() -> None:
    assert plan(FLASH, resolution="512").params["imageConfig"] == {"imageSize": "512"}
    with pytest.raises(ConfigError) as caught:
        plan(PRO, resolution="512")
    assert PRO in str(caught.value) and "1K, 2K, 4K" in str(caught.value)
    with pytest.raises(ConfigError, match="1K"):
        plan(LITE, resolution="4K")


def test_fixed_size_model_takes_1k_silently_and_refuses_other_tiers() -> None:
    wire = plan(OLD, resolution="1K")
    assert "imageConfig" not in wire.params  # nothing to send: 1K is what it makes
    assert wire.notices == []
    with pytest.raises(ConfigError) as caught:
        plan(OLD, resolution="2K")
    message = str(caught.value)
    assert OLD in message and "about 1K" in message and FLASH in message


# ------------------------------------------------------------------------------------------ size WxH


@pytest.mark.parametrize(
    ("name", "size", "ratio", "tier", "exact"),
    [
        (PRO, "1376x768", "16:9", "1K", True),
        (PRO, "2752x1536", "16:9", "2K", True),
        (PRO, "4096x4096", "1:1", "4K", True),
        (PRO, "1000x1000", "1:1", "1K", False),
        (PRO, "1500x1500", "1:1", "2K", False),  # 1500 is nearer 2048 than 1024 on a log scale
        (PRO, "1400x1400", "1:1", "1K", False),
        (PRO, "1920x1080", "16:9", "1K", False),
        (PRO, "3000x1000", "21:9", "2K", False),
        (FLASH, "512x512", "1:1", "512", True),
        (FLASH, "600x2400", "1:4", "1K", False),
        (LITE, "4000x4000", "1:1", "1K", False),  # its largest tier
    ],
)
def test_size_becomes_nearest_ratio_and_tier(
    name: str, size: str, ratio: str, tier: str, exact: bool
) -> None:
    wire = plan(name, size=size)
    assert wire.params["imageConfig"] == {"aspectRatio": ratio, "imageSize": tier}
    if exact:
        assert wire.notices == []
    else:
        assert len(wire.notices) == 1
        assert size in wire.notices[0] and ratio in wire.notices[0] and tier in wire.notices[0]


def test_size_on_fixed_size_model_sets_the_ratio_only() -> None:
    wire = plan(OLD, size="2048x1152")
    assert wire.params["imageConfig"] == {"aspectRatio": "16:9"}
    assert wire.expected_size == (1344, 768)
    assert len(wire.notices) == 1 and "about 1K" in wire.notices[0]
    assert plan(OLD, size="1344x768").notices == []


def test_explicit_ratio_and_resolution_win_over_size() -> None:
    wire = plan(PRO, size="1024x1024", aspect_ratio="16:9", resolution="4K")
    assert wire.params["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "4K"}
    assert any("disagree" in n for n in wire.notices)


def test_size_auto_sends_nothing() -> None:
    assert plan(PRO, size="auto").params == {"responseModalities": ["TEXT", "IMAGE"]}


# ------------------------------------------------------------------------------------------ n, seed, format


def test_n_becomes_separate_single_image_calls() -> None:
    wire = plan(FLASH, n=3, aspect_ratio="3:2", seed=7)
    assert len(wire.calls) == 3
    assert all(call == wire.calls[0] for call in wire.calls)
    wire.calls[0]["imageConfig"]["aspectRatio"] = "changed"
    assert wire.calls[1]["imageConfig"]["aspectRatio"] == "3:2"  # independent copies


def test_seed_is_sent_and_bounded_to_int32() -> None:
    assert plan(PRO, seed=123).params["seed"] == 123
    with pytest.raises(ConfigError, match="32-bit"):
        plan(PRO, seed=2**31)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_output_format_is_converted_not_sent(fmt: str) -> None:
    wire = plan(PRO, output_format=fmt)
    assert wire.convert_to == fmt
    assert "outputMimeType" not in str(wire.params)
    assert len(wire.notices) == 1 and "converted" in wire.notices[0]


def test_compression_goes_to_the_local_conversion() -> None:
    wire = plan(PRO, output_format="webp", compression=70)
    assert wire.convert_to == "webp"
    assert wire.notices == [f"{PRO}: the Gemini API cannot be told an output format; images that do not arrive "
                            "as webp are converted after download (compression 70)"]


def test_quality_hints_are_noticed_not_sent() -> None:
    wire = plan(PRO, quality="high", compression=80, input_fidelity="high", moderation="low")
    assert wire.params == {"responseModalities": ["TEXT", "IMAGE"]}
    assert len(wire.notices) == 1
    notice = wire.notices[0]
    assert "quality='high'" in notice and "compression=80" in notice and "safetySettings" in notice


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"style": "vivid"}, "style"),
        ({"background": "transparent"}, "transparent"),
        ({"background": "green"}, "background"),
        ({"negative_prompt": "blur"}, "negative_prompt"),
        ({"steps": 30}, "steps"),
        ({"guidance_scale": 7.5}, "guidance_scale"),
    ],
)
def test_what_gemini_cannot_do_stops_before_sending(params: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        plan(PRO, **params)
    assert PRO in str(caught.value) and words in str(caught.value)


@pytest.mark.parametrize("background", ["auto", "opaque"])
def test_opaque_backgrounds_are_what_gemini_makes(background: str) -> None:
    assert plan(PRO, background=background).notices == []


def test_variation_has_no_gemini_endpoint() -> None:
    with pytest.raises(ConfigError, match="edit"):
        plan_gemini(spec(PRO), ImageParams(), "variation")
    assert plan_gemini(spec(PRO), ImageParams(), "edit").calls


# ------------------------------------------------------------------------------------------ --param


def test_thinking_level_on_thinking_models() -> None:
    wire = plan(FLASH, extra={"thinking_level": "minimal", "include_thoughts": "true"})
    assert wire.params["thinkingConfig"] == {"thinkingLevel": "MINIMAL", "includeThoughts": True}
    assert plan(PRO, extra={"thinkingLevel": "HIGH"}).params["thinkingConfig"] == {"thinkingLevel": "HIGH"}


def test_thinking_level_refused_where_the_model_does_not_think() -> None:
    with pytest.raises(ConfigError) as caught:
        plan(OLD, extra={"thinking_level": "HIGH"})
    assert OLD in str(caught.value) and FLASH in str(caught.value)


def test_unknown_thinking_level_lists_the_levels() -> None:
    with pytest.raises(ConfigError, match="MINIMAL"):
        plan(FLASH, extra={"thinking_level": "turbo"})
    with pytest.raises(ConfigError, match="true or false"):
        plan(FLASH, extra={"include_thoughts": "perhaps"})


def test_other_params_pass_through_into_generation_config() -> None:
    safety = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]
    wire = plan(PRO, aspect_ratio="4:3", extra={
        "temperature": 0.4,
        "imageConfig": {"personGeneration": "ALLOW_ADULT"},
        "responseModalities": "image",
        "safetySettings": safety,
    })
    assert wire.params == {
        "responseModalities": ["IMAGE"],
        "imageConfig": {"aspectRatio": "4:3", "personGeneration": "ALLOW_ADULT"},
        "temperature": 0.4,
        "safetySettings": safety,  # lifted to the request's top level by the provider
    }


# ------------------------------------------------------------------------------------------ unknown models


def test_models_outside_the_table_get_values_passed_through() -> None:
    loose = permissive_spec("gemini-9-image-experimental", "gemini")
    wire = plan_gemini(loose, ImageParams(aspect_ratio="7:3", resolution="2K",
                                          extra={"thinking_level": "HIGH"}), "edit")
    assert wire.params["imageConfig"] == {"aspectRatio": "7:3", "imageSize": "2K"}
    assert wire.params["thinkingConfig"] == {"thinkingLevel": "HIGH"}
    sized = plan_gemini(loose, ImageParams(size="2048x1152"), "generate")
    assert sized.params["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}


def test_expected_size_scales_the_1k_table() -> None:
    assert expected_size(spec(FLASH), "1:4", "512") == (256, 1024)
    assert expected_size(spec(PRO), "21:9", "4K") == (6336, 2688)
    assert expected_size(spec(PRO), None, "2K") is None


# ------------------------------------------------------------------------------------------ per-row inputs


def test_input_image_count_is_per_model() -> None:
    check_inputs(spec(OLD), [image()] * 3)
    with pytest.raises(InputError) as caught:
        check_inputs(spec(OLD), [image()] * 4)
    assert caught.value.field == "images"
    assert "4 input images" in str(caught.value) and "at most 3" in str(caught.value)
    assert "14" in str(caught.value)  # says which model takes more
    check_inputs(spec(PRO), [image()] * 14)
    with pytest.raises(InputError):
        check_inputs(spec(PRO), [image()] * 15)


def test_input_image_format_and_size() -> None:
    with pytest.raises(InputError, match=r"image/gif") as caught:
        check_inputs(spec(PRO), [image(), image("image/gif", name="anim.gif")])
    assert "input image 2 (anim.gif)" in str(caught.value)
    with pytest.raises(InputError, match="MiB"):
        check_inputs(spec(PRO), [image(size=spec(PRO).max_input_image_bytes + 1)])


def test_mask_is_a_step_level_error() -> None:
    with pytest.raises(ConfigError, match="no mask"):
        check_inputs(spec(PRO), [image()], mask=image())


def test_prompt_length_and_emptiness() -> None:
    check_inputs(spec(PRO), [image()], prompt="")  # an image alone is a valid turn
    with pytest.raises(InputError) as caught:
        check_inputs(spec(PRO), [], prompt="  ")
    assert caught.value.field == "prompt"
    with pytest.raises(InputError, match="shorten"):
        check_inputs(spec(PRO), [], prompt="x" * (spec(PRO).max_prompt_chars + 1))
