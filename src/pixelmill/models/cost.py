"""Money: what a call cost, and what a call may cost before it is sent.

- `actual_cost`: the charge the provider reported (`usage["cost_usd"]`, BFL), else from the usage it reported
  (tokens x the table's prices), else from the table (per-image price, or the documented tokens of the size and
  quality sent).
- `expected_cost`: the range one call may cost, for `estimate` (low and expected) and for the budget, which
  reserves `high` before each call: `high` is an upper bound of what the call can be billed, so that a budget
  is never passed by the calls in flight.

Prices come from the model table (`models.toml`, `price`; a `--models-file` may override any of them): per 1M
tokens for token-billed models (GPT image models, Gemini image models), per image otherwise (DALL·E, by
quality and size). Where an amount is not known from the wire (input tokens before sending, thinking tokens),
the constants below are the assumptions, stated once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pixelmill.models.table import ModelSpec

M = 1_000_000

# Text tokens per prompt character: ~1/4 for English (expected); one token per character bounds nearly any
# text, CJK included (high).
CHARS_PER_TOKEN = 4.0
# OpenAI input images: 65 + 129 per 512-pixel tile. A 1024x1024 image is 4 tiles (expected); an image is
# scaled to at most 2048 on its long side and 768 on its short side, so 8 tiles at most (high). High input
# fidelity adds about 4,096 tokens for a square image and up to about 6,240 for the largest.
OPENAI_IMAGE_IN = (581, 1097)
OPENAI_HIGH_FIDELITY_IN = (4096, 6240)
# Gemini input images: 560 tokens at the default media resolution, 1,120 at high resolution.
GEMINI_IMAGE_IN = (560, 1120)
# Gemini 3 image models think before answering: up to two draft images and some text, billed as output
# (text_out). Expected: none reported on the answers seen; high: two drafts plus 500 text tokens.
GEMINI_THINKING_DRAFTS = 2
GEMINI_THINKING_TEXT = 500


@dataclass(frozen=True, slots=True)
class Expected:
    """What one call (or a sum of calls) may cost, in USD."""

    low: float  # the cheapest plausible outcome
    expected: float  # the most likely outcome (quality "auto" is priced as high: what the API picks)
    high: float  # the most it can cost: what the budget reserves

    def __add__(self, other: Expected) -> Expected:
        return Expected(self.low + other.low, self.expected + other.expected, self.high + other.high)

    def scaled(self, factor: float) -> Expected:
        return Expected(self.low * factor, self.expected * factor, self.high * factor)


ZERO = Expected(0.0, 0.0, 0.0)


def expected_cost(spec: ModelSpec, params: dict[str, Any], images: int, prompt_chars: int = 0,
                  input_images: int = 0) -> Expected | None:
    """The range one call may cost: `params` are the wire parameters of the call, `images` the images it asks
    for, `prompt_chars` the prompt's length and `input_images` the images sent with it. None when the table
    has no price for the model."""
    price = spec.price
    if price.per_image:
        return _per_image(spec, params, images)
    if price.per_megapixel is not None:
        return _per_megapixel(spec, params, images, input_images)
    if price.image_out is None:
        return None
    if spec.family == "gemini":
        return _gemini_expected(spec, params, images, prompt_chars, input_images)
    return _openai_expected(spec, params, images, prompt_chars, input_images)


def actual_cost(spec: ModelSpec, params: dict[str, Any], usage: dict[str, Any] | None, images: int) -> float | None:
    """What a finished call cost: from the usage it reported when the model is token-billed, else from the
    table for the `images` it returned. None when the table has no price for the model. A charge the provider
    reported itself (`usage["cost_usd"]`: BFL's submit answers `cost` in credits) is taken as it is."""
    price = spec.price
    reported = usage.get("cost_usd") if usage else None
    if isinstance(reported, int | float) and not isinstance(reported, bool) and math.isfinite(reported) \
            and reported >= 0:
        return float(reported)
    if usage and price.image_out is not None:
        if "output_tokens" in usage:
            return _openai_usage_cost(spec, usage)
        if "candidatesTokenCount" in usage or "promptTokenCount" in usage:
            return _gemini_usage_cost(spec, usage)
    expected = expected_cost(spec, params, images)
    return None if expected is None else expected.expected


def batch_cost(spec: ModelSpec, value: Expected) -> Expected | None:
    """What `value` would cost through the provider's batch API, when it has one with a discount."""
    discount = spec.price.batch_discount
    return None if not discount else value.scaled(1.0 - discount)


# ---------------------------------------------------------------- per-image prices (DALL·E)


def _per_image(spec: ModelSpec, params: dict[str, Any], images: int) -> Expected | None:
    table = spec.price.per_image
    quality = params.get("quality")
    qualities = [str(quality)] if quality else [spec.qualities[0] if spec.qualities else "standard"]
    default_size = "1024x1024" if "1024x1024" in spec.sizes or not spec.sizes else spec.sizes[0]  # the API's
    size = str(params.get("size") or default_size)
    found = [table[f"{q}:{size}"] for q in qualities if f"{q}:{size}" in table]
    if not found:
        # A size or quality the table does not list: the dearest listed price bounds it.
        values = list(table.values())
        return Expected(min(values) * images, max(values) * images, max(values) * images)
    return Expected(min(found) * images, max(found) * images, max(found) * images)


# ---------------------------------------------------------------- megapixel prices (fal FLUX, BFL FLUX.2)

# fal's named image sizes (reference/async-apis.md section 3.8), in pixels.
FAL_IMAGE_SIZES = {
    "square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024), "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576),
}
# An output whose size the parameters do not say (an aspect ratio alone): about one megapixel as expected,
# and the model's largest free size (else 4 MP, FLUX.2's limit) as the most it can be.
DEFAULT_MEGAPIXELS = 1.0
# A billed megapixel is 1024x1024 pixels: fal and BFL both price a 1024x1024 image as one megapixel (BFL's "1 MP
# text-to-image" examples; fal's "$0.025 per megapixel" for a square_hd image), not as two started ones.
MEGAPIXEL = 1024 * 1024
MAX_MEGAPIXELS = 4.0


