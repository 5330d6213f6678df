"""Neutral image parameters -> Black Forest Labs inputs, per model (reference async-apis.md 5.2).

`plan_bfl` runs once per step before anything is sent and raises `ConfigError` naming the model, the parameter
and what it allows. Sizes, formats and input-image counts are in `models.toml`; which inputs each model reads is
here (`MODELS`).

Decisions:
- One image per job: `--n N` is sent as N jobs (a notice says so), each journaled on its own.
- Size: FLUX1.1 [pro], FLUX.1 [dev] and FLUX.2 take `width`/`height` within the table's free-size rule (a size
  that breaks it is a `ConfigError` naming the rule; never rounded silently); `--aspect-ratio` / `--resolution`
  alone become the width and height of that ratio at that pixel budget (1K by default), rounded to the model's
  multiple. Ultra and Kontext take `aspect_ratio` from a list: `--size` / `--resolution` are refused there.
- `--steps` -> `steps`, `--guidance-scale` -> `guidance` (FLUX.1 [dev] only); `--seed` -> `seed`;
  `--negative-prompt` is refused (no BFL model takes one).
- `--output-format`: jpeg or png (ultra: webp too); webp elsewhere is asked as png and converted by the store.
- `--param` passes through last; `safety_tolerance` is checked against the model's range (0-6; Kontext 0-2,
  FLUX.2 0-5: what BFL's schemas say).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pixelmill.errors import ConfigError
from pixelmill.models.table import FreeSize, ModelSpec
from pixelmill.params import ImageParams, WirePlan, allowed, parse_ratio, parse_size
from pixelmill.providers.base import Task

__all__ = ["MODELS", "BflModel", "plan_bfl"]


@dataclass(frozen=True, slots=True)
class BflModel:
    """Which inputs one BFL endpoint reads."""

    ratio: bool = False  # `aspect_ratio` instead of width/height
    steps: tuple[int, int] | None = None
    guidance: tuple[float, float] | None = None
    tolerance: int = 6  # safety_tolerance from 0 to this
    input_images: tuple[str, ...] = ()  # the edit's input fields, in order


_FLUX2_INPUTS = ("input_image", *(f"input_image_{i}" for i in range(2, 9)))
MODELS: dict[str, BflModel] = {
    "flux-pro-1.1": BflModel(),
    "flux-pro-1.1-ultra": BflModel(ratio=True),
    "flux-kontext-pro": BflModel(ratio=True, tolerance=2, input_images=("input_image",)),
    "flux-2-pro": BflModel(tolerance=5, input_images=_FLUX2_INPUTS),
    "flux-dev": BflModel(steps=(1, 50), guidance=(1.5, 5.0)),
}
# A model the table does not list (`flux-2-max`, `flux-kontext-max`, ...): width/height, FLUX.2's inputs.
_UNKNOWN = BflModel(steps=(1, 50), guidance=(1.0, 10.0), input_images=_FLUX2_INPUTS)
_RESOLUTION_PIXELS = {"512": 512 * 512, "1K": 1024 * 1024, "2K": 2048 * 2048, "4K": 3840 * 2160}
_RESERVED = ("prompt", *_FLUX2_INPUTS)
_NOT_BFL = ("quality", "style", "background", "compression", "moderation", "input_fidelity")
_UNKNOWN_RULE = FreeSize(multiple=16, min_ratio=0.0, max_ratio=1e9, max_width=100000, max_height=100000,
                         max_pixels=10**10)


def model_inputs(spec: ModelSpec) -> BflModel:
    return MODELS.get(spec.name, _UNKNOWN) if spec.known else _UNKNOWN


def plan_bfl(spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
    """The BFL inputs for `task` on `spec`, one dict per job."""
    model = model_inputs(spec)
    if task not in spec.tasks:
        raise ConfigError(f"{spec.name} does not do {task} (it does: {', '.join(spec.tasks)}); for edits on BFL "
                          "use flux-kontext-pro or flux-2-pro")
    for name in _NOT_BFL:
        if getattr(params, name) is not None:
            raise ConfigError(f"{spec.name} does not take {name} (no BFL model has it): remove "
                              f"--{name.replace('_', '-')}")
    plan = WirePlan(calls=[])
    wire: dict[str, Any] = {}
    _size(spec, model, params, wire, plan)
    if params.seed is not None:
        wire["seed"] = params.seed
    _numbers(spec, model, params, wire)
    _format(spec, params, wire, plan)
    reserved = sorted(set(params.extra) & set(_RESERVED))
    if reserved:
        raise ConfigError(f"--param cannot set {', '.join(reserved)} on BFL: pixelmill sets them from the row")
    if "safety_tolerance" in params.extra:
        value = params.extra["safety_tolerance"]
        choices = tuple(str(i) for i in range(model.tolerance + 1))
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= model.tolerance:
            raise allowed(spec.name, "safety_tolerance", value, choices)
    wire.update(params.extra)  # the user's word wins
    jobs = params.n or 1
    if jobs > 1:
        plan.notices.append(f"{spec.name} makes one image per job: n={jobs} is sent as {jobs} jobs")
    plan.calls = [dict(wire) for _ in range(jobs)]
    return plan


def _size(spec: ModelSpec, model: BflModel, params: ImageParams, wire: dict[str, Any], plan: WirePlan) -> None:
    size, ratio_text, resolution = params.size, params.aspect_ratio, params.resolution
    if size == "auto":
        raise allowed(spec.name, "size", size, () if model.ratio else ("WIDTHxHEIGHT",))
    if model.ratio:
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
        return  # the model's default (1024x768 for FLUX1.1 [pro])
    rule = spec.free_size if spec.known and spec.free_size is not None else _UNKNOWN_RULE
    if size is not None:
        width, height = parse_size(size)
        if ratio_text is not None and abs(math.log(width / height) - math.log(parse_ratio(ratio_text))) > 0.02:
            raise ConfigError(f"size {size} and aspect ratio {ratio_text} disagree: give one of them")
    else:
        ratio = parse_ratio(ratio_text) if ratio_text is not None else 1.0
        pixels = min(_RESOLUTION_PIXELS[resolution or "1K"], rule.max_pixels)
        w, h = math.sqrt(pixels * ratio), math.sqrt(pixels / ratio)
        scale = min(1.0, rule.max_width / w, rule.max_height / h)
        m = rule.multiple
        width, height = (max(m, round(w * scale / m) * m), max(m, round(h * scale / m) * m))
        if rule.problem(width, height) is not None:  # rounding up passed a limit: round down instead
            width, height = max(m, int(w * scale // m) * m), max(m, int(h * scale // m) * m)
    problem = rule.problem(width, height)
    if problem is not None:
        raise ConfigError(f"{spec.name} does not take size {width}x{height}: {problem}")
    wire["width"], wire["height"] = width, height
    plan.expected_size = (width, height)


def _numbers(spec: ModelSpec, model: BflModel, params: ImageParams, wire: dict[str, Any]) -> None:
    if params.steps is not None:
        if model.steps is None:
            raise ConfigError(f"{spec.name} does not take steps: remove --steps (flux-dev takes them)")
        if not model.steps[0] <= params.steps <= model.steps[1]:
            raise ConfigError(f"{spec.name} does not take steps={params.steps}; allowed: {model.steps[0]} to "
                              f"{model.steps[1]}")
        wire["steps"] = params.steps
    if params.guidance_scale is not None:
        if model.guidance is None:
            raise ConfigError(f"{spec.name} does not take guidance_scale: remove --guidance-scale (flux-dev "
                              "takes it)")
        low, high = model.guidance
        if not low <= params.guidance_scale <= high:
            raise ConfigError(f"{spec.name} does not take guidance_scale={params.guidance_scale:g}; allowed: "
                              f"{low:g} to {high:g}")
        wire["guidance"] = params.guidance_scale
    if params.negative_prompt is not None:
        raise ConfigError(f"{spec.name} does not take negative_prompt (no BFL model has one): remove "
                          "--negative-prompt")


def _format(spec: ModelSpec, params: ImageParams, wire: dict[str, Any], plan: WirePlan) -> None:
    fmt = params.output_format
    if fmt is None:
        return
    formats = spec.output_formats if spec.known and spec.output_formats else ("jpeg", "png")
    if fmt not in formats:
        plan.convert_to = fmt
        plan.notices.append(f"{spec.name} returns {' or '.join(formats)}: asking for png, converting to {fmt}")
        fmt = "png"
    wire["output_format"] = fmt
