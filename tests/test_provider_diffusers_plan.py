"""Planning for local diffusers models: sizes, parameters, refusals, and reading a model's pipeline class.
Everything here runs without torch, except the check of the family table against the installed diffusers."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from pixelmill.errors import ConfigError
from pixelmill.params import ImageParams
from pixelmill.providers.diffusers.families import FAMILIES, LocalModel, family_of, inspect_model
from pixelmill.providers.diffusers.options import device_list, parse_options
from pixelmill.providers.diffusers.params import plan_diffusers, round_size


def _model(class_name: str, multiple: int = 8, native: int = 512) -> LocalModel:
    family = family_of(class_name)
    assert family is not None
    return LocalModel("some/model", "some/model", False, class_name, family, multiple, native)


SD = _model("StableDiffusionPipeline")
FLUX = _model("FluxPipeline", 16, 1024)
KONTEXT = _model("FluxKontextPipeline", 16, 1024)
QWEN = _model("QwenImagePipeline", 16, 1024)
QWEN_EDIT = _model("QwenImageEditPipeline", 16, 1024)


def _plan(model: LocalModel, task: str = "generate", **params: Any) -> Any:
    return plan_diffusers(model, ImageParams(**params), task)  # type: ignore[arg-type]


# ---------------------------------------------------------------- sizes


def test_size_is_rounded_to_the_models_multiple_with_a_notice() -> None:
    plan = _plan(SD, size="500x301")
    assert (plan.params["width"], plan.params["height"]) == (504, 304)
    assert any("500x301" in n and "504x304" in n and "multiple of 8" in n for n in plan.notices)
    exact = _plan(FLUX, size="1024x768")
    assert (exact.params["width"], exact.params["height"]) == (1024, 768)
    assert not [n for n in exact.notices if "multiple" in n]


def test_round_size_halves_up_and_never_reaches_zero() -> None:
    assert round_size(1000, 700, 16) == (1008, 704)
    assert round_size(4, 4, 16) == (16, 16)


def test_aspect_ratio_and_resolution_become_a_size() -> None:
    wide = _plan(SD, aspect_ratio="16:9")  # the model's own square (512²) as the pixel budget
    assert (wide.params["width"], wide.params["height"]) == (680, 384)
    square = _plan(FLUX, resolution="1K")
    assert (square.params["width"], square.params["height"]) == (1024, 1024)
    tall = _plan(FLUX, aspect_ratio="2:3", resolution="2K")
    assert tall.params["width"] % 16 == 0 and tall.params["height"] % 16 == 0
    assert abs(tall.params["width"] / tall.params["height"] - 2 / 3) < 0.01
    assert tall.expected_size == (tall.params["width"], tall.params["height"])


def test_no_size_leaves_the_pipeline_default() -> None:
    plan = _plan(SD)
    assert "width" not in plan.params and plan.expected_size is None
    assert "width" not in _plan(SD, size="auto").params


def test_size_and_aspect_ratio_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="--size or --aspect-ratio"):
        _plan(SD, size="512x512", aspect_ratio="1:1")


def test_kontext_gets_max_area_so_the_size_asked_is_the_size_made() -> None:
    plan = _plan(KONTEXT, size="768x512")
    assert plan.params["max_area"] == 768 * 512


# ---------------------------------------------------------------- parameters


def test_neutral_parameters_become_pipeline_kwargs() -> None:
    plan = _plan(SD, steps=20, guidance_scale=6.5, negative_prompt="blurry", n=3, seed=42)
    assert plan.params == {"num_inference_steps": 20, "guidance_scale": 6.5, "negative_prompt": "blurry",
                           "num_images_per_prompt": 3, "seed": 42}
    assert len(plan.calls) == 1  # n images in one call, each with its own generator


def test_flux_negative_prompt_needs_true_cfg() -> None:
    with pytest.raises(ConfigError, match="true_cfg_scale"):
        _plan(FLUX, negative_prompt="blurry")
    plan = _plan(FLUX, negative_prompt="blurry", extra={"true_cfg_scale": 4})
    assert plan.params["negative_prompt"] == "blurry" and plan.params["true_cfg_scale"] == 4


def test_qwen_guidance_is_true_cfg_with_a_default_negative_prompt() -> None:
    plan = _plan(QWEN, guidance_scale=4.0)
    assert plan.params["true_cfg_scale"] == 4.0 and "guidance_scale" not in plan.params
    assert plan.params["negative_prompt"] == " "
    assert any("negative_prompt" in n for n in plan.notices)
    off = _plan(QWEN, guidance_scale=1.0)
    assert "negative_prompt" not in off.params
    with pytest.raises(ConfigError, match="not both"):
        _plan(QWEN, guidance_scale=4.0, extra={"true_cfg_scale": 5})


def test_cloud_only_parameters() -> None:
    with pytest.raises(ConfigError, match="style"):
        _plan(SD, style="vivid")
    with pytest.raises(ConfigError, match="transparent"):
        _plan(SD, background="transparent")
    plan = _plan(SD, quality="high", moderation="low")
    assert "quality" not in plan.params and "moderation" not in plan.params
    assert any("quality='high'" in n and "moderation='low'" in n for n in plan.notices)
    assert not _plan(SD, quality="auto", background="opaque").notices


def test_other_formats_are_converted_by_the_store() -> None:
    plan = _plan(SD, output_format="webp", compression=80)
    assert plan.convert_to == "webp" and "output_format" not in plan.params
    assert any("webp" in n and "80" in n for n in plan.notices)
    assert _plan(SD, output_format="png").convert_to is None


def test_param_passes_through_but_not_over_a_flag_or_a_row_field() -> None:
    plan = plan_diffusers(SD, ImageParams(extra={"strength": 0.5}), "edit",
                          signature=("StableDiffusionImg2ImgPipeline", {"strength", "eta", "prompt"}))
    assert plan.params["strength"] == 0.5
    with pytest.raises(ConfigError, match="use --steps"):
        _plan(SD, extra={"num_inference_steps": 3})
    with pytest.raises(ConfigError, match="set by pixelmill"):
        _plan(SD, extra={"generator": 3})
    with pytest.raises(ConfigError, match="StableDiffusionPipeline has no such argument; it takes eta"):
        plan_diffusers(SD, ImageParams(extra={"strength": 0.5}), "generate",
                       signature=("StableDiffusionPipeline", {"eta", "prompt"}))


def test_tasks_follow_the_family() -> None:
    assert "width" not in _plan(QWEN_EDIT, "edit").params
    with pytest.raises(ConfigError, match="cannot generate"):
        _plan(QWEN_EDIT, "generate")
    with pytest.raises(ConfigError, match="cannot variation"):
        _plan(SD, "variation")


# ---------------------------------------------------------------- reading a model folder


def _folder(root: Path, class_name: str, vae: dict[str, Any] | None = None,
            denoiser: tuple[str, dict[str, Any]] | None = None) -> Path:
    root.mkdir(parents=True)
    index: dict[str, Any] = {"_class_name": class_name}
    for sub, config in (("vae", vae), *([denoiser] if denoiser else [])):
        if config is not None:
            index[sub] = ["diffusers", "X"]
            (root / sub).mkdir()
            (root / sub / "config.json").write_text(json.dumps(config))
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def test_model_rules_come_from_its_configs(tmp_path: Path) -> None:
    sd2 = inspect_model(str(_folder(tmp_path / "sd2", "StableDiffusionPipeline",
                                    vae={"block_out_channels": [128, 256, 512, 512]},
                                    denoiser=("unet", {"sample_size": 96}))))
    assert (sd2.family.key, sd2.multiple, sd2.native) == ("stable-diffusion", 8, 768)
    flux = inspect_model(str(_folder(tmp_path / "flux", "FluxPipeline", vae={"block_out_channels": [1, 2, 3, 4]})))
    assert (flux.multiple, flux.native) == (16, 1024)
    qwen = inspect_model(str(_folder(tmp_path / "qwen", "QwenImageEditPipeline",
                                     vae={"temperal_downsample": [False, True, True]})))
    assert (qwen.family.key, qwen.multiple, qwen.family.tasks()) == ("qwen-image-edit", 16, ("edit",))
    # The pipeline's own check (8 for Stable Diffusion) holds under a smaller VAE factor; a larger one raises it.
    tiny = inspect_model(str(_folder(tmp_path / "tiny", "StableDiffusionPipeline",
                                     vae={"block_out_channels": [8, 16]}, denoiser=("unet", {"sample_size": 16}))))
    assert (tiny.multiple, tiny.native) == (8, 32)
    deep = inspect_model(str(_folder(tmp_path / "deep", "StableDiffusionPipeline",
                                     vae={"block_out_channels": [1, 2, 3, 4, 5]})))
    assert deep.multiple == 16
    # A model saved as its image-to-image variant is still of its family; without configs: the family's rules.
    variant = inspect_model(str(_folder(tmp_path / "xl", "StableDiffusionXLImg2ImgPipeline")))
    assert (variant.family.key, variant.multiple, variant.native) == ("sdxl", 8, 1024)


def test_unreadable_models_say_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such folder, and not a hub id"):
        inspect_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"without model_index\.json"):
        inspect_model(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"not supported.*FluxPipeline"):
        inspect_model(str(_folder(tmp_path / "video", "WanPipeline")))


# ---------------------------------------------------------------- options


def test_options_are_checked() -> None:
    assert parse_options({"dtype": "bf16", "batch_size": 4}).dtype == "bfloat16"
    with pytest.raises(ConfigError, match="batch_sise"):
        parse_options({"batch_sise": 4})
    with pytest.raises(ConfigError, match="dtype"):
        parse_options({"dtype": "int4"})


def test_device_lists() -> None:
    assert device_list("auto", 0, False) == ["cpu"]
    assert device_list("auto", 2, False) == ["cuda:0", "cuda:1"]
    assert device_list("0,1", 2, False) == ["cuda:0", "cuda:1"]
    assert device_list(["cuda:1"], 2, False) == ["cuda:1"]
    assert device_list(1, 4, False) == ["cuda:0"]
    with pytest.raises(ConfigError, match="has 1 GPU"):
        device_list("cuda:1", 1, False)
    with pytest.raises(ConfigError, match="twice"):
        device_list("0,cuda:0", 1, False)
    with pytest.raises(ConfigError, match="use devices=cpu"):
        device_list(2, 0, False)


# ---------------------------------------------------------------- the table against the installed diffusers


def test_family_table_matches_the_installed_diffusers() -> None:
    diffusers = pytest.importorskip("diffusers")
    for family in FAMILIES:
        for name in family.classes():
            cls = getattr(diffusers, name)
            params = inspect.signature(cls.__call__).parameters
            assert "negative_prompt" in params, name
            assert family.guidance in params, (name, family.guidance)
            assert {"prompt", "generator", "num_images_per_prompt", "output_type", "num_inference_steps"} <= set(
                params), name
            if name in (family.edit, family.inpaint):
                assert "image" in params, name
            if name == family.inpaint:
                assert "mask_image" in params, name
            if family.negative_prompt == "true_cfg":
                assert "true_cfg_scale" in params, name
            if family.area_kwarg:
                assert family.area_kwarg in params, name
