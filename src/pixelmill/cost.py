"""Money: what a call cost (from the usage the provider reported, else the table), and what a call is
expected to cost before it is sent (for `estimate` and for the budget's reservations).

Prices are per 1M tokens for token-billed models and per image otherwise (`models.toml`, `price`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pixelmill.modeltable import ModelSpec

M = 1_000_000


@dataclass(frozen=True, slots=True)
class Expected:
    low: float  # cheapest plausible outcome
    high: float  # the most it can cost: what the budget reserves


def _quality_size(spec: ModelSpec, params: dict[str, Any]) -> tuple[list[str], str]:
    quality = str(params.get("quality") or "auto")
    size = str(params.get("size") or "auto")
    if size == "auto":
        size = "1024x1024"
    if quality == "auto":
        qualities = [q for q in spec.qualities if q != "auto"] or ["high"]
    else:
        qualities = [quality]
    return qualities, size


def _tokens_for_size(spec: ModelSpec, quality: str, size: str) -> int | None:
    table = spec.price.output_tokens
    if f"{quality}:{size}" in table:
        return table[f"{quality}:{size}"]
    # Free sizes (gpt-image-2): scale the square's count by the pixel area.
    square = table.get(f"{quality}:1024x1024")
    if square is None:
        return None
    try:
        w, h = (int(v) for v in size.split("x"))
    except ValueError:
        return square
    return round(square * (w * h) / (1024 * 1024))


def expected_cost(spec: ModelSpec, params: dict[str, Any], images: int, prompt_chars: int = 0,
                  input_images: int = 0) -> Expected | None:
    """The range one call may cost, or None when the table has no price for the model."""
    price = spec.price
    if spec.family == "gemini":
        size = str(params.get("imageConfig", {}).get("imageSize") or spec.default_image_size or "1K")
        tokens = price.output_tokens.get(size) or next(iter(price.output_tokens.values()), None)
        if tokens is None or price.image_out is None:
            return None
        inp = (prompt_chars / 4 + input_images * 560) * (price.text_in or 0) / M
        value = images * tokens * price.image_out / M + inp
        return Expected(value, value)
    qualities, size = _quality_size(spec, params)
    if price.per_image:
        found = [price.per_image.get(f"{q}:{size}") for q in qualities]
        values = [v for v in found if v is not None]
        if not values:
            return None
        return Expected(min(values) * images, max(values) * images)
    if price.image_out is None:
        return None
    counts = [t for q in qualities if (t := _tokens_for_size(spec, q, size)) is not None]
    if not counts:
        return None
    text = prompt_chars / 4 * (price.text_in or 0) / M
    img_in = input_images * 1000 * (price.image_in or 0) / M  # ~ tokens of one input image at low fidelity
    return Expected(
        images * min(counts) * price.image_out / M + text + img_in,
        images * max(counts) * price.image_out / M + text + img_in * 6,  # high input fidelity costs more
    )


def actual_cost(spec: ModelSpec, params: dict[str, Any], usage: dict[str, Any] | None, images: int) -> float | None:
    """What a finished call cost: from reported usage when the model is token-billed, else the table."""
    price = spec.price
    if usage and spec.family == "gemini" and price.image_out is not None:
        return _gemini_cost(spec, usage)
    if usage and "output_tokens" in usage and price.image_out is not None:
        details = usage.get("input_tokens_details") or {}
        text_in = details.get("text_tokens", usage.get("input_tokens", 0) if not details else 0)
        image_in = details.get("image_tokens", 0)
        out = usage.get("output_tokens", 0)
        return float(text_in * (price.text_in or 0) + image_in * (price.image_in or 0) + out * price.image_out) / M
    expected = expected_cost(spec, params, images)
    if expected is None:
        return None
    return float(expected.low if price.per_image else expected.high)


def _gemini_cost(spec: ModelSpec, usage: dict[str, Any]) -> float:
    price = spec.price
    prompt_text = prompt_image = 0
    for item in usage.get("promptTokensDetails") or []:
        if item.get("modality") == "IMAGE":
            prompt_image += int(item.get("tokenCount", 0))
        else:
            prompt_text += int(item.get("tokenCount", 0))
    if not usage.get("promptTokensDetails"):
        prompt_text = int(usage.get("promptTokenCount", 0))
    out_image = out_text = 0
    for item in usage.get("candidatesTokensDetails") or []:
        if item.get("modality") == "IMAGE":
            out_image += int(item.get("tokenCount", 0))
        else:
            out_text += int(item.get("tokenCount", 0))
    if not usage.get("candidatesTokensDetails"):
        out_image = int(usage.get("candidatesTokenCount", 0))
    thoughts = int(usage.get("thoughtsTokenCount", 0))
    text_rate = price.text_in or 0
    return (
        prompt_text * text_rate
        + prompt_image * (price.image_in or text_rate)
        + out_image * (price.image_out or 0)
        + (out_text + thoughts) * text_rate * 6  # text and thinking output: ~6x the input rate on these models
    ) / M