def output_pixels(params: dict[str, Any]) -> tuple[int, int] | None:
    """The output size the wire parameters ask for: `width`/`height`, a `size` "WxH", or fal's `image_size`
    (a preset name or `{width, height}`); None when they do not say."""
    if isinstance(params.get("width"), int) and isinstance(params.get("height"), int):
        return int(params["width"]), int(params["height"])
    size = params.get("image_size")
    if isinstance(size, dict) and isinstance(size.get("width"), int) and isinstance(size.get("height"), int):
        return int(size["width"]), int(size["height"])
    if isinstance(size, str) and size in FAL_IMAGE_SIZES:
        return FAL_IMAGE_SIZES[size]
    text = params.get("size")
    if isinstance(text, str) and "x" in text:
        try:
            w, h = (int(v) for v in text.lower().split("x"))
            return w, h
        except ValueError:
            return None
    return None


def _per_megapixel(spec: ModelSpec, params: dict[str, Any], images: int, input_images: int) -> Expected:
    price = spec.price
    per_mp = price.per_megapixel
    assert per_mp is not None
    pixels = output_pixels(params)
    if pixels is not None:
        expected_mp = high_mp = pixels[0] * pixels[1] / MEGAPIXEL
    else:
        expected_mp = DEFAULT_MEGAPIXELS
        high_mp = spec.free_size.max_pixels / MEGAPIXEL if spec.free_size else MAX_MEGAPIXELS

    def one(mp: float, inputs_mp: float) -> float:
        started = max(1, math.ceil(mp - 1e-9))  # each megapixel started counts as one
        first = price.first_megapixel if price.first_megapixel is not None else per_mp
        cost = first + (started - 1) * per_mp
        return cost + math.ceil(inputs_mp - 1e-9) * (price.input_megapixel or 0.0)

    # Input images: one megapixel each expected, the model's largest as the most (they are resized to it).
    low = one(expected_mp, 0.0) * images
    expected = one(expected_mp, float(input_images)) * images
    high = one(high_mp, input_images * max(high_mp, 1.0)) * images
    return Expected(min(low, expected), expected, max(expected, high))


