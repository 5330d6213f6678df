"""OpenAI parameter planning against the model table: what is sent, what is approximated, what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from pixelmill.errors import ConfigError, InputError
from pixelmill.models.table import ModelSpec, builtin_table, permissive_spec
from pixelmill.params import ImageParams, WirePlan, parse_size
from pixelmill.providers.base import InputImage, Task
from pixelmill.providers.openai.params import check_inputs, check_prompt, plan_openai


def spec(name: str) -> ModelSpec:
    found = builtin_table().get(name)
    assert found is not None, name
    return found


def plan(model: str, task: Task = "generate", *, azure: bool = False, **params: Any) -> WirePlan:
    model_spec = spec(model) if builtin_table().get(model) else permissive_spec(model, "openai")
    return plan_openai(model_spec, ImageParams(**params), task, azure=azure)


# ---------------------------------------------------------------- sizes


def test_gpt_image_2_sends_exact_sizes() -> None:
    result = plan("gpt-image-2", size="1536x864")
    assert result.calls == [{"size": "1536x864"}]
    assert result.notices == []
    assert result.expected_size == (1536, 864)


def test_gpt_image_2_exact_size_on_edits_too() -> None:
    assert plan("gpt-image-2", "edit", size="1152x2048").params == {"size": "1152x2048"}


@pytest.mark.parametrize(
    ("size", "rule"),
    [
        ("1500x864", "multiples of 16"),
        ("3840x1024", "aspect ratio"),
        ("4000x2000", "at most 3840x3840"),
        ("3840x2304", "pixels in all"),
        ("256x256", "at least"),
    ],
)
def test_gpt_image_2_refuses_sizes_outside_its_rule(size: str, rule: str) -> None:
    with pytest.raises(ConfigError, match=rule) as caught:
        plan("gpt-image-2", size=size)
    assert "gpt-image-2" in str(caught.value)


def test_gpt_image_2_refusal_suggests_the_nearest_valid_size() -> None:
    with pytest.raises(ConfigError, match=r"nearest valid size: 1504x864"):
        plan("gpt-image-2", size="1500x864")


@pytest.mark.parametrize(
    ("ratio", "resolution", "expected"),
    [
        ("16:9", None, "1360x768"),
        ("16:9", "4K", "3840x2160"),
        ("9:16", "4K", "2160x3840"),
        ("1:1", "2K", "2048x2048"),
        ("1:3", "512", "304x896"),
        ("3:1", "1K", "1776x592"),
    ],
)
def test_gpt_image_2_aspect_ratio_and_resolution_become_a_valid_size(
    ratio: str, resolution: str | None, expected: str
) -> None:
    result = plan("gpt-image-2", aspect_ratio=ratio, resolution=resolution)
    assert result.params["size"] == expected
    width, height = parse_size(expected)
    assert width % 16 == 0 and height % 16 == 0


def test_gpt_image_2_resolution_alone_is_square() -> None:
    assert plan("gpt-image-2", resolution="2K").params["size"] == "2048x2048"


def test_gpt_image_2_refuses_an_aspect_ratio_beyond_3_to_1() -> None:
    with pytest.raises(ConfigError, match="1:4 is outside"):
        plan("gpt-image-2", aspect_ratio="1:4")


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"size": "1600x900"}, "1536x1024"),
        ({"size": "900x1600"}, "1024x1536"),
        ({"aspect_ratio": "16:9"}, "1536x1024"),
        ({"aspect_ratio": "4:5"}, "1024x1536"),  # log-scale distance: 0.18 to 2:3, 0.22 to 1:1
        ({"aspect_ratio": "21:9"}, "1536x1024"),
    ],
)
def test_listed_size_models_get_the_nearest_size_with_a_notice(params: dict[str, Any], expected: str) -> None:
    result = plan("gpt-image-1.5", **params)
    assert result.params["size"] == expected
    assert len(result.notices) == 1
    assert expected in result.notices[0] and "gpt-image-1.5" in result.notices[0]


def test_an_exact_listed_size_has_no_notice() -> None:
    exact: list[dict[str, Any]] = [
        {"size": "1536x1024"}, {"aspect_ratio": "3:2"}, {"aspect_ratio": "2:3"}, {"aspect_ratio": "1:1"},
        {"size": "auto"},
    ]
    for params in exact:
        result = plan("gpt-image-1.5", **params)
        assert result.notices == [], params


def test_dall_e_sizes() -> None:
    assert plan("dall-e-3", aspect_ratio="16:9").params["size"] == "1792x1024"
    assert plan("dall-e-2", resolution="512").params["size"] == "512x512"
    assert plan("dall-e-2", aspect_ratio="1:1").params["size"] == "1024x1024"  # largest when nothing else says
    with pytest.raises(ConfigError, match="allowed: 1024x1024, 1792x1024, 1024x1792"):
        plan("dall-e-3", size="auto")


def test_no_size_asked_sends_none() -> None:
    assert "size" not in plan("gpt-image-2").params
    assert plan("gpt-image-2").expected_size is None


def test_size_and_aspect_ratio_must_agree() -> None:
    assert plan("gpt-image-2", size="1920x1088", aspect_ratio="16:9").params["size"] == "1920x1088"
    with pytest.raises(ConfigError, match="disagree"):
        plan("gpt-image-2", size="1024x1024", aspect_ratio="16:9")


# ---------------------------------------------------------------- quality, style, formats


def test_quality_maps_to_dall_e_3_values() -> None:
    assert plan("dall-e-3", quality="high").params["quality"] == "hd"
    assert plan("dall-e-3", quality="medium").params["quality"] == "standard"
    low = plan("dall-e-3", quality="low")
    assert low.params["quality"] == "standard" and "no low quality" in low.notices[0]
    assert plan("dall-e-3", quality="hd").params["quality"] == "hd"  # native value accepted
    assert "quality" not in plan("dall-e-3", quality="auto").params


def test_gpt_image_models_take_their_own_quality_values_only() -> None:
    assert plan("gpt-image-2", quality="high").params["quality"] == "high"
    with pytest.raises(ConfigError, match="quality='hd'; allowed: low, medium, high, auto"):
        plan("gpt-image-2", quality="hd")


def test_style_is_dall_e_3_only() -> None:
    assert plan("dall-e-3", style="natural").params["style"] == "natural"
    with pytest.raises(ConfigError, match="gpt-image-2 does not take style"):
        plan("gpt-image-2", style="vivid")
    with pytest.raises(ConfigError, match="allowed: vivid, natural"):
        plan("dall-e-3", style="anime")


def test_gpt_image_only_parameters() -> None:
    result = plan("gpt-image-2", background="transparent", output_format="webp", compression=80, moderation="low")
    assert result.params == {
        "background": "transparent", "output_format": "webp", "output_compression": 80, "moderation": "low",
    }
    with pytest.raises(ConfigError, match="dall-e-3 does not take background"):
        plan("dall-e-3", background="opaque")
    with pytest.raises(ConfigError, match="dall-e-3 does not take moderation"):
        plan("dall-e-3", moderation="low")


def test_transparent_background_needs_png_or_webp() -> None:
    with pytest.raises(ConfigError, match="png or webp"):
        plan("gpt-image-1.5", background="transparent", output_format="jpeg")


def test_compression_needs_a_lossy_format() -> None:
    with pytest.raises(ConfigError, match="jpeg or webp"):
        plan("gpt-image-2", compression=50)
    with pytest.raises(ConfigError, match="jpeg or webp"):
        plan("gpt-image-2", compression=50, output_format="png")


def test_dall_e_output_format_is_converted_by_the_store() -> None:
    result = plan("dall-e-3", output_format="jpeg")
    assert "output_format" not in result.params
    assert result.convert_to == "jpeg"
    assert "converting" in result.notices[0]
    assert plan("dall-e-3", output_format="png").convert_to is None


def test_azure_has_no_webp() -> None:
    result = plan("gpt-image-1.5", azure=True, output_format="webp", compression=70)
    assert result.params["output_format"] == "png"
    assert "output_compression" not in result.params
    assert result.convert_to == "webp"
    assert "applied when converting" in result.notices[1]
    assert plan("gpt-image-1.5", azure=True, output_format="jpeg").params["output_format"] == "jpeg"


def test_input_fidelity_only_where_the_table_says() -> None:
    assert plan("gpt-image-1.5", "edit", input_fidelity="high").params == {"input_fidelity": "high"}
    with pytest.raises(ConfigError, match="gpt-image-1-mini does not take input_fidelity"):
        plan("gpt-image-1-mini", "edit", input_fidelity="high")
    generate = plan("gpt-image-1.5", input_fidelity="high")
    assert generate.params == {} and "edits only" in generate.notices[0]


def test_moderation_is_not_sent_with_multipart_edits() -> None:
    result = plan("gpt-image-2", "edit", moderation="low")
    assert result.params == {}
    assert "not sent" in result.notices[0]


def test_response_format_b64_for_dall_e_never_for_gpt_image() -> None:
    assert plan("dall-e-3").params == {"response_format": "b64_json"}
    assert plan("dall-e-2", "edit").params == {"response_format": "b64_json"}
    assert plan("dall-e-2", "variation").params == {"response_format": "b64_json"}
    for model in ("gpt-image-2", "gpt-image-1.5", "gpt-image-1-mini", "chatgpt-image-latest"):
        assert "response_format" not in plan(model).params
    assert "response_format" not in plan("some-gateway-model").params


# ---------------------------------------------------------------- n, tasks, foreign parameters, extras


def test_n_is_split_over_calls_when_one_call_returns_fewer() -> None:
    with pytest.raises(ConfigError, match=r"dall-e-3 makes one image per request.*n=4; allowed: 1"):
        plan("dall-e-3", n=4)
    assert [call["n"] for call in plan("dall-e-3", n=1).calls] == [1]
    result = plan("gpt-image-2", n=23)
    assert "3 calls" in result.notices[0]
    assert [call["n"] for call in plan("gpt-image-2", n=4).calls] == [4]
    assert [call["n"] for call in plan("gpt-image-2", n=23).calls] == [10, 10, 3]
    assert "n" not in plan("gpt-image-2").params


def test_tasks_the_model_does_not_do_are_refused() -> None:
    with pytest.raises(ConfigError, match="dall-e-3 does not do edit"):
        plan("dall-e-3", "edit")
    with pytest.raises(ConfigError, match="gpt-image-2 does not do variation"):
        plan("gpt-image-2", "variation")
    with pytest.raises(ConfigError, match="Azure OpenAI has no image variations"):
        plan("dall-e-2", "variation", azure=True)


def test_variations_take_only_n_and_size() -> None:
    assert plan("dall-e-2", "variation", n=2, size="512x512").params == {
        "n": 2, "size": "512x512", "response_format": "b64_json",
    }
    with pytest.raises(ConfigError, match="take only n and size"):
        plan("dall-e-2", "variation", quality="standard")


@pytest.mark.parametrize(
    ("name", "value"), [("seed", 7), ("steps", 30), ("guidance_scale", 7.5), ("negative_prompt", "blur")]
)
def test_diffusion_parameters_are_refused_for_known_models(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"gpt-image-2 does not take {name}"):
        plan("gpt-image-2", **{name: value})


def test_unknown_models_skip_model_rules_and_pass_everything() -> None:
    result = plan(
        "flux-on-a-gateway", seed=7, steps=20, quality="ultra", size="1000x700", style="anime",
        extra={"loras": ["a", "b"], "cfg": 3},
    )
    assert result.params == {
        "seed": 7, "steps": 20, "quality": "ultra", "style": "anime", "size": "1000x700",
        "loras": ["a", "b"], "cfg": 3,
    }
    assert any("seed is not an OpenAI parameter" in n for n in result.notices)
    assert plan("flux-on-a-gateway", aspect_ratio="16:9").params["size"] == "1360x768"
    # wire-shape sanity stays: the API's own rules, not a model's
    with pytest.raises(ConfigError, match="png or webp"):
        plan("flux-on-a-gateway", background="transparent", output_format="jpeg")


def test_param_passthrough_is_unchanged_and_wins() -> None:
    result = plan("gpt-image-2", quality="low", n=2, extra={"quality": "medium", "user": "u-1", "partial_images": 0})
    assert result.params == {"quality": "medium", "n": 2, "user": "u-1", "partial_images": 0}
    with pytest.raises(ConfigError, match="--param cannot set model"):
        plan("gpt-image-2", extra={"model": "other"})
    with pytest.raises(ConfigError, match="stream=true is not supported"):
        plan("gpt-image-2", extra={"stream": True})


# ---------------------------------------------------------------- per-row checks


def test_check_prompt() -> None:
    check_prompt(spec("dall-e-3"), "x" * 4000)
    with pytest.raises(InputError, match="4001 characters; dall-e-3 takes at most 4000") as caught:
        check_prompt(spec("dall-e-3"), "x" * 4001)
    assert caught.value.field == "prompt"
    with pytest.raises(InputError, match="empty"):
        check_prompt(spec("gpt-image-2"), "  ")


PNG = InputImage(b"\x89PNG\r\n\x1a\n" + b"\0" * 32, "image/png", "a.png", 64, 64)


def test_check_inputs() -> None:
    gpt = spec("gpt-image-2")
    check_inputs(gpt, "edit", [PNG] * 16, PNG)
    with pytest.raises(InputError, match="at most 16") as caught:
        check_inputs(gpt, "edit", [PNG] * 17, None)
    assert caught.value.field == "images"
    with pytest.raises(InputError, match="at least one"):
        check_inputs(gpt, "edit", [], None)
    gif = InputImage(b"GIF89a", "image/gif", "a.gif")
    with pytest.raises(InputError, match=r"a\.gif is image/gif"):
        check_inputs(gpt, "edit", [gif], None)
    jpeg_mask = InputImage(b"\xff\xd8\xff", "image/jpeg", "m.jpg")
    with pytest.raises(InputError, match="must be a PNG") as caught:
        check_inputs(gpt, "edit", [PNG], jpeg_mask)
    assert caught.value.field == "mask"
    small_mask = InputImage(PNG.data, "image/png", "m.png", 32, 32)
    with pytest.raises(InputError, match="must match"):
        check_inputs(gpt, "edit", [PNG], small_mask)
    wide = InputImage(PNG.data, "image/png", "wide.png", 128, 64)
    with pytest.raises(InputError, match="square images only"):
        check_inputs(spec("dall-e-2"), "variation", [wide], None)
    with pytest.raises(InputError, match="at most 1 input image"):
        check_inputs(spec("dall-e-2"), "variation", [PNG, PNG], None)
