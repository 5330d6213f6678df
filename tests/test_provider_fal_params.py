"""fal's parameter mapping (`providers/fal/params.py`) and the estimates its models give: neutral parameters per
model, refused up front with the model, the parameter and what it allows."""

from __future__ import annotations

from typing import Any

import pytest

from pixelmill.errors import ConfigError
from pixelmill.models.cost import expected_cost
from pixelmill.models.table import builtin_table, permissive_spec
from pixelmill.params import ImageParams, WirePlan
from pixelmill.providers.base import Task
from pixelmill.providers.fal.params import plan_fal


def plan(model: str, task: Task = "generate", **params: Any) -> WirePlan:
    spec = builtin_table().get(model) or permissive_spec(model, "fal")
    return plan_fal(spec, ImageParams(**params), task)


def test_sizes_become_presets_or_width_and_height() -> None:
    assert plan("fal-ai/flux/dev", aspect_ratio="16:9").params == {"image_size": "landscape_16_9"}
    assert plan("fal-ai/flux/dev", aspect_ratio="3:4").params == {"image_size": "portrait_4_3"}
    assert plan("fal-ai/flux/dev", aspect_ratio="2:1").params == {"image_size": {"width": 1456, "height": 720}}
    assert plan("fal-ai/flux/dev", size="1024x512").params == {"image_size": {"width": 1024, "height": 512}}
    assert plan("fal-ai/flux/schnell", aspect_ratio="1:1", resolution="512").params == {
        "image_size": {"width": 512, "height": 512}}
    assert plan("fal-ai/flux-pro/v1.1-ultra", aspect_ratio="21:9").params == {"aspect_ratio": "21:9"}


@pytest.mark.parametrize(("model", "params", "words"), [
    ("fal-ai/flux/dev", {"size": "1000x1000"}, "fal-ai/flux/dev does not take size 1000x1000: both sides must be "
                                               "multiples of 16"),
    ("fal-ai/flux/dev", {"size": "4096x4096"}, "each side must be at most 2048x2048"),
    ("fal-ai/flux-pro/v1.1-ultra", {"size": "1024x1024"}, "does not take size: it chooses its size from an "
                                                          "aspect ratio; give --aspect-ratio, one of 21:9"),
    ("fal-ai/flux-pro/v1.1-ultra", {"aspect_ratio": "5:4"}, "does not take aspect_ratio='5:4'; allowed: 21:9"),
    ("fal-ai/flux/schnell", {"steps": 30}, "fal-ai/flux/schnell does not take steps=30; allowed: 1 to 12"),
    ("fal-ai/fast-lightning-sdxl", {"steps": 3}, "does not take steps=3; allowed: 1, 2, 4, 8"),
    ("fal-ai/flux-pro/v1.1", {"steps": 3}, "does not take steps"),
    ("fal-ai/flux/schnell", {"guidance_scale": 3.0}, "does not take guidance_scale"),
    ("fal-ai/flux/dev", {"guidance_scale": 40.0}, "guidance_scale=40; allowed: 1 to 20"),
    ("fal-ai/flux/dev", {"negative_prompt": "blur"}, "does not take negative_prompt"),
    ("fal-ai/flux/dev", {"quality": "high"}, "does not take quality"),
    ("fal-ai/flux/dev", {"extra": {"safety_tolerance": 3}}, "does not take safety_tolerance (it takes "
                                                            "enable_safety_checker=true|false)"),
    ("fal-ai/flux-pro/v1.1", {"extra": {"enable_safety_checker": False}}, "does not take enable_safety_checker"),
    ("fal-ai/flux-pro/v1.1", {"extra": {"safety_tolerance": 9}}, "safety_tolerance=9; allowed: 1, 2, 3"),
    ("fal-ai/flux/dev", {"extra": {"sync_mode": True}}, "--param cannot set sync_mode"),
])
def test_impossible_values_are_refused_before_anything_is_sent(model: str, params: dict[str, Any],
                                                               words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        plan(model, **params)
    assert words in str(caught.value)


def test_tasks_formats_counts_and_passthrough() -> None:
    with pytest.raises(ConfigError, match=r"does not do edit.*use fal-ai/flux-pro/kontext"):
        plan("fal-ai/flux/dev", "edit")
    assert plan("fal-ai/fast-lightning-sdxl", output_format="png", steps=4).params == {
        "format": "png", "num_inference_steps": "4"}
    webp = plan("fal-ai/flux/dev", output_format="webp")
    assert webp.params == {"output_format": "png"} and webp.convert_to == "webp"
    split = plan("fal-ai/flux/dev", n=10)
    assert [c["num_images"] for c in split.calls] == [4, 4, 2] and "sent as 3 jobs" in split.notices[0]
    assert plan("fal-ai/flux-pro/v1.1", extra={"safety_tolerance": 5}).params == {"safety_tolerance": "5"}
    assert plan("fal-ai/flux/dev", seed=3, extra={"acceleration": "high"}).params == {"seed": 3,
                                                                                       "acceleration": "high"}
    # An endpoint the table does not know: fal's usual names, nothing refused.
    assert plan("fal-ai/recraft/v3", negative_prompt="x", size="1000x700").params == {
        "image_size": {"width": 1000, "height": 700}, "negative_prompt": "x"}


def test_estimates_price_megapixels_and_images() -> None:
    table = builtin_table()

    def cost(model: str, **params: Any) -> float:
        spec = table.get(model)
        assert spec is not None
        call = plan(model, **params).params
        found = expected_cost(spec, call, int(call.get("num_images", 1)))
        assert found is not None
        return found.expected

    assert cost("fal-ai/flux/dev", size="1024x1024") == pytest.approx(0.025)
    assert cost("fal-ai/flux/dev", size="2048x1024") == pytest.approx(0.05)  # two megapixels of 1024x1024
    assert cost("fal-ai/flux/dev", size="1024x1040") == pytest.approx(0.05)  # a second one started
    assert cost("fal-ai/flux/schnell", size="1024x1024", n=4) == pytest.approx(0.012)
    assert cost("fal-ai/flux-pro/v1.1-ultra") == pytest.approx(0.06)
    kontext = table.get("fal-ai/flux-pro/kontext")
    assert kontext is not None
    found = expected_cost(kontext, plan("fal-ai/flux-pro/kontext", "edit").params, 1, input_images=1)
    assert found is not None and found.expected == pytest.approx(0.04)