# ---------------------------------------------------------------- OpenAI token prices (GPT image models)


def output_tokens(spec: ModelSpec, quality: str, size: str) -> int | None:
    """Image tokens of one output image: the table's count for the quality and size, else (free sizes,
    gpt-image-2) the square's count scaled by the pixel area."""
    table = spec.price.output_tokens
    if f"{quality}:{size}" in table:
        return table[f"{quality}:{size}"]
    square = table.get(f"{quality}:1024x1024")
    if square is None:
        return None
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        return square
    return max(1, round(square * (w * h) / (1024 * 1024)))


def _openai_expected(spec: ModelSpec, params: dict[str, Any], images: int, prompt_chars: int,
                     input_images: int) -> Expected | None:
    price = spec.price
    out_rate = price.image_out or 0.0
    quality = str(params.get("quality") or "auto")
    qualities = [q for q in spec.qualities if q not in ("auto", "standard")] or ["low", "medium", "high"]
    if quality != "auto":
        qualities = [quality]
    likely_quality = quality if quality != "auto" else ("high" if "high" in qualities else qualities[-1])
    size = str(params.get("size") or "auto")
    # "auto" size: square for a prompt alone; an edit follows its input's shape (any listed size).
    if size == "auto":
        sizes = [s for s in spec.sizes if s != "auto"] or ["1024x1024"]
    else:
        sizes = [size]
    likely_size = "1024x1024" if size == "auto" else size
    counts = [t for q in qualities for s in sizes if (t := output_tokens(spec, q, s)) is not None]
    likely = output_tokens(spec, likely_quality, likely_size)
    if not counts or likely is None:
        return None
    text_rate = price.text_in or 0.0
    image_rate = price.image_in if price.image_in is not None else text_rate
    fidelity = params.get("input_fidelity") == "high"
    img_expected = OPENAI_IMAGE_IN[0] + (OPENAI_HIGH_FIDELITY_IN[0] if fidelity else 0)
    img_high = OPENAI_IMAGE_IN[1] + (OPENAI_HIGH_FIDELITY_IN[1] if fidelity else 0)
    text_expected = math.ceil(prompt_chars / CHARS_PER_TOKEN)
    inputs_low = text_expected * text_rate + input_images * OPENAI_IMAGE_IN[0] * image_rate
    inputs_expected = text_expected * text_rate + input_images * img_expected * image_rate
    inputs_high = (prompt_chars + 1) * text_rate + input_images * img_high * image_rate
    return Expected(
        (images * min(counts) * out_rate + inputs_low) / M,
        (images * likely * out_rate + inputs_expected) / M,
        (images * max(counts) * out_rate + inputs_high) / M,
    )


def _openai_usage_cost(spec: ModelSpec, usage: dict[str, Any]) -> float:
    """`input_tokens_details` splits input into text and image tokens; `output_tokens_details` splits output
    into image and text tokens (text output is billed at `text_out` where the model has one). Tokens the
    details do not place (no details, or details that add up to less than the total) are priced at the dearer
    of the two rates: the bill cannot be more than that."""
    price = spec.price
    text_rate = price.text_in or 0.0
    image_in_rate = price.image_in if price.image_in is not None else text_rate
    image_out_rate = price.image_out or 0.0
    text_out_rate = price.text_out if price.text_out is not None else image_out_rate
    details = usage.get("input_tokens_details")
    details = details if isinstance(details, dict) else {}
    text_in, image_in = _int(details.get("text_tokens")), _int(details.get("image_tokens"))
    unplaced_in = max(0, _int(usage.get("input_tokens")) - text_in - image_in)
    out_details = usage.get("output_tokens_details")
    out_details = out_details if isinstance(out_details, dict) else {}
    outputs = _int(usage.get("output_tokens"))
    text_out = _int(out_details.get("text_tokens"))
    image_out = _int(out_details.get("image_tokens")) if "image_tokens" in out_details else 0
    unplaced_out = max(0, outputs - text_out - image_out)
    return (text_in * text_rate + image_in * image_in_rate + unplaced_in * max(text_rate, image_in_rate)
            + image_out * image_out_rate + text_out * text_out_rate
            + unplaced_out * max(image_out_rate, text_out_rate)) / M


