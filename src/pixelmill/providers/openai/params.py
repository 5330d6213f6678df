"""Neutral image parameters -> OpenAI Images API values, per model of the table (OpenAI, Azure, compatible).

`plan_openai` runs once per step before anything is sent and raises `ConfigError` for what the model cannot
do; `check_prompt` and `check_inputs` run per row and raise `InputError` naming the field.

Decisions worth knowing (each is also a notice or an error message the user sees):
- Sizes, models with a free size rule (gpt-image-2): the size is sent exactly, for generations and multipart
  edits alike (the spec admits free sizes for both). A size that breaks the rule (sides divisible by 16, ratio
  within 1:3..3:1, pixel and edge limits) is a `ConfigError` naming the rule and the nearest valid size; it is
  never rounded silently, because the size is part of the dataset the user asked for.
- Sizes, models with a size list (gpt-image-1.x, dall-e): the nearest listed size by aspect ratio (then by
  pixel count), with a one-line notice when it is not the one asked for.
- `--aspect-ratio` and `--resolution` become a size. Free-size models: `--resolution` is a pixel budget
  (512 -> 512², 1K -> 1024², 2K -> 2048², 4K -> 3840x2160 worth), default 1K, fitted to the ratio and rounded
  to the model's multiple. List models: the nearest listed size.
- `n` above what one call returns (10) is split over several calls (`split_n`), each journaled; a model that
  makes one image per request (dall-e-3) refuses n > 1 before anything is sent.
- `seed`, `steps`, `guidance_scale`, `negative_prompt` are not OpenAI parameters: a `ConfigError` for the
  table's models; for models the table does not know (OpenAI-compatible servers) they are sent under those
  names, since such servers often take them. `--param KEY=VALUE` is always sent unchanged.
- A format the model cannot return (dall-e: PNG only; Azure: no WebP) is asked as PNG and converted by the
  store (`WirePlan.convert_to`), with a notice.
- `response_format: b64_json` is sent to DALL·E models (no expiring URLs to fetch); never to GPT image models,
  which reject it, nor to unknown models (their URL answers are downloaded instead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pixelmill.errors import ConfigError, InputError
from pixelmill.models.table import FreeSize, ModelSpec
from pixelmill.params import ImageParams, WirePlan, allowed, parse_ratio, parse_size, split_n
from pixelmill.providers.base import InputImage, Task

__all__ = ["check_inputs", "check_prompt", "plan_openai"]

# Neutral quality -> the DALL·E vocabulary (standard / hd).
_NATIVE_QUALITY = {"high": "hd", "medium": "standard", "low": "standard"}
# Diffusion-style parameters that no OpenAI image model takes.
_NOT_OPENAI = ("seed", "steps", "guidance_scale", "negative_prompt")
# --resolution as a pixel budget for free-size models.
_RESOLUTION_PIXELS = {"512": 512 * 512, "1K": 1024 * 1024, "2K": 2048 * 2048, "4K": 3840 * 2160}
_DEFAULT_PIXELS = _RESOLUTION_PIXELS["1K"]
# Models the table does not know get sizes rounded to this multiple (what diffusion servers expect).
_UNKNOWN_MULTIPLE = 16
_AZURE_FORMATS = ("png", "jpeg")
# Wire fields the provider sets itself from the row; `--param` cannot replace them.
_RESERVED = ("model", "prompt", "image", "image[]", "images", "mask")
_MASK_MAX_BYTES = 4 * 1024 * 1024


def plan_openai(spec: ModelSpec, params: ImageParams, task: Task, *, azure: bool = False) -> WirePlan:
    """The wire parameters for `task` on `spec` (one dict per call), notices for approximations, and the
    format the store must convert to when the model cannot return the one asked for."""
    _check_task(spec, task, azure)
    plan = WirePlan(calls=[])
    wire: dict[str, Any] = {}
    _unsupported_family_params(spec, params, wire, plan)
    if task == "variation":
        _check_variation_params(spec, params)
    else:
        _quality(spec, params, wire, plan)
        _style(spec, params, wire)
        _background_format_compression(spec, params, wire, plan, azure)
        _moderation_fidelity(spec, params, task, wire, plan)
    size = _size(spec, params, plan)
    if size is not None:
        wire["size"] = size
        if size != "auto":
            plan.expected_size = parse_size(size)
    if spec.known and spec.response_formats:
        wire["response_format"] = "b64_json"

    reserved = sorted(set(params.extra) & set(_RESERVED))
    if reserved:
        raise ConfigError(
            f"--param cannot set {', '.join(reserved)}: use --model, the prompt and image fields instead"
        )
    if str(params.extra.get("stream", "")).lower() in ("true", "1"):
        raise ConfigError("--param stream=true is not supported: pixelmill reads whole answers; remove it")
    if params.n is not None and params.n > 1 and spec.known and spec.n_max == 1:
        # The model's own rule (dall-e-3), not a per-call cap: say so rather than pay for n separate prompts.
        raise ConfigError(f"{spec.name} makes one image per request: it does not take n={params.n}; allowed: 1")
    if params.n is None:
        counts: list[int | None] = [None]
    else:
        counts = list(split_n(params.n, spec.n_max))
        if len(counts) > 1:
            plan.notices.append(
                f"{spec.name} returns at most {spec.n_max} image(s) per call: n={params.n} is sent as "
                f"{len(counts)} calls"
            )
    for count in counts:
        call = dict(wire)
        if count is not None:
            call["n"] = count
        call.update(params.extra)  # passed through unchanged, last: the user's word wins
        plan.calls.append(call)
    return plan


def check_prompt(spec: ModelSpec, prompt: str) -> None:
    """One row's prompt against the model's limit. Raises `InputError(field="prompt")`."""
    if not prompt or not prompt.strip():
        raise InputError("the prompt is empty: give the row a prompt (or fix --prompt-field)", field="prompt")
    if len(prompt) > spec.max_prompt_chars:
        raise InputError(
            f"the prompt has {len(prompt)} characters; {spec.name} takes at most {spec.max_prompt_chars}: "
            "shorten it",
            field="prompt",
        )


def check_inputs(spec: ModelSpec, task: Task, images: Sequence[InputImage], mask: InputImage | None) -> None:
    """One row's input images and mask against the model's limits. Raises `InputError` naming the field."""
    if task == "generate":
        return
    if not images:
        raise InputError(f"{task} needs at least one input image: the row has none", field="images")
    limit = 1 if task == "variation" else spec.max_input_images
    if len(images) > limit:
        raise InputError(
            f"{spec.name} takes at most {limit} input image(s) for {task}; the row has {len(images)}",
            field="images",
        )
    for image in images:
        _check_image(spec, image, "images")
    if mask is None:
        return
    if task != "edit" or (spec.known and not spec.mask):
        raise InputError(f"{spec.name} takes no mask for {task}: remove the mask field", field="mask")
    if mask.mime != "image/png":
        raise InputError(
            f"the mask {mask.name} must be a PNG with transparency (got {mask.mime})", field="mask"
        )
    if spec.known and len(mask.data) > _MASK_MAX_BYTES:
        raise InputError(f"the mask {mask.name} is {len(mask.data)} bytes; the limit is 4 MB", field="mask")
    first = images[0]
    if mask.width and first.width and (mask.width, mask.height) != (first.width, first.height):
        raise InputError(
            f"the mask {mask.name} is {mask.width}x{mask.height} but the first image {first.name} is "
            f"{first.width}x{first.height}: they must match",
            field="mask",
        )


# ---------------------------------------------------------------- tasks and parameter groups


def _check_task(spec: ModelSpec, task: Task, azure: bool) -> None:
    if azure and task == "variation":
        raise ConfigError(
            "Azure OpenAI has no image variations endpoint: use the openai provider with dall-e-2"
        )
    if task not in spec.tasks:
        example = {"edit": "gpt-image-2", "variation": "dall-e-2"}.get(task, "gpt-image-2")
        raise ConfigError(
            f"{spec.name} does not do {task} (it does: {', '.join(spec.tasks)}); choose a model that does, "
            f"for example {example}"
        )


def _unsupported_family_params(
    spec: ModelSpec, params: ImageParams, wire: dict[str, Any], plan: WirePlan
) -> None:
    for name in _NOT_OPENAI:
        value = getattr(params, name)
        if value is None:
            continue
        if spec.known:
            raise ConfigError(
                f"{spec.name} does not take {name} (no OpenAI image model has it): "
                f"remove --{name.replace('_', '-')}"
            )
        wire[name] = value
        plan.notices.append(
            f"{name} is not an OpenAI parameter: sent as-is for {spec.name}, the server decides"
        )


def _check_variation_params(spec: ModelSpec, params: ImageParams) -> None:
    names = ("quality", "style", "background", "output_format", "compression", "moderation", "input_fidelity")
    given = [name for name in names if getattr(params, name) is not None]
    if given:
        raise ConfigError(f"variations on {spec.name} take only n and size; remove {', '.join(given)}")


def _quality(spec: ModelSpec, params: ImageParams, wire: dict[str, Any], plan: WirePlan) -> None:
    quality = params.quality
    if quality is None:
        return
    if not spec.known or quality in spec.qualities:
        wire["quality"] = quality
        return
    if quality == "auto" and spec.qualities:
        return  # the model's own default; DALL·E has no "auto" to send
    native = _NATIVE_QUALITY.get(quality)
    if native is not None and native in spec.qualities:
        wire["quality"] = native
        if quality == "low":
            plan.notices.append(f"{spec.name} has no low quality: sending {native}")
    elif native is not None and "standard" in spec.qualities:
        wire["quality"] = "standard"
        plan.notices.append(f"{spec.name} has one quality (standard): sending it for quality={quality}")
    else:
        raise allowed(spec.name, "quality", quality, spec.qualities)


def _style(spec: ModelSpec, params: ImageParams, wire: dict[str, Any]) -> None:
    if params.style is None:
        return
    if spec.known and params.style not in spec.styles:
        raise allowed(spec.name, "style", params.style, spec.styles)
    wire["style"] = params.style


def _background_format_compression(
    spec: ModelSpec, params: ImageParams, wire: dict[str, Any], plan: WirePlan, azure: bool
) -> None:
    fmt = params.output_format
    if params.background is not None:
        if spec.known and params.background not in spec.backgrounds:
            raise allowed(spec.name, "background", params.background, spec.backgrounds)
        if params.background == "transparent" and fmt == "jpeg":
            raise ConfigError("a transparent background needs output_format png or webp, not jpeg")
        wire["background"] = params.background

    sent = fmt
    if fmt is not None:
        if spec.known and not spec.output_formats:
            sent = None  # DALL·E: PNG only, nothing to ask for
            if fmt != "png":
                plan.convert_to = fmt
                plan.notices.append(f"{spec.name} returns PNG only: converting each image to {fmt}")
        elif azure and fmt not in _AZURE_FORMATS:
            sent = "png"
            plan.convert_to = fmt
            plan.notices.append(f"Azure OpenAI returns png or jpeg only: asking for png, converting to {fmt}")
        elif spec.known and fmt not in spec.output_formats:
            raise allowed(spec.name, "output_format", fmt, spec.output_formats)
        if sent is not None:
            wire["output_format"] = sent

    if params.compression is None:
        return
    if sent in ("jpeg", "webp"):
        wire["output_compression"] = params.compression
    elif plan.convert_to in ("jpeg", "webp"):
        plan.notices.append(
            f"compression is not sent (no {plan.convert_to} answers to ask for): it is applied when converting"
        )
    else:
        raise ConfigError(
            f"compression applies to jpeg or webp output only (output_format is "
            f"{fmt or 'png, the default'}): add --output-format jpeg or webp, or remove --compression"
        )


def _moderation_fidelity(
    spec: ModelSpec, params: ImageParams, task: Task, wire: dict[str, Any], plan: WirePlan
) -> None:
    if params.moderation is not None:
        if spec.known and not spec.moderation:
            raise allowed(spec.name, "moderation", params.moderation, ())
        if spec.known and params.moderation not in ("low", "auto"):
            raise allowed(spec.name, "moderation", params.moderation, ("low", "auto"))
        if task == "generate":
            wire["moderation"] = params.moderation
        else:
            plan.notices.append("moderation is a generations parameter (multipart edits have none): not sent")
    if params.input_fidelity is not None:
        if spec.known and not spec.input_fidelity:
            raise allowed(spec.name, "input_fidelity", params.input_fidelity, ())
        if spec.known and params.input_fidelity not in ("high", "low"):
            raise allowed(spec.name, "input_fidelity", params.input_fidelity, ("high", "low"))
        if task == "edit":
            wire["input_fidelity"] = params.input_fidelity
        else:
            plan.notices.append("input_fidelity applies to edits only: not sent for generations")


# ---------------------------------------------------------------- sizes


def _size(spec: ModelSpec, params: ImageParams, plan: WirePlan) -> str | None:
    size, ratio_text, resolution = params.size, params.aspect_ratio, params.resolution
    if size is not None and ratio_text is not None and size != "auto":
        w, h = parse_size(size)
        if abs(math.log(w / h) - math.log(parse_ratio(ratio_text))) > 0.02:
            raise ConfigError(f"size {size} and aspect ratio {ratio_text} disagree: give one of them")
    if size == "auto":
        if spec.known and "auto" not in spec.sizes:
            raise allowed(spec.name, "size", size, spec.sizes)
        return size
    if size is None and ratio_text is None and resolution is None:
        return None  # the model's default size

    if size is not None:
        width, height = parse_size(size)
        ratio, pixels = width / height, width * height
    else:
        ratio = parse_ratio(ratio_text) if ratio_text is not None else 1.0
        pixels = _RESOLUTION_PIXELS[resolution] if resolution is not None else _DEFAULT_PIXELS

    if not spec.known:
        if size is not None:
            return size
        rule = FreeSize(multiple=_UNKNOWN_MULTIPLE, min_ratio=0.0, max_ratio=1e9, max_width=100000,
                        max_height=100000, max_pixels=10**10, min_pixels=0)
        w, h = _fit_free(rule, ratio, pixels)
        return f"{w}x{h}"
    if spec.size_rule == "free" and spec.free_size is not None:
        rule = spec.free_size
        if size is not None:
            problem = rule.problem(width, height)
            if problem:
                hint = _fit_free(rule, ratio, pixels) if rule.min_ratio <= ratio <= rule.max_ratio else None
                nearest = f" (nearest valid size: {hint[0]}x{hint[1]})" if hint else ""
                raise ConfigError(f"{spec.name} cannot make {size}: {problem}{nearest}")
            return size
        if not rule.min_ratio <= ratio <= rule.max_ratio:
            raise ConfigError(
                f"{spec.name} takes aspect ratios between 1:{1 / rule.min_ratio:.3g} and "
                f"{rule.max_ratio:.3g}:1; {ratio_text} is outside"
            )
        w, h = _fit_free(rule, ratio, pixels)
        return f"{w}x{h}"
    return _nearest_listed(spec, size, ratio_text, resolution, ratio, pixels, plan)


def _nearest_listed(
    spec: ModelSpec, size: str | None, ratio_text: str | None, resolution: str | None,
    ratio: float, pixels: int, plan: WirePlan,
) -> str:
    choices = [s for s in spec.sizes if s != "auto"]
    if not choices:
        raise ConfigError(f"{spec.name} takes no size in the model table; remove --size / --aspect-ratio")
    if size in choices:
        return size
    # Nearest aspect ratio first (on a log scale), then the nearest pixel count; without an explicit size or
    # resolution prefer the largest of equally shaped sizes.
    want_pixels = size is not None or resolution is not None

    def distance(choice: str) -> tuple[float, float]:
        w, h = parse_size(choice)
        by_ratio = round(abs(math.log(w / h) - math.log(ratio)), 6)
        by_pixels = abs(math.log(w * h / pixels)) if want_pixels else -w * h
        return by_ratio, by_pixels

    chosen = min(choices, key=distance)
    w, h = parse_size(chosen)
    asked = size or " ".join(x for x in (ratio_text and f"aspect ratio {ratio_text}",
                                          resolution and f"resolution {resolution}") if x)
    ratio_off = abs(math.log(w / h) - math.log(ratio)) > 0.01
    pixels_off = want_pixels and abs(math.log(w * h / pixels)) > math.log(1.5)
    if size is not None or ratio_off or pixels_off:
        plan.notices.append(
            f"{spec.name} takes only {', '.join(choices)}: sending {chosen} for {asked} (the nearest)"
        )
    return chosen


def _fit_free(rule: FreeSize, ratio: float, pixels: int) -> tuple[int, int]:
    """The size of `ratio` nearest to `pixels` that the rule allows, sides rounded to its multiple."""
    m = max(1, rule.multiple)
    pixels = min(max(pixels, rule.min_pixels), rule.max_pixels)
    w, h = math.sqrt(pixels * ratio), math.sqrt(pixels / ratio)
    scale = min(1.0, rule.max_width / w, rule.max_height / h)
    w, h = w * scale, h * scale
    best = (max(m, round(w / m) * m), max(m, round(h / m) * m))
    if rule.problem(*best) is None:
        return best
    for rounding in (math.floor, math.ceil):
        candidate = (max(m, int(rounding(w / m)) * m), max(m, int(rounding(h / m)) * m))
        if rule.problem(*candidate) is None:
            return candidate
    return best  # the caller's check reports what is wrong with it


def _check_image(spec: ModelSpec, image: InputImage, field: str) -> None:
    if not spec.known:
        return
    if spec.input_formats and image.mime not in spec.input_formats:
        raise InputError(
            f"{image.name} is {image.mime}; {spec.name} takes {', '.join(spec.input_formats)}", field=field
        )
    if len(image.data) > spec.max_input_image_bytes:
        raise InputError(
            f"{image.name} is {len(image.data)} bytes; {spec.name} takes at most "
            f"{spec.max_input_image_bytes}",
            field=field,
        )
    if spec.square_input and image.width and image.width != image.height:
        raise InputError(
            f"{image.name} is {image.width}x{image.height}; {spec.name} takes square images only", field=field
        )
