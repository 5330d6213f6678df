"""BFL's parameter mapping (`providers/bfl/params.py`) and its models' estimates: neutral parameters per model,
refused up front with the model, the parameter and what it allows; n as n jobs; FLUX.2 megapixel prices."""

from __future__ import annotations

from typing import Any

import pytest

from pixelmill.errors import ConfigError
from pixelmill.models.cost import expected_cost
from pixelmill.models.table import builtin_table
from pixelmill.params import ImageParams, WirePlan
from pixelmill.providers.base import Task
from pixelmill.providers.bfl.params import plan_bfl


def plan(model: str, task: Task = "generate", **params: Any) -> WirePlan:
    spec = builtin_table().get(model)
    assert spec is not None
    return plan_bfl(spec, ImageParams(**params), task)


def test_sizes_ratios_and_counts() -> None:
    assert plan("flux-pro-1.1", size="1024x768").params == {"width": 1024, "height": 768}
    assert plan("flux-pro-1.1", aspect_ratio="16:9").params == {"width": 1376, "height": 768}
    assert plan("flux-2-pro", aspect_ratio="1:1", resolution="2K").params == {"width": 2048, "height": 2048}
    assert plan("flux-pro-1.1-ultra", aspect_ratio="9:21").params == {"aspect_ratio": "9:21"}
    assert plan("flux-dev", steps=28, guidance_scale=3.0, seed=1).params == {"steps": 28, "guidance": 3.0,
                                                                               "seed": 1}
    jobs = plan("flux-pro-1.1", n=3)
    assert jobs.calls == [{}, {}, {}] and "n=3 is sent as 3 jobs" in jobs.notices[0]
    webp = plan("flux-pro-1.1", output_format="webp")
    assert webp.params == {"output_format": "png"} and webp.convert_to == "webp"
    assert plan("flux-pro-1.1-ultra", output_format="webp").params == {"output_format": "webp"}


@pytest.mark.parametrize(("model", "params", "words"), [
    ("flux-pro-1.1", {"size": "1000x1000"}, "flux-pro-1.1 does not take size 1000x1000: both sides must be "
                                            "multiples of 32"),
    ("flux-pro-1.1", {"size": "2048x1024"}, "each side must be at most 1440x1440"),
    ("flux-2-pro", {"size": "4096x4096"}, "at most 4194304 pixels"),
    ("flux-kontext-pro", {"resolution": "2K"}, "does not take resolution"),
    ("flux-pro-1.1-ultra", {"aspect_ratio": "5:4"}, "aspect_ratio='5:4'; allowed: 21:9"),
    ("flux-pro-1.1", {"steps": 20}, "does not take steps"),
    ("flux-dev", {"steps": 80}, "steps=80; allowed: 1 to 50"),
    ("flux-dev", {"guidance_scale": 9.0}, "guidance_scale=9; allowed: 1.5 to 5"),
    ("flux-dev", {"negative_prompt": "x"}, "does not take negative_prompt"),
    ("flux-dev", {"quality": "hd"}, "does not take quality"),
    ("flux-kontext-pro", {"extra": {"safety_tolerance": 5}}, "safety_tolerance=5; allowed: 0, 1, 2"),
    ("flux-dev", {"extra": {"input_image": "x"}}, "--param cannot set input_image"),
])
def test_impossible_values_are_refused(model: str, params: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        plan(model, **params)
    assert words in str(caught.value)


def test_tasks() -> None:
    with pytest.raises(ConfigError, match=r"flux-pro-1\.1 does not do edit.*flux-kontext-pro or flux-2-pro"):
        plan("flux-pro-1.1", "edit")
    assert plan("flux-2-pro", "edit").params == {}


def test_estimates_follow_the_price_table() -> None:
    table = builtin_table()

    def expected(model: str, images: int = 1, inputs: int = 0, **params: Any) -> float:
        spec = table.get(model)
        assert spec is not None
        found = expected_cost(spec, plan(model, **params).params, images, input_images=inputs)
        assert found is not None
        return found.expected

    assert expected("flux-pro-1.1") == pytest.approx(0.04)
    assert expected("flux-pro-1.1-ultra") == pytest.approx(0.06)
    assert expected("flux-kontext-pro", inputs=1) == pytest.approx(0.04)
    assert expected("flux-2-pro", size="1024x1024") == pytest.approx(0.03)  # BFL: 1 MP text-to-image $0.03
    assert expected("flux-2-pro", inputs=1, size="1024x1024") == pytest.approx(0.045)  # 1 MP edit $0.045
    assert expected("flux-2-pro", size="2048x2048") == pytest.approx(0.03 + 3 * 0.015)
