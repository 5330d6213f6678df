"""Neutral image parameters -> the `input` of a Replicate prediction, for one model.

Replicate models each have their own input schema (reference async-apis.md 4.6). The FLUX models the table
lists are mapped field by field; any other model (`owner/name`, `owner/name:version`, a bare version id) gets
the names most Cog image models use, with a notice, and `--param KEY=VALUE` passes anything else unchanged.

Decisions (each is a notice or an error the user sees):
- `n`: `num_outputs` (1-4 on flux-schnell and flux-dev); more than 4 is split over several predictions, each
  journaled. flux-1.1-pro makes one image per prediction: `n` becomes n predictions, with a notice.
- Sizes: flux-schnell and flux-dev take an `aspect_ratio` from their list and `megapixels` (`1` or `0.25`), no
  width/height: `--size WxH` becomes the nearest ratio and megapixel tier, with a notice when that is not the
  size asked for; `--resolution 512|1K` is the tier. flux-1.1-pro takes its ratios, or `aspect_ratio=custom`
  with `width`/`height` from 256 to 1440 in multiples of 32: a size that breaks that is refused with the
  nearest valid one (the API would round it silently).
- A ratio the model does not list, steps or guidance out of the model's range, a negative prompt, a format
  the model cannot make: `ConfigError` naming the model, the parameter and the allowed values.
- `--output-format jpeg` is sent as Replicate's `jpg`; `--compression` is `output_quality` (FLUX's default
  format is webp, so it applies unless png is asked for).
- Quality hints of other families (`quality`, `style`, `background`, `moderation`, `input_fidelity`) are
  refused for the table's models and left out, with a notice, for the others.

The plan's calls are the `input` objects sent, less the prompt and input image, which the row records as
`pixelmill.parameters`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pixelmill.errors import ConfigError, InputError
from pixelmill.params import ImageParams, WirePlan, allowed, nearest_ratio, parse_ratio, parse_size, split_n

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pixelmill.models.table import ModelSpec
    from pixelmill.providers.base import InputImage, Task

__all__ = ["InputRules", "check_inputs", "image_field", "plan_replicate", "rules_for"]


@dataclass(frozen=True, slots=True)
class InputRules:
    """The inputs of one model's schema that neutral parameters map to (the table holds the rest: ratios, n,
    formats, sizes, input-image limits)."""

    n_field: str | None = "num_outputs"  # None: one image per prediction
    steps: tuple[int, int] | None = None  # num_inference_steps range
    guidance: tuple[float, float] | None = None  # guidance range
    megapixels: bool = False  # `megapixels` 1 | 0.25 instead of a size
    custom_size: bool = False  # aspect_ratio=custom with width/height (the table's free_size)
    image_field: str | None = None  # the img2img input


# Read from the models' API pages (reference async-apis.md 4.6); the versions differ slightly, these are the
# ranges every listed version accepts.
_RULES: dict[str, InputRules] = {
    "black-forest-labs/flux-schnell": InputRules(steps=(1, 4), megapixels=True),
    "black-forest-labs/flux-dev": InputRules(steps=(1, 50), guidance=(0.0, 10.0), megapixels=True,
                                             image_field="image"),
    "black-forest-labs/flux-1.1-pro": InputRules(n_field=None, custom_size=True),
}
# Models the table does not know: the names most Cog image models use.
_GENERIC = InputRules(image_field="image")
_MEGAPIXELS = {"512": "0.25", "1K": "1"}
_WIRE_FORMAT = {"png": "png", "jpeg": "jpg", "webp": "webp"}
# Hints other families take that no Replicate image input means.
_FOREIGN = ("quality", "style", "background", "moderation", "input_fidelity")


def rules_for(spec: ModelSpec) -> InputRules:
    return _RULES.get(spec.name, _GENERIC) if spec.known else _GENERIC


def image_field(spec: ModelSpec) -> str:
    return rules_for(spec).image_field or "image"


def plan_replicate(spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
    """The `input` objects (one per prediction) that `params` become for `spec`; `ConfigError` for what the
    model cannot do."""
    if task not in spec.tasks:
        raise ConfigError(f"{spec.name} does not do {task} on Replicate (it does: {', '.join(spec.tasks)}); "
                          "black-forest-labs/flux-dev edits an input image")
    rules = rules_for(spec)
    plan = WirePlan(calls=[])
    wire: dict[str, Any] = {}
    _foreign(spec, params, plan)
    _diffusion(spec, rules, params, wire, plan)
    _format(spec, params, wire, plan)
    _size(spec, rules, params, wire, plan)
    reserved = sorted({"prompt", image_field(spec)} & set(params.extra))
    if reserved:
        raise ConfigError(f"--param cannot set {', '.join(reserved)} on {spec.name}: they come from the row's "
                          "prompt and image fields")
    for count in _counts(spec, rules, params, plan):
        call = dict(wire)
        if count is not None and rules.n_field is not None:
            call[rules.n_field] = count
        call.update(params.extra)  # passed through unchanged, last: the user's word wins
        plan.calls.append(call)
    return plan


def check_inputs(spec: ModelSpec, task: Task, images: Sequence[InputImage]) -> None:
    """One row's input images against the model: Replicate takes them as data URLs, at most
    `max_input_image_bytes` each (256 KB for the table's models, the API's documented limit for data URLs)."""
    if task == "generate":
        return
    if not images:
        raise InputError(f"{task} needs an input image: the row has none", field="images")
    limit = spec.max_input_images if spec.known else 1
    if len(images) > limit:
        raise InputError(f"{spec.name} takes {limit} input image(s); the row has {len(images)}", field="images")
    for image in images:
        if spec.known and spec.input_formats and image.mime not in spec.input_formats:
            raise InputError(f"{image.name} is {image.mime}; {spec.name} takes {', '.join(spec.input_formats)}",
                             field="images")
        if spec.known and len(image.data) > spec.max_input_image_bytes:
            raise InputError(
                f"{image.name} is {len(image.data)} bytes; Replicate takes input images inline up to "
                f"{spec.max_input_image_bytes} bytes: save it smaller (JPEG or WebP) and run again",
                field="images",
            )


# ---------------------------------------------------------------- parameter groups


def _foreign(spec: ModelSpec, params: ImageParams, plan: WirePlan) -> None:
    for name in _FOREIGN:
        if getattr(params, name) is None:
            continue
        if spec.known:
            raise ConfigError(f"{spec.name} does not take {name} (Replicate's FLUX models have no such input): "
                              f"remove --{name.replace('_', '-')}")
        plan.notices.append(f"{name} has no common Replicate input: not sent to {spec.name} (use --param)")


def _diffusion(spec: ModelSpec, rules: InputRules, params: ImageParams, wire: dict[str, Any],
               plan: WirePlan) -> None:
    if params.seed is not None:
        wire["seed"] = params.seed
    if params.negative_prompt is not None:
        if spec.known:
            raise ConfigError(f"{spec.name} does not take negative_prompt: remove --negative-prompt")
        wire["negative_prompt"] = params.negative_prompt
    if params.steps is not None:
        if not spec.known:
            wire["num_inference_steps"] = params.steps
        elif rules.steps is None:
            raise ConfigError(f"{spec.name} does not take steps: remove --steps")
        elif not rules.steps[0] <= params.steps <= rules.steps[1]:
            raise ConfigError(f"{spec.name} does not take steps={params.steps}; allowed: "
                              f"{rules.steps[0]} to {rules.steps[1]}")
        else:
            wire["num_inference_steps"] = params.steps
    if params.guidance_scale is not None:
        if not spec.known:
            wire["guidance_scale"] = params.guidance_scale
        elif rules.guidance is None:
            raise ConfigError(f"{spec.name} does not take guidance_scale: remove --guidance-scale")
        elif not rules.guidance[0] <= params.guidance_scale <= rules.guidance[1]:
            raise ConfigError(f"{spec.name} does not take guidance_scale={params.guidance_scale:g}; allowed: "
                              f"{rules.guidance[0]:g} to {rules.guidance[1]:g}")
        else:
            wire["guidance"] = params.guidance_scale
    if not spec.known:
        sent = [n for n in ("seed", "negative_prompt", "num_inference_steps", "guidance_scale") if n in wire]
        if sent:
            plan.notices.append(f"{spec.name} is not in the model table: {', '.join(sent)} sent under the usual "
                                "Cog names; the model's schema decides (rename with --param)")


def _format(spec: ModelSpec, params: ImageParams, wire: dict[str, Any], plan: WirePlan) -> None:
    fmt = params.output_format
    if fmt is not None:
        if spec.known and fmt not in spec.output_formats:
            raise allowed(spec.name, "output_format", fmt, spec.output_formats)
        wire["output_format"] = _WIRE_FORMAT[fmt]
    if params.compression is not None:
        if fmt == "png":
            raise ConfigError("compression applies to jpeg or webp output only (output_format is png): remove "
                              "--compression or choose --output-format jpeg or webp")
        wire["output_quality"] = params.compression


def _counts(spec: ModelSpec, rules: InputRules, params: ImageParams, plan: WirePlan) -> list[int | None]:
    if params.n is None:
        return [None]
    if not spec.known:
        return [params.n]
    per_call = spec.n_max if rules.n_field is not None else 1
    counts = split_n(params.n, per_call)
    if len(counts) > 1:
        what = "makes one image per prediction" if rules.n_field is None else f"makes at most {per_call} images " \
            "per prediction"
        plan.notices.append(f"{spec.name} {what}: n={params.n} is sent as {len(counts)} predictions")
    return list(counts) if rules.n_field is not None else [None] * len(counts)


# ---------------------------------------------------------------- sizes


def _size(spec: ModelSpec, rules: InputRules, params: ImageParams, wire: dict[str, Any], plan: WirePlan) -> None:
    size, ratio_text, resolution = params.size, params.aspect_ratio, params.resolution
    if size == "auto":
        size = None
    if not spec.known:
        _size_unknown(spec, size, ratio_text, resolution, wire, plan)
        return
    if ratio_text is not None and ratio_text not in spec.aspect_ratios:
        raise allowed(spec.name, "aspect_ratio", ratio_text, spec.aspect_ratios)
    if rules.custom_size:
        _size_custom(spec, size, ratio_text, resolution, wire, plan)
    else:
        _size_megapixels(spec, size, ratio_text, resolution, wire, plan)


def _size_unknown(spec: ModelSpec, size: str | None, ratio_text: str | None, resolution: str | None,
                  wire: dict[str, Any], plan: WirePlan) -> None:
    if size is not None:
        wire["width"], wire["height"] = parse_size(size)
        plan.expected_size = (wire["width"], wire["height"])
    if ratio_text is not None:
        wire["aspect_ratio"] = ratio_text
    if resolution is not None:
        plan.notices.append(f"resolution has no common Replicate input: not sent to {spec.name} (use --size or "
                            "--param)")


def _size_custom(spec: ModelSpec, size: str | None, ratio_text: str | None, resolution: str | None,
                 wire: dict[str, Any], plan: WirePlan) -> None:
    """flux-1.1-pro: a listed ratio, or aspect_ratio=custom with an exact width and height."""
    if resolution not in (None, "1K"):
        raise allowed(spec.name, "resolution", resolution, ("1K",))
    rule = spec.free_size
    if size is not None and rule is not None:
        width, height = parse_size(size)
        if ratio_text is not None and abs(math.log(width / height) - math.log(parse_ratio(ratio_text))) > 0.02:
            raise ConfigError(f"size {size} and aspect ratio {ratio_text} disagree: give one of them")
        m = rule.multiple
        if width % m or height % m or not (256 <= width <= rule.max_width and 256 <= height <= rule.max_height):
            near_w = min(rule.max_width, max(256, round(width / m) * m))
            near_h = min(rule.max_height, max(256, round(height / m) * m))
            raise ConfigError(f"{spec.name} cannot make {size}: width and height must be multiples of {m} "
                              f"from 256 to {rule.max_width} (nearest valid size: {near_w}x{near_h})")
        wire.update({"aspect_ratio": "custom", "width": width, "height": height})
        plan.expected_size = (width, height)
        return
    if ratio_text is not None:
        wire["aspect_ratio"] = ratio_text
        plan.expected_size = spec.ratio_pixels.get(ratio_text)


def _size_megapixels(spec: ModelSpec, size: str | None, ratio_text: str | None, resolution: str | None,
                     wire: dict[str, Any], plan: WirePlan) -> None:
    """flux-schnell, flux-dev: a listed ratio and a megapixel tier (1 or 0.25), no width/height."""
    if resolution is not None and resolution not in _MEGAPIXELS:
        raise allowed(spec.name, "resolution", resolution, tuple(_MEGAPIXELS))
    tier = resolution
    if size is not None:
        width, height = parse_size(size)
        ratio = ratio_text or nearest_ratio(width / height, spec.aspect_ratios)
        if tier is None:
            # The tier whose pixel count is nearest on a log scale: 0.25 MP below 0.5 MP, else 1 MP.
            tier = "512" if width * height < 512 * 1024 else "1K"
        made = _tier_size(spec, ratio, tier)
        if made is not None and made != (width, height):
            plan.notices.append(f"{spec.name} takes an aspect ratio and 1 or 0.25 megapixels, not a size: sending "
                                f"aspect_ratio {ratio}, megapixels {_MEGAPIXELS[tier]} for {size} (it makes "
                                f"{made[0]}x{made[1]})")
        ratio_text = ratio
    if ratio_text is not None:
        wire["aspect_ratio"] = ratio_text
    if tier is not None:
        wire["megapixels"] = _MEGAPIXELS[tier]
    plan.expected_size = _tier_size(spec, ratio_text or "1:1", tier or "1K")


def _tier_size(spec: ModelSpec, ratio: str, tier: str) -> tuple[int, int] | None:
    base = spec.ratio_pixels.get(ratio)
    if base is None:
        return None
    if tier == "512":  # a quarter of the pixels: half each side, on the model's multiple of 16
        return (round(base[0] / 32) * 16, round(base[1] / 32) * 16)
    return base
