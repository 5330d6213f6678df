"""Neutral image parameters -> diffusers pipeline kwargs, for one local model (`--provider diffusers`).

`plan_diffusers` runs once per step before anything is loaded or generated, and raises `ConfigError` for what
the model's pipeline cannot do. The plan's parameters are the pipeline's own kwarg names (what a user of
diffusers would write), so the row's `pixelmill.parameters` reads as the call that was made.

Decisions worth knowing (each is also a notice or an error message the user sees):
- Sizes: `--size WxH` is rounded to the model's multiple (the VAE factor times the latent patch: 8 for Stable
  Diffusion 1.x/2.x and XL, 16 for SD3, FLUX.1 and Qwen-Image), with a notice when it moved. `--aspect-ratio`
  and `--resolution` become a size: the resolution is a pixel budget (512 -> 512², 1K -> 1024², 2K -> 2048²,
  4K -> 3840x2160 worth), by default the model's own square (512² for SD 1.x, 1024² for most others). Without
  any of them the pipeline's default size is used (for edits: the input image's size). `--size` with
  `--aspect-ratio` is an error (say one).
- FLUX.1 Kontext rescales to its `max_area`: with a size, `max_area` is sent as width x height so the size
  asked is the size made.
- `--steps` -> `num_inference_steps`; `--guidance-scale` -> `guidance_scale`, or `true_cfg_scale` for
  Qwen-Image (whose real classifier-free guidance needs a negative prompt: " " is sent when none is given, as in
  the model's own examples, with a notice; `--guidance-scale 1` turns it off).
- `--negative-prompt`: taken by Stable Diffusion, SDXL, SD3 and Qwen-Image. FLUX.1 takes it only with true
  CFG, which doubles the compute: without `--param true_cfg_scale=N` (N > 1) it is a `ConfigError` saying so,
  since it would be silently ignored.
- `--n` -> `num_images_per_prompt` in one call; `--seed` -> `seed`: image i of a row uses seed + i (a
  per-image generator), so the same seed gives the same image whatever the batch. Without a seed the provider
  derives one per row (recorded in the row's `pixelmill.response.seed`).
- Cloud-only parameters: `style` and a transparent `background` change what the image is and local models
  cannot do them: `ConfigError`. `quality`, `moderation`, `input_fidelity` are hints with no local meaning:
  not sent, said once in a notice (a pipeline file can then keep one preset for every provider).
  `--output-format jpeg|webp` is a conversion by the store (`WirePlan.convert_to`; pipelines make PNG), at
  `--compression` when given.
- `--param KEY=VALUE` is sent to the pipeline unchanged (`strength`, `true_cfg_scale`, `max_sequence_length`,
  `eta`, ...), checked against the pipeline's signature when the provider knows it; keys that a flag owns
  (`height`, `num_inference_steps`, ...) or that the provider sets per row (`prompt`, `image`, `generator`)
  are errors naming the flag to use.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from pixelmill.errors import ConfigError
from pixelmill.params import ImageParams, WirePlan, parse_ratio, parse_size
from pixelmill.providers.base import Task
from pixelmill.providers.diffusers.families import LocalModel

__all__ = ["plan_diffusers", "round_size"]

_RESOLUTION_PIXELS = {"512": 512 * 512, "1K": 1024 * 1024, "2K": 2048 * 2048, "4K": 3840 * 2160}
# Pipeline kwargs that a flag owns: --param cannot set them behind the flag's back.
_FLAG_OWNED = {
    "height": "--size", "width": "--size", "num_inference_steps": "--steps", "guidance_scale": "--guidance-scale",
    "negative_prompt": "--negative-prompt", "num_images_per_prompt": "--n", "seed": "--seed",
}
# Kwargs the provider sets per row or per batch.
_PROVIDER_OWNED = ("prompt", "prompt_embeds", "image", "mask_image", "generator", "latents", "output_type",
                   "return_dict", "callback_on_step_end", "negative_prompt_embeds", "pooled_prompt_embeds")


def plan_diffusers(model: LocalModel, params: ImageParams, task: Task, *,
                   signature: tuple[str, Collection[str]] | None = None) -> WirePlan:
    """The pipeline kwargs for `task` on `model` (one call per row), with notices for approximations.
    `signature` is the pipeline class for the task and its kwargs, when known: `--param` keys outside them
    are refused."""
    family = model.family
    if task not in family.tasks():
        can = " and ".join(family.tasks())
        raise ConfigError(f"{model.name} is a {model.describe()} model: it cannot {task}; it can {can}")
    plan = WirePlan(calls=[])
    _refuse_cloud_only(model, params, plan)
    wire: dict[str, Any] = {}

    size = _size(model, params, plan)
    if size is not None:
        wire["width"], wire["height"] = size
        if family.area_kwarg:
            wire[family.area_kwarg] = size[0] * size[1]
        plan.expected_size = size
    if params.steps is not None:
        wire["num_inference_steps"] = params.steps
    if params.guidance_scale is not None:
        if family.guidance in params.extra:
            raise ConfigError(f"give --guidance-scale or --param {family.guidance}, not both "
                              f"(for {model.describe()} they are the same setting)")
        wire[family.guidance] = params.guidance_scale
    negative = _negative_prompt(model, params, plan)
    if negative is not None:
        wire["negative_prompt"] = negative
    wire["num_images_per_prompt"] = params.n or 1
    if params.seed is not None:
        wire["seed"] = params.seed
    wire.update(_extra(params.extra, signature))

    if params.output_format not in (None, "png"):
        plan.convert_to = params.output_format
        level = f" at compression {params.compression}" if params.compression is not None else ""
        plan.notices.append(f"local pipelines make PNG: converted to {params.output_format}{level} when saved")
    plan.calls.append(wire)
    return plan


def round_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """Each side to the nearest multiple, halves up (and at least one multiple)."""
    def side(value: int) -> int:
        return max(multiple, int(value / multiple + 0.5) * multiple)

    return side(width), side(height)


def _size(model: LocalModel, params: ImageParams, plan: WirePlan) -> tuple[int, int] | None:
    m = model.multiple
    if params.size is not None and params.size != "auto":
        if params.aspect_ratio is not None:
            raise ConfigError(f"give --size or --aspect-ratio, not both (got {params.size} and "
                              f"{params.aspect_ratio})")
        width, height = parse_size(params.size)
        rounded = round_size(width, height, m)
        if rounded != (width, height):
            plan.notices.append(f"size {width}x{height} is not a multiple of {m} for {model.describe()}: "
                                f"sending {rounded[0]}x{rounded[1]}")
        return rounded
    if params.aspect_ratio is None and params.resolution is None:
        return None
    pixels = _RESOLUTION_PIXELS[params.resolution] if params.resolution else model.native**2
    ratio = parse_ratio(params.aspect_ratio) if params.aspect_ratio else 1.0
    return round_size(round(math.sqrt(pixels * ratio)), round(math.sqrt(pixels / ratio)), m)


def _negative_prompt(model: LocalModel, params: ImageParams, plan: WirePlan) -> str | None:
    family = model.family
    if params.negative_prompt is not None and family.negative_prompt == "true_cfg":
        cfg = params.extra.get("true_cfg_scale")
        if not isinstance(cfg, int | float) or cfg <= 1:
            raise ConfigError(
                f"{model.describe()} uses a negative prompt only with true classifier-free guidance, which doubles "
                "the compute: add --param true_cfg_scale=4 (any value above 1), or drop --negative-prompt"
            )
    if params.negative_prompt is None and family.default_negative is not None:
        cfg = params.guidance_scale if params.guidance_scale is not None else params.extra.get(family.guidance)
        if isinstance(cfg, int | float) and cfg <= 1:
            return None  # guidance off: no negative branch to run
        plan.notices.append(f"{model.describe()}: sending negative_prompt={family.default_negative!r} so that its "
                            "guidance works (as in the model's examples); --guidance-scale 1 turns guidance off")
        return family.default_negative
    return params.negative_prompt


def _refuse_cloud_only(model: LocalModel, params: ImageParams, plan: WirePlan) -> None:
    if params.style is not None:
        raise ConfigError(f"{model.name} does not take style={params.style!r}: local pipelines have no style "
                          "presets; describe the style in the prompt instead")
    if params.background not in (None, "auto", "opaque"):
        raise ConfigError(f"{model.name} does not take background={params.background!r}: local pipelines make "
                          "opaque images; use a GPT image model (--provider openai) for transparent backgrounds")
    unsent = [f"{name}={value!r}" for name, value in (
        ("quality", None if params.quality == "auto" else params.quality),
        ("moderation", params.moderation),
        ("input_fidelity", params.input_fidelity),
        ("compression", None if params.output_format not in (None, "png") else params.compression),
    ) if value is not None]
    if unsent:
        plan.notices.append(f"not sent to {model.name}: {', '.join(unsent)} (no such setting in local pipelines; "
                            "--steps is the closest to quality)")


def _extra(extra: dict[str, Any], signature: tuple[str, Collection[str]] | None) -> dict[str, Any]:
    for key in extra:
        if key in _FLAG_OWNED:
            raise ConfigError(f"--param {key}: use {_FLAG_OWNED[key]} instead")
        if key in _PROVIDER_OWNED:
            raise ConfigError(f"--param {key}: set by pixelmill from each row; it cannot be given")
        if signature is not None and key not in signature[1]:
            takes = sorted(k for k in signature[1] if k not in _PROVIDER_OWNED and k not in _FLAG_OWNED)
            raise ConfigError(f"--param {key}: {signature[0]} has no such argument; it takes {', '.join(takes)}")
    return dict(extra)
