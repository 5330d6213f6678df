"""Neutral image parameters -> the `generationConfig` of a Gemini `generateContent` call, for one model.

What a Gemini image model can be told is small: an aspect ratio, an image size tier (`512`, `1K`, `2K`, `4K`),
a seed, and its thinking level. Everything else is decided here, once per step, before anything is sent:

- `size WxH` becomes the nearest allowed aspect ratio and the nearest size tier (judged on the long side
  against the model's 1K pixel table), with a notice when that is not exactly the size asked for. An explicit
  `aspect_ratio` or `resolution` wins over what `size` implies.
- `resolution` is sent as `imageSize`. A model without size tiers (gemini-2.5-flash-image, fixed at about 1K)
  accepts `1K` (nothing is sent: that is what it makes) and refuses the others: asking for 4K and silently
  getting 1K would waste a paid run.
- `n` > 1 becomes n calls: Gemini returns one image per call.
- Hints that only tune quality (`quality`, `input_fidelity`, `moderation`) have no Gemini equivalent: a notice
  says they are not sent, so switching `--provider` needs no other change.
- `output_format` cannot be chosen on the Gemini API: the store converts the bytes (`WirePlan.convert_to`),
  at `compression` when given (without an output format, `compression` is noticed as not sent).
- What changes what the image is and cannot be done (style presets, transparent backgrounds, negative prompts,
  steps, guidance, masks, variations) stops the step with `ConfigError` naming the model, the parameter and
  what to do instead.
- `--param thinking_level=MINIMAL|HIGH` (and `include_thoughts`) become `thinkingConfig` on models that think;
  `--param` keys that name request-level fields (`safetySettings`, `systemInstruction`, ...) are kept in the
  plan and moved to the top of the request by the provider; every other key is copied into `generationConfig`
  unchanged.

The plan's calls are the `generationConfig` objects actually sent (plus those request-level keys), which the
row records as `pixelmill.parameters`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pixelmill.errors import ConfigError, InputError
from pixelmill.params import ImageParams, WirePlan, allowed, nearest_ratio, parse_ratio, parse_size, split_n

if TYPE_CHECKING:
    from pixelmill.models.table import ModelSpec
    from pixelmill.providers.base import InputImage, Task

# Every aspect ratio Gemini's image models take (python-genai's AspectRatio enum); used for models that the
# table does not list, whose own list is unknown.
KNOWN_RATIOS = (
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9", "1:4", "4:1", "1:8", "8:1",
)
# Side length of each size tier relative to the model's 1K pixel table.
TIER_SCALE = {"512": 0.5, "1K": 1.0, "2K": 2.0, "4K": 4.0}
# python-genai's ThinkingLevel values (the server decides which ones a model takes).
THINKING_LEVELS = ("MINIMAL", "LOW", "MEDIUM", "HIGH", "XHIGH")
# `--param` keys that are fields of the request itself, not of `generationConfig`.
REQUEST_LEVEL_KEYS = frozenset(
    {"safetySettings", "systemInstruction", "tools", "toolConfig", "cachedContent"}
)
# Gemini's `seed` is an int32.
_INT32 = (-(2**31), 2**31 - 1)


def plan_gemini(spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
    """The calls (one per image) and `generationConfig` that `params` become for `spec`; raises `ConfigError`
    for what the model cannot do."""
    _check_task(spec, task)
    _refuse_impossible(spec, params)
    notices = _unsent_hints(spec, params)

    ratio, tier, size_notices = _ratio_and_tier(spec, params)
    notices += size_notices

    config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"]}
    image_config: dict[str, Any] = {}
    if ratio is not None:
        image_config["aspectRatio"] = ratio
    if tier is not None:
        image_config["imageSize"] = tier
    if image_config:
        config["imageConfig"] = image_config
    if params.seed is not None:
        if not _INT32[0] <= params.seed <= _INT32[1]:
            raise ConfigError(f"seed {params.seed} is out of range for {spec.name}: Gemini takes a 32-bit "
                              f"integer ({_INT32[0]} to {_INT32[1]})")
        config["seed"] = params.seed
    _apply_extra(spec, params.extra, config)

    convert_to = None
    if params.output_format is not None:
        convert_to = params.output_format
        level = f" (compression {params.compression})" if params.compression is not None else ""
        notices.append(f"{spec.name}: the Gemini API cannot be told an output format; images that do not "
                       f"arrive as {params.output_format} are converted after download{level}")

    calls = [copy.deepcopy(config) for _ in split_n(params.n or 1, 1)]
    return WirePlan(calls=calls, notices=notices, convert_to=convert_to,
                    expected_size=expected_size(spec, ratio, tier))


def check_inputs(
    spec: ModelSpec,
    images: Sequence[InputImage],
    *,
    mask: InputImage | None = None,
    prompt: str | None = None,
) -> None:
    """Per-row checks of what a request carries: the number, format and size of its input images, and the
    prompt's length. Raises `InputError` naming the field (the row fails, the run goes on); a mask is a
    step-level mistake and raises `ConfigError`."""
    if mask is not None:
        raise ConfigError(f"{spec.name} takes no mask: Gemini edits from the prompt alone. Drop --mask-field "
                          "and describe the region to change in the prompt (\"replace only the sky ...\")")
    if len(images) > spec.max_input_images:
        most = spec.max_input_images
        raise InputError(
            f"{len(images)} input images, but {spec.name} takes at most {most}"
            + ("" if most else " (it takes no input images)")
            + f": drop {len(images) - most}, or use a model that takes more ({_roomiest_model()})",
            field="images",
        )
    for i, image in enumerate(images):
        if spec.input_formats and image.mime not in spec.input_formats:
            raise InputError(
                f"input image {i + 1} ({image.name}) is {image.mime}; {spec.name} takes "
                f"{', '.join(spec.input_formats)}: convert it first", field="images")
        if len(image.data) > spec.max_input_image_bytes:
            raise InputError(
                f"input image {i + 1} ({image.name}) is {len(image.data) / 2**20:.1f} MiB; {spec.name} takes "
                f"at most {spec.max_input_image_bytes / 2**20:.0f} MiB per image: downscale it",
                field="images",
            )
    if prompt is not None:
        if len(prompt) > spec.max_prompt_chars:
            raise InputError(f"the prompt is {len(prompt)} characters; {spec.name} takes at most "
                             f"{spec.max_prompt_chars}: shorten it", field="prompt")
        if not prompt.strip() and not images:
            raise InputError("the prompt is empty and there is no input image: nothing to send",
                             field="prompt")


def expected_size(spec: ModelSpec, ratio: str | None, tier: str | None) -> tuple[int, int] | None:
    """Pixel size of the image `spec` makes at `ratio` and `tier` (None when the table does not say)."""
    if ratio is None or ratio not in spec.ratio_pixels:
        return None
    width, height = spec.ratio_pixels[ratio]
    scale = TIER_SCALE.get(tier or spec.default_image_size or "1K", 1.0)
    return round(width * scale), round(height * scale)


# ------------------------------------------------------------------------------------------- the checks


def _check_task(spec: ModelSpec, task: Task) -> None:
    if task == "variation":
        raise ConfigError(f"{spec.name} has no variations: Gemini has no such endpoint. Use `edit` with a "
                          "prompt such as \"a variation of this image\" instead")
    if spec.known and task not in spec.tasks:
        raise allowed(spec.name, "task", task, spec.tasks)


def _refuse_impossible(spec: ModelSpec, params: ImageParams) -> None:
    """Parameters that would change what the image is, and that no Gemini model can honour."""
    model = spec.name
    if params.style is not None:
        raise ConfigError(f"{model} does not take style={params.style!r} (Gemini has no style presets): "
                          "describe the style in the prompt instead")
    if params.background is not None and params.background not in ("auto", "opaque"):
        if params.background == "transparent":
            raise ConfigError(f"{model} cannot make transparent backgrounds (its images are opaque): use a "
                              "GPT image model (--provider openai) with --background transparent")
        raise allowed(model, "background", params.background, ("auto", "opaque"))
    if params.negative_prompt is not None:
        raise ConfigError(f"{model} does not take negative_prompt (the Gemini API has none): say what to "
                          "avoid in the prompt instead (\"no text, no watermark\")")
    for name, value in (("steps", params.steps), ("guidance_scale", params.guidance_scale)):
        if value is not None:
            raise ConfigError(f"{model} does not take {name}={value!r}: it is a setting of local diffusion "
                              "models (--provider diffusers); drop it for Gemini")


def _unsent_hints(spec: ModelSpec, params: ImageParams) -> list[str]:
    """Quality hints with no Gemini equivalent: not sent, said once."""
    unsent = [f"{name}={value!r}" for name, value in (
        ("quality", params.quality),
        ("input_fidelity", params.input_fidelity),
        # With an output format, compression is used by the local conversion; alone it does nothing.
        ("compression", None if params.output_format else params.compression),
        ("moderation", params.moderation),
    ) if value is not None]
    if not unsent:
        return []
    hint = " (Gemini's filters are set with --param safetySettings=[...])" if params.moderation else ""
    return [f"{spec.name}: {', '.join(unsent)} not sent: the Gemini API has no such setting{hint}"]


def _ratio_and_tier(spec: ModelSpec, params: ImageParams) -> tuple[str | None, str | None, list[str]]:
    """The `aspectRatio` and `imageSize` to send (None: the model's default), with notices."""
    notices: list[str] = []
    sizes_settable = bool(spec.image_sizes) or not spec.known
    ratio: str | None = None
    if params.aspect_ratio is not None:
        if spec.aspect_ratios and params.aspect_ratio not in spec.aspect_ratios:
            raise allowed(spec.name, "aspect_ratio", params.aspect_ratio, spec.aspect_ratios)
        ratio = params.aspect_ratio

    tier: str | None = None
    if params.resolution is not None:
        if not sizes_settable:
            if params.resolution != "1K":
                raise ConfigError(
                    f"{spec.name} makes images of about 1K only (it takes no imageSize), not "
                    f"resolution={params.resolution}: use {_tiered_models()} for other sizes")
        elif spec.image_sizes and params.resolution not in spec.image_sizes:
            raise allowed(spec.name, "resolution", params.resolution, spec.image_sizes)
        else:
            tier = params.resolution

    if params.size is None or params.size == "auto":
        return ratio, tier, notices

    width, height = parse_size(params.size)
    size_ratio = nearest_ratio(width / height, spec.aspect_ratios or KNOWN_RATIOS)
    if ratio is None:
        ratio = size_ratio
    elif size_ratio != ratio:
        notices.append(f"{spec.name}: size {params.size} and aspect_ratio {ratio} disagree; aspect ratio "
                       f"{ratio} is sent")
    if tier is None and sizes_settable:
        tier = _nearest_tier(spec, ratio, max(width, height))
    got = expected_size(spec, ratio, tier)
    if got != (width, height):
        sent = f"aspectRatio {ratio}" + (f", imageSize {tier}" if tier else "")
        about = f" ({got[0]}x{got[1]})" if got else ""
        fixed = "" if sizes_settable else "; this model makes about 1K images only"
        notices.append(f"{spec.name}: size {params.size} is sent as {sent}{about}{fixed}")
    return ratio, tier, notices


def _nearest_tier(spec: ModelSpec, ratio: str, long_side: int) -> str:
    """The size tier whose long side is nearest `long_side` on a log scale (a tie goes to the larger)."""
    one_k = spec.ratio_pixels.get(ratio)
    long_1k = max(one_k) if one_k else 1024 * max(parse_ratio(ratio), 1 / parse_ratio(ratio)) ** 0.5
    tiers = [t for t in (spec.image_sizes or tuple(TIER_SCALE)) if t in TIER_SCALE]
    return min(tiers, key=lambda t: (abs(math.log(long_side / (long_1k * TIER_SCALE[t]))), -TIER_SCALE[t]))


def _apply_extra(spec: ModelSpec, extra: dict[str, Any], config: dict[str, Any]) -> None:
    """`--param` keys: thinking settings mapped, everything else copied unchanged (dicts merged into the
    ones already built, so `--param imageConfig={...}` adds to the aspect ratio rather than dropping it)."""
    for key, value in extra.items():
        if key in ("thinking_level", "thinkingLevel"):
            level = str(value).strip().upper()
            if level not in THINKING_LEVELS:
                raise allowed(spec.name, "thinking_level", value, THINKING_LEVELS)
            _thinking(spec, key, config)["thinkingLevel"] = level
        elif key in ("include_thoughts", "includeThoughts"):
            _thinking(spec, key, config)["includeThoughts"] = _boolean(key, value)
        elif key == "responseModalities" and isinstance(value, str):
            # --param responseModalities=IMAGE arrives as a string; the wire wants a list.
            config[key] = [m.strip().upper() for m in value.split(",") if m.strip()]
        elif isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value


def _thinking(spec: ModelSpec, key: str, config: dict[str, Any]) -> dict[str, Any]:
    if spec.known and not spec.thinking:
        raise ConfigError(f"{spec.name} does not think, so it takes no --param {key}: drop it, or use a "
                          f"model that thinks ({_thinking_models()})")
    thinking: dict[str, Any] = config.setdefault("thinkingConfig", {})
    return thinking


def _boolean(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"--param {key}={value!r} must be true or false")


def _family_models(keep: str) -> str:
    from pixelmill.models.table import builtin_table

    names = [s.name for s in builtin_table().family("gemini") if getattr(s, keep) and not s.retired()]
    return ", ".join(names) or "none known"


def _thinking_models() -> str:
    return _family_models("thinking")


def _tiered_models() -> str:
    return _family_models("image_sizes")


def _roomiest_model() -> str:
    from pixelmill.models.table import builtin_table

    best = max(builtin_table().family("gemini"), key=lambda s: s.max_input_images)
    return f"{best.name} takes {best.max_input_images}"
