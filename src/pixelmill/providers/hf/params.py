"""Neutral image parameters -> the `parameters` of an HF text-to-image call (`{"inputs": prompt, "parameters":
{...}}`), the body the hf-inference route and dedicated Inference Endpoints take (reference async-apis.md 6.2).

The names are `huggingface_hub`'s `text_to_image`: `negative_prompt`, `width`, `height`,
`num_inference_steps`, `guidance_scale`, `seed`; `--param KEY=VALUE` adds any other (`scheduler`, ...).

- One image per call: `n` becomes n calls, with a notice.
- `--size WxH` is sent as `width`/`height`, checked against the table's free-size rule (multiple, range): a
  size that breaks it is refused with the nearest valid one. `--aspect-ratio` and `--resolution` (512, 1K, 2K
  as a pixel budget, 1K by default) become a size on the model's multiple.
- Steps, guidance out of the model's range, and a negative prompt on FLUX (which has none): `ConfigError`
  naming the model, the parameter and the allowed values. Models the table does not know get every value as
  given, with a notice.
- The route answers image bytes in the format the server picks: `--output-format` is applied by the store
  (`WirePlan.convert_to`), with `--compression` when converting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pixelmill.errors import ConfigError
from pixelmill.params import ImageParams, WirePlan, parse_ratio, parse_size, split_n

if TYPE_CHECKING:
    from pixelmill.models.table import ModelSpec
    from pixelmill.providers.base import Task

__all__ = ["hub_id", "plan_hf"]


@dataclass(frozen=True, slots=True)
class HfRules:
    steps: tuple[int, int] = (1, 100)
    guidance: tuple[float, float] = (0.0, 30.0)
    negative_prompt: bool = True


# By hub id (the table names them `<hub id>:hf-inference`). FLUX.1 pipelines take no negative prompt.
_RULES: dict[str, HfRules] = {
    "black-forest-labs/FLUX.1-schnell": HfRules(steps=(1, 50), guidance=(0.0, 20.0), negative_prompt=False),
    "black-forest-labs/FLUX.1-dev": HfRules(steps=(1, 100), guidance=(0.0, 20.0), negative_prompt=False),
    "stabilityai/stable-diffusion-xl-base-1.0": HfRules(),
}
_PIXELS = {"512": 512 * 512, "1K": 1024 * 1024, "2K": 2048 * 2048, "4K": 3840 * 2160}
_FOREIGN = ("quality", "style", "background", "moderation", "input_fidelity")


def hub_id(model: str) -> str:
    """`black-forest-labs/FLUX.1-dev:hf-inference` -> `black-forest-labs/FLUX.1-dev`."""
    return model.partition(":")[0]


def plan_hf(spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
    if task != "generate":
        raise ConfigError(f"{spec.name}: the Hugging Face text-to-image route generates only; for {task}, use a "
                          "provider that edits (for example --provider replicate --model black-forest-labs/flux-dev)")
    rules = _RULES.get(hub_id(spec.name)) if spec.known else None
    plan = WirePlan(calls=[])
    wire: dict[str, Any] = {}
    for name in _FOREIGN:
        if getattr(params, name) is not None:
            if spec.known:
                raise ConfigError(f"{spec.name} does not take {name}: remove --{name.replace('_', '-')}")
            plan.notices.append(f"{name} is not a text-to-image parameter: not sent to {spec.name}")
    if params.negative_prompt is not None:
        if rules is not None and not rules.negative_prompt:
            raise ConfigError(f"{spec.name} does not take negative_prompt (FLUX has none): remove --negative-prompt")
        wire["negative_prompt"] = params.negative_prompt
    if params.steps is not None:
        if rules is not None and not rules.steps[0] <= params.steps <= rules.steps[1]:
            raise ConfigError(f"{spec.name} does not take steps={params.steps}; allowed: {rules.steps[0]} to "
                              f"{rules.steps[1]}")
        wire["num_inference_steps"] = params.steps
    if params.guidance_scale is not None:
        if rules is not None and not rules.guidance[0] <= params.guidance_scale <= rules.guidance[1]:
            raise ConfigError(f"{spec.name} does not take guidance_scale={params.guidance_scale:g}; allowed: "
                              f"{rules.guidance[0]:g} to {rules.guidance[1]:g}")
        wire["guidance_scale"] = params.guidance_scale
    if params.seed is not None:
        wire["seed"] = params.seed
    size = _size(spec, params)
    if size is not None:
        wire["width"], wire["height"] = size
        plan.expected_size = size
    if params.output_format is not None:
        plan.convert_to = params.output_format
        plan.notices.append(f"the server picks the image format: each image is converted to {params.output_format}"
                            " if it is not one already")
    elif params.compression is not None:
        raise ConfigError("compression applies when converting to jpeg or webp: add --output-format jpeg or webp")
    if not spec.known and any(k in wire for k in ("negative_prompt", "num_inference_steps", "guidance_scale")):
        plan.notices.append(f"{spec.name} is not in the model table: its parameters are not checked")
    counts = split_n(params.n or 1, 1)
    if len(counts) > 1:
        plan.notices.append(f"{spec.name} makes one image per call: n={params.n} is sent as {len(counts)} calls")
    for _ in counts:
        plan.calls.append({**wire, **params.extra})  # --param last: the user's word wins
    return plan


def _size(spec: ModelSpec, params: ImageParams) -> tuple[int, int] | None:
    size, ratio_text, resolution = params.size, params.aspect_ratio, params.resolution
    if size == "auto":
        size = None
    rule = spec.free_size if spec.known else None
    if size is not None:
        width, height = parse_size(size)
        if ratio_text is not None and abs(math.log(width / height) - math.log(parse_ratio(ratio_text))) > 0.02:
            raise ConfigError(f"size {size} and aspect ratio {ratio_text} disagree: give one of them")
        if rule is not None:
            problem = _problem(spec, width, height)
            if problem:
                near = _fit(spec, width / height, width * height)
                raise ConfigError(f"{spec.name} cannot make {size}: {problem} (nearest valid size: "
                                  f"{near[0]}x{near[1]})")
        return width, height
    if ratio_text is None and resolution is None:
        return None  # the pipeline's default size
    ratio = parse_ratio(ratio_text) if ratio_text is not None else 1.0
    pixels = _PIXELS[resolution or "1K"]
    if rule is not None and pixels > rule.max_pixels:
        allowed = ", ".join(r for r, p in _PIXELS.items() if p <= rule.max_pixels)
        raise ConfigError(f"{spec.name} does not take resolution={resolution}; allowed: {allowed}")
    width, height = _fit(spec, ratio, pixels)
    if rule is not None and (problem := _problem(spec, width, height)):
        raise ConfigError(f"{spec.name} cannot make aspect ratio {ratio_text}: {problem}")
    return width, height


def _problem(spec: ModelSpec, width: int, height: int) -> str | None:
    rule = spec.free_size
    if rule is None:
        return None
    m = rule.multiple
    if width % m or height % m:
        return f"width and height must be multiples of {m}"
    if not rule.min_ratio <= width / height <= rule.max_ratio:
        return f"the aspect ratio must be between 1:{1 / rule.min_ratio:.3g} and {rule.max_ratio:.3g}:1"
    if width > rule.max_width or height > rule.max_height or width * height > rule.max_pixels:
        return f"at most {rule.max_width}x{rule.max_height} and {rule.max_pixels} pixels"
    if width * height < rule.min_pixels:
        return f"at least {rule.min_pixels} pixels"
    return None


def _fit(spec: ModelSpec, ratio: float, pixels: int) -> tuple[int, int]:
    """The size of `ratio` nearest `pixels`, on the model's multiple (16 for models the table does not know),
    within its limits."""
    rule = spec.free_size if spec.known else None
    m = rule.multiple if rule is not None else 16
    if rule is not None:
        pixels = min(max(pixels, rule.min_pixels), rule.max_pixels)
    w, h = math.sqrt(pixels * ratio), math.sqrt(pixels / ratio)
    if rule is not None:
        scale = min(1.0, rule.max_width / w, rule.max_height / h)
        w, h = w * scale, h * scale
    width, height = max(m, round(w / m) * m), max(m, round(h / m) * m)
    if rule is not None:
        width, height = min(width, rule.max_width), min(height, rule.max_height)
    return width, height
