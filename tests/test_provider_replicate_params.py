"""Neutral parameters -> Replicate inputs, per model of the table: what is sent, the notices, and the up-front
refusal (ConfigError naming model, parameter and allowed values) of what a model cannot do."""

from __future__ import annotations

from typing import Any

import pytest

from pixelmill.errors import ConfigError
from pixelmill.models.cost import expected_cost
from pixelmill.models.table import builtin_table, permissive_spec
from pixelmill.params import ImageParams, WirePlan
from pixelmill.providers.replicate.params import plan_replicate

SCHNELL, DEV, PRO = ("black-forest-labs/flux-schnell", "black-forest-labs/flux-dev", "black-forest-labs/flux-1.1-pro")


def plan(model: str, task: str = "generate", **params: Any) -> WirePlan:
    spec = builtin_table().get(model) or permissive_spec(model, "replicate")
    return plan_replicate(spec, ImageParams(**params), task)  # type: ignore[arg-type]


def test_flux_schnell_inputs() -> None:
    made = plan(SCHNELL, n=2, aspect_ratio="16:9", seed=7, steps=4, output_format="jpeg", compression=90,
                resolution="512")
    assert made.calls == [{"num_outputs": 2, "aspect_ratio": "16:9", "seed": 7, "num_inference_steps": 4,
                           "output_format": "jpg", "output_quality": 90, "megapixels": "0.25"}]
    assert made.expected_size == (672, 384)


def test_a_size_becomes_a_ratio_and_a_megapixel_tier_with_a_notice() -> None:
    made = plan(SCHNELL, size="1920x1080")
    assert made.params == {"aspect_ratio": "16:9", "megapixels": "1"}
    assert "1344x768" in made.notices[0]
    assert plan(SCHNELL, size="1024x1024").notices == []


def test_n_beyond_four_is_split_and_pro_makes_one_per_prediction() -> None:
    made = plan(SCHNELL, n=6)
    assert [c["num_outputs"] for c in made.calls] == [4, 2] and "2 predictions" in made.notices[0]
    pro = plan(PRO, n=3)
    assert pro.calls == [{}, {}, {}] and "one image per prediction" in pro.notices[0]


def test_pro_custom_sizes() -> None:
    assert plan(PRO, size="1440x800").params == {"aspect_ratio": "custom", "width": 1440, "height": 800}
    with pytest.raises(ConfigError, match=r"multiples of 32 from 256 to 1440 \(nearest valid size: 1440x1440\)"):
        plan(PRO, size="2048x2048")
    with pytest.raises(ConfigError, match="nearest valid size: 1024x768"):
        plan(PRO, size="1020x770")
    assert plan(PRO, aspect_ratio="4:3").params == {"aspect_ratio": "4:3"}


@pytest.mark.parametrize(("model", "params", "says"), [
    (SCHNELL, {"steps": 8}, "does not take steps=8; allowed: 1 to 4"),
    (DEV, {"guidance_scale": 12}, "does not take guidance_scale=12; allowed: 0 to 10"),
    (SCHNELL, {"guidance_scale": 3}, "does not take guidance_scale"),
    (PRO, {"steps": 20}, "does not take steps"),
    (DEV, {"aspect_ratio": "4:3"}, "does not take aspect_ratio='4:3'; allowed: 1:1, 16:9"),
    (SCHNELL, {"resolution": "2K"}, "does not take resolution='2K'; allowed: 512, 1K"),
    (PRO, {"resolution": "2K"}, "allowed: 1K"),
    (SCHNELL, {"negative_prompt": "blurry"}, "does not take negative_prompt"),
    (SCHNELL, {"quality": "high"}, "does not take quality"),
    (SCHNELL, {"output_format": "png", "compression": 50}, "compression applies to jpeg or webp"),
    (SCHNELL, {"extra": {"prompt": "x"}}, "--param cannot set prompt"),
])
def test_impossible_values_are_refused_up_front(model: str, params: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        plan(model, **params)
    assert says in str(caught.value) and (model in str(caught.value) or "compression" in says or "--param" in says)


def test_only_flux_dev_edits() -> None:
    assert plan(DEV, "edit").calls == [{}]
    with pytest.raises(ConfigError, match="does not do edit"):
        plan(SCHNELL, "edit")


def test_models_the_table_does_not_know_take_the_usual_names_and_params_as_given() -> None:
    made = plan("someone/sdxl-lora", n=2, size="768x1024", steps=30, guidance_scale=5, negative_prompt="ugly",
                quality="high", extra={"lora_scale": 0.8})
    assert made.params == {"num_outputs": 2, "width": 768, "height": 1024, "num_inference_steps": 30,
                           "guidance_scale": 5.0, "negative_prompt": "ugly", "lora_scale": 0.8}
    assert any("not in the model table" in n for n in made.notices)
    assert any("quality" in n for n in made.notices)


def test_prices_per_image() -> None:
    table = builtin_table()
    for model, price in ((SCHNELL, 0.003), (DEV, 0.025), (PRO, 0.04)):
        spec = table.get(model)
        assert spec is not None
        cost = expected_cost(spec, plan(model).params, 2)
        assert cost is not None and cost.high == pytest.approx(2 * price)


def test_models_listing_shows_replicate_and_hf(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`pixelmill models --provider replicate|hf-endpoint` (a KeyError on a family it did not know before)."""
    from pixelmill.reports.models import print_models

    monkeypatch.setenv("COLUMNS", "250")
    print_models("replicate")
    shown = capsys.readouterr().out
    assert SCHNELL in shown and "$0.003" in shown and "FLUX.1-dev" not in shown
    print_models("hf-endpoint")
    shown = capsys.readouterr().out
    assert "FLUX.1-dev:hf-inference" in shown and SCHNELL not in shown