# ---------------------------------------------------------------- Gemini token prices


def gemini_image_tokens(spec: ModelSpec, params: dict[str, Any]) -> int | None:
    """Tokens of one output image at the size asked (`imageConfig.imageSize`, else the model's default)."""
    table = spec.price.output_tokens
    config = params.get("imageConfig") or {}
    size = str(config.get("imageSize") or spec.default_image_size or "1K") if isinstance(config, dict) else "1K"
    size = "512" if size.lower() in ("512", "512px") else size.upper()
    return table.get(size) or (next(iter(table.values())) if table else None)


def _gemini_expected(spec: ModelSpec, params: dict[str, Any], images: int, prompt_chars: int,
                     input_images: int) -> Expected | None:
    price = spec.price
    tokens = gemini_image_tokens(spec, params)
    if tokens is None:
        return None
    out_rate = price.image_out or 0.0
    text_rate = price.text_in or 0.0
    image_rate = price.image_in if price.image_in is not None else text_rate
    think_rate = price.text_out if price.text_out is not None else text_rate
    text_expected = math.ceil(prompt_chars / CHARS_PER_TOKEN)
    calls = max(1, images)  # one image per call
    output = images * tokens * out_rate
    inputs_expected = text_expected * text_rate + input_images * GEMINI_IMAGE_IN[0] * image_rate
    inputs_high = (prompt_chars + 1) * text_rate + input_images * GEMINI_IMAGE_IN[1] * image_rate
    thinking_high = 0.0
    if spec.thinking:
        thinking_high = calls * (GEMINI_THINKING_DRAFTS * tokens + GEMINI_THINKING_TEXT) * think_rate
    # The reply may carry a short text part beside the image: a few dozen tokens at the text output rate.
    reply_text_high = calls * 200 * think_rate
    return Expected(
        (output + inputs_expected) / M,
        (output + inputs_expected) / M,
        (output + inputs_high + thinking_high + reply_text_high) / M,
    )


def _gemini_usage_cost(spec: ModelSpec, usage: dict[str, Any]) -> float:
    """`usageMetadata`: prompt tokens split by modality (TEXT, IMAGE), candidates likewise (IMAGE at
    `image_out`, TEXT at `text_out`), and thinking tokens (`thoughtsTokenCount`) at `text_out`. Tokens of a
    count that its `*TokensDetails` do not split (no details, or details that add up to less) are priced at
    the dearer of the modalities' rates: the bill cannot be more than that."""
    price = spec.price
    text_rate = price.text_in or 0.0
    image_in_rate = price.image_in if price.image_in is not None else text_rate
    image_out_rate = price.image_out or 0.0
    out_text_rate = price.text_out if price.text_out is not None else text_rate
    prompt_text, prompt_image = _by_modality(usage.get("promptTokensDetails"))
    unplaced_in = max(0, _int(usage.get("promptTokenCount")) - prompt_text - prompt_image)
    out_text, out_image = _by_modality(usage.get("candidatesTokensDetails"))
    unplaced_out = max(0, _int(usage.get("candidatesTokenCount")) - out_text - out_image)
    thoughts = _int(usage.get("thoughtsTokenCount"))
    return (prompt_text * text_rate + prompt_image * image_in_rate + unplaced_in * max(text_rate, image_in_rate)
            + out_image * image_out_rate + (out_text + thoughts) * out_text_rate
            + unplaced_out * max(image_out_rate, out_text_rate)) / M


def _by_modality(details: Any) -> tuple[int, int]:
    """(text, image) token counts of a `*TokensDetails` list; other modalities count as text."""
    text = image = 0
    for item in details if isinstance(details, list) else []:
        if not isinstance(item, dict):
            continue
        if item.get("modality") == "IMAGE":
            image += _int(item.get("tokenCount"))
        else:
            text += _int(item.get("tokenCount"))
    return text, image


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0
