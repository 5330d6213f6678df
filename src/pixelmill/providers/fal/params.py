"""Neutral image parameters -> fal model inputs, per model (reference async-apis.md 3.8).

`plan_fal` runs once per step before anything is sent and raises `ConfigError` naming the model, the parameter
and what it allows. The models' sizes, counts and formats are in `models.toml`; which inputs each model reads is
here (`MODELS`), since fal's schemas differ per model in names, not only in ranges.

Decisions:
- Size: models with `image_size` take a preset (`square_hd`, `landscape_4_3`, ...) or `{width, height}`:
  `--size WxH` is sent as `{width, height}` (within the table's free-size rule, else a `ConfigError` naming it);
  `--aspect-ratio` alone becomes the preset of that ratio (1:1 -> square_hd, 4:3 -> landscape_4_3, ...), else
  `{width, height}` of about one megapixel; `--resolution` is a pixel budget (512 -> 512², 1K, 2K) fitted to the
  ratio. FLUX1.1 [pro] ultra and Kontext take `aspect_ratio` from a list instead: `--aspect-ratio` must be one of
  it, and `--size` / `--resolution` are refused (they choose no size).
- `--n` -> `num_images`, split over several jobs where the model caps it (`WirePlan`).
- `--steps` -> `num_inference_steps` (fast-lightning-sdxl: one of "1", "2", "4", "8", sent as a string);
  `--guidance-scale` -> `guidance_scale`; `--seed` -> `seed`; each refused where the model has no such input.
- `--output-format` -> `output_format` (`format` for fast-lightning-sdxl); webp, which fal's FLUX endpoints do
  not return, is asked as png and converted by the store.
- `--param` passes through last. `enable_safety_checker` and `safety_tolerance` are checked where given: the
  model must take them, and `safety_tolerance` must be "1".."6" (sent as a string, as fal's schema has it).
- Models the table does not know (any fal endpoint by id): sizes go as `image_size` `{width,height}` and the
  other parameters under fal's usual names; the endpoint decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pixelmill.errors import ConfigError
from pixelmill.models.table import ModelSpec
from pixelmill.params import ImageParams, WirePlan, allowed, nearest_ratio, parse_ratio, parse_size, split_n
from pixelmill.providers.base import Task

__all__ = ["MODELS", "FalModel", "plan_fal"]

SizeInput = Literal["image_size", "aspect_ratio"]


@dataclass(frozen=True, slots=True)
class FalModel:
    """Which inputs one fal endpoint reads."""

    size: SizeInput = "image_size"
    steps: tuple[int, int] | None = None  # num_inference_steps range
    step_choices: tuple[str, ...] = ()  # fast-lightning-sdxl's string enum
    guidance: tuple[float, float] | None = None  # guidance_scale range
    seed: bool = True
    safety_checker: bool = False  # enable_safety_checker
    safety_tolerance: bool = False
    format_field: str = "output_format"
    negative_prompt: bool = False
    image_field: str | None = None  # the edit's input image (Kontext: image_url)


# Ranges from fal's model pages (llms.txt) where given; guidance ranges are UNCONFIRMED (fal's schemas show
# defaults, 3.5, not bounds): 1-20 is what FLUX dev's playground allows.
MODELS: dict[str, FalModel] = {
    "fal-ai/flux/schnell": FalModel(steps=(1, 12), safety_checker=True),
    "fal-ai/flux/dev": FalModel(steps=(1, 50), guidance=(1.0, 20.0), safety_checker=True),
    "fal-ai/flux-pro/v1.1": FalModel(safety_tolerance=True),
    "fal-ai/flux-pro/v1.1-ultra": FalModel(size="aspect_ratio", safety_tolerance=True),
    "fal-ai/fast-lightning-sdxl": FalModel(step_choices=("1", "2", "4", "8"), safety_checker=True,
                                           format_field="format", negative_prompt=False),
    "fal-ai/flux-pro/kontext": FalModel(size="aspect_ratio", guidance=(1.0, 20.0), safety_tolerance=True,
                                        image_field="image_url"),
}
# A model fal serves that the table does not list: its usual input names, nothing refused.
_UNKNOWN = FalModel(steps=(1, 10**6), guidance=(-1e9, 1e9), safety_checker=True, safety_tolerance=True,
                    negative_prompt=True, image_field="image_url")
# Preset names by aspect ratio, and their pixels (fal's image_size enum).
PRESETS = {"1:1": "square_hd", "4:3": "landscape_4_3", "3:4": "portrait_4_3", "16:9": "landscape_16_9",
           "9:16": "portrait_16_9"}
_RESOLUTION_PIXELS = {"512": 512 * 512, "1K": 1024 * 1024, "2K": 2048 * 2048, "4K": 3840 * 2160}
_FORMATS = ("jpeg", "png")
_TOLERANCES = ("1", "2", "3", "4", "5", "6")
# Inputs the provider sets itself from the row.
_RESERVED = ("prompt", "image_url", "image_urls", "sync_mode")
_NOT_FAL = ("quality", "style", "background", "compression", "moderation", "input_fidelity")


def model_inputs(spec: ModelSpec) -> FalModel:
    return MODELS.get(spec.name, _UNKNOWN) if spec.known else _UNKNOWN


def plan_fal(spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
    """The fal inputs for `task` on `spec`, one dict per job."""
    model = model_inputs(spec)
    if task not in spec.tasks:
        raise ConfigError(f"{spec.name} does not do {task} (it does: {', '.join(spec.tasks)}); for edits on fal "
                          "use fal-ai/flux-pro/kontext")
    plan = WirePlan(calls=[])
    wire: dict[str, Any] = {}
    for name in _NOT_FAL:
        if getattr(params, name) is not None:
            raise ConfigError(f"{spec.name} does not take {name} (fal's FLUX and SDXL endpoints have no such "
                              f"input): remove --{name.replace('_', '-')}")
    _size(spec, model, params, wire, plan)
    _numbers(spec, model, params, wire)
    _format(spec, model, params, wire, plan)
    reserved = sorted(set(params.extra) & set(_RESERVED))
    if reserved:
        raise ConfigError(f"--param cannot set {', '.join(reserved)} on fal: pixelmill sets them from the row "
                          "(and never asks for sync_mode, whose data URIs are not kept by the queue)")
    extra = _safety(spec, model, dict(params.extra))
    if params.n is None:
        counts: list[int | None] = [None]
    else:
        counts = list(split_n(params.n, spec.n_max))
        if len(counts) > 1:
            plan.notices.append(f"{spec.name} returns at most {spec.n_max} image(s) per job: n={params.n} is sent "
                                f"as {len(counts)} jobs")
    for count in counts:
        call = dict(wire)
        if count is not None:
            call["num_images"] = count
        call.update(extra)  # the user's word wins
        plan.calls.append(call)
    return plan


def _size(spec: ModelSpec, model: FalModel, params: ImageParams, wire: dict[str, Any], plan: WirePlan) -> None:
    size, ratio_text, resolution = params.size, params.aspect_ratio, params.resolution
    if size == "auto":
        raise allowed(spec.name, "size", size, ("WIDTHxHEIGHT",) if model.size == "image_size" else ())
    if model.size == "aspect_ratio":
        if size is not None or resolution is not None:
            name = "size" if size is not None else "resolution"
            raise ConfigError(f"{spec.name} does not take {name}: it chooses its size from an aspect ratio; give "
                              f"--aspect-ratio, one of {', '.join(spec.aspect_ratios)}")
        if ratio_text is not None:
            if spec.aspect_ratios and ratio_text not in spec.aspect_ratios:
                raise allowed(spec.name, "aspect_ratio", ratio_text, spec.aspect_ratios)
            wire["aspect_ratio"] = ratio_text
        return
    if size is None and ratio_text is None and resolution is None:
        return  # the endpoint's default (landscape_4_3 for FLUX, square_hd for SDXL)
    if size is not None:
        width, height = parse_size(size)
        if ratio_text is not None and abs(math.log(width / height) - math.log(parse_ratio(ratio_text))) > 0.02:
            raise ConfigError(f"size {size} and aspect ratio {ratio_text} disagree: give one of them")
    else:
        ratio = parse_ratio(ratio_text) if ratio_text is not None else 1.0
        if resolution is None and ratio_text is not None:
            preset = PRESETS.get(nearest_ratio(ratio, tuple(PRESETS)))
            if preset is not None and abs(math.log(parse_ratio(_ratio_of(preset)) / ratio)) < 0.01:
                wire["image_size"] = preset
                return
        pixels = _RESOLUTION_PIXELS[resolution] if resolution is not None else 1024 * 1024
        multiple = spec.free_size.multiple if spec.free_size else 16
        width = max(multiple, round(math.sqrt(pixels * ratio) / multiple) * multiple)
        height = max(multiple, round(math.sqrt(pixels / ratio) / multiple) * multiple)
    problem = _free_problem(spec, width, height) if spec.known else None
    if problem is not None:
        raise ConfigError(f"{spec.name} does not take size {width}x{height}: {problem}")
    wire["image_size"] = {"width": width, "height": height}
    plan.expected_size = (width, height)


def _ratio_of(preset: str) -> str:
    return next(ratio for ratio, name in PRESETS.items() if name == preset)


def _free_problem(spec: ModelSpec, width: int, height: int) -> str | None:
    return spec.free_size.problem(width, height) if spec.free_size is not None else None


def _numbers(spec: ModelSpec, model: FalModel, params: ImageParams, wire: dict[str, Any]) -> None:
    if params.seed is not None:
        if not model.seed:
            raise allowed(spec.name, "seed", params.seed, ())
        wire["seed"] = params.seed
    if params.steps is not None:
        if model.step_choices:
            if str(params.steps) not in model.step_choices:
                raise allowed(spec.name, "steps", params.steps, model.step_choices)
            wire["num_inference_steps"] = str(params.steps)
        elif model.steps is None:
            raise ConfigError(f"{spec.name} does not take steps (it has no num_inference_steps input): remove "
                              "--steps")
        elif not model.steps[0] <= params.steps <= model.steps[1]:
            raise ConfigError(f"{spec.name} does not take steps={params.steps}; allowed: {model.steps[0]} to "
                              f"{model.steps[1]}")
        else:
            wire["num_inference_steps"] = params.steps
    if params.guidance_scale is not None:
        if model.guidance is None:
            raise ConfigError(f"{spec.name} does not take guidance_scale: remove --guidance-scale")
        low, high = model.guidance
        if not low <= params.guidance_scale <= high:
            raise ConfigError(f"{spec.name} does not take guidance_scale={params.guidance_scale:g}; allowed: "
                              f"{low:g} to {high:g}")
        wire["guidance_scale"] = params.guidance_scale
    if params.negative_prompt is not None:
        if not model.negative_prompt:
            raise ConfigError(f"{spec.name} does not take negative_prompt (FLUX and Lightning SDXL on fal have no "
                              "negative prompt): remove --negative-prompt")
        wire["negative_prompt"] = params.negative_prompt


def _format(spec: ModelSpec, model: FalModel, params: ImageParams, wire: dict[str, Any], plan: WirePlan) -> None:
    fmt = params.output_format
    if fmt is None:
        return
    formats = spec.output_formats if spec.known and spec.output_formats else _FORMATS
    if fmt not in formats:
        if "png" not in formats:
            raise allowed(spec.name, "output_format", fmt, formats)
        plan.convert_to = fmt
        plan.notices.append(f"{spec.name} returns {' or '.join(formats)}: asking for png, converting to {fmt}")
        fmt = "png"
    wire[model.format_field] = fmt


def _safety(spec: ModelSpec, model: FalModel, extra: dict[str, Any]) -> dict[str, Any]:
    if "enable_safety_checker" in extra:
        if not model.safety_checker:
            raise ConfigError(f"{spec.name} does not take enable_safety_checker"
                              + (" (it takes safety_tolerance, 1 to 6)" if model.safety_tolerance else ""))
        value = extra["enable_safety_checker"]
        if not isinstance(value, bool):
            raise allowed(spec.name, "enable_safety_checker", value, ("true", "false"))
    if "safety_tolerance" in extra:
        if not model.safety_tolerance:
            raise ConfigError(f"{spec.name} does not take safety_tolerance"
                              + (" (it takes enable_safety_checker=true|false)" if model.safety_checker else ""))
        value = str(extra["safety_tolerance"])
        if value not in _TOLERANCES:
            raise allowed(spec.name, "safety_tolerance", extra["safety_tolerance"], _TOLERANCES)
        extra["safety_tolerance"] = value  # fal's schema: a string enum
    return extra
