"""Provider-neutral image parameters, and the plan a provider makes of them for one model.

`ImageParams` is what a user writes once (`--size`, `--aspect-ratio`, `--quality`, ...). Each wire family maps
it to its own values in `pixelmill.params.<family>` and returns a `WirePlan`: the exact parameters sent (which the
row records as `pixelmill.parameters`), how many calls make up the requested `n`, and one-line notices where a
value was approximated. Values a model cannot take raise `ConfigError` naming the model, the parameter and what it
allows, before anything is sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pixelmill.errors import ConfigError


class ImageParams(BaseModel):
    """What the user asked for, in pixelmill's own words. None means "the provider's default"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int | None = Field(default=None, ge=1, le=100)
    size: str | None = None  # "WxH" or "auto"
    aspect_ratio: str | None = None  # "16:9"
    resolution: str | None = None  # "512" | "1K" | "2K" | "4K"
    quality: str | None = None  # low | medium | high | auto, or a native value (hd, standard)
    style: str | None = None
    background: str | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    compression: int | None = Field(default=None, ge=0, le=100)
    seed: int | None = None
    steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    moderation: str | None = None
    input_fidelity: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)  # --param KEY=VALUE, passed through unchanged

    @field_validator("output_format", mode="before")
    @classmethod
    def _jpg(cls, value: object) -> object:
        return "jpeg" if isinstance(value, str) and value.lower() in ("jpg", "jpeg") else value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is None or value == "auto":
            return value
        parse_size(value)
        return value.lower()

    @field_validator("aspect_ratio")
    @classmethod
    def _ratio(cls, value: str | None) -> str | None:
        if value is not None:
            parse_ratio(value)
        return value

    @field_validator("resolution", mode="before")
    @classmethod
    def _resolution(cls, value: object) -> object:
        if isinstance(value, str):
            v = value.strip().upper()
            if v in ("0.5K", "512PX", "512"):
                return "512"
            if v in ("1K", "2K", "4K"):
                return v
            raise ValueError(f"resolution must be one of 512, 1K, 2K, 4K (got {value!r})")
        return value

    def fingerprint(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude_defaults=True)


@dataclass(slots=True)
class WirePlan:
    """How one (row, step) is sent: one request per entry of `calls`, each with its own wire parameters (they
    differ only in how many images each returns, when the requested `n` is more than one call gives)."""

    calls: list[dict[str, Any]]
    notices: list[str] = field(default_factory=list)
    # The format the user asked for when the provider cannot be told: the store converts the bytes.
    convert_to: str | None = None
    # Pixel size expected back, when known (for estimates and checks).
    expected_size: tuple[int, int] | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The parameters of the first call: what the row records as `pixelmill.parameters`."""
        return self.calls[0]


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        width, height = int(w), int(h)
    except ValueError:
        raise ConfigError(f"size {text!r} is not WIDTHxHEIGHT (for example 1024x1536)") from None
    if width <= 0 or height <= 0:
        raise ConfigError(f"size {text!r} must have positive sides")
    return width, height


def parse_ratio(text: str) -> float:
    try:
        a, b = text.split(":")
        value = float(a) / float(b)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"aspect ratio {text!r} is not W:H (for example 16:9)") from None
    if value <= 0:
        raise ConfigError(f"aspect ratio {text!r} must be positive")
    return value


def nearest_ratio(target: float, choices: list[str] | tuple[str, ...]) -> str:
    """The allowed ratio closest to `target`, comparing on a log scale (2:1 and 1:2 are equally far from 1:1)."""
    return min(choices, key=lambda c: abs(math.log(parse_ratio(c)) - math.log(target)))


def allowed(model: str, parameter: str, value: object, choices: tuple[str, ...] | list[str]) -> ConfigError:
    """The error for a value a model does not take, naming the allowed ones."""
    if not choices:
        return ConfigError(f"{model} does not take {parameter} (got {value!r})")
    listed = ", ".join(str(c) for c in choices)
    return ConfigError(f"{model} does not take {parameter}={value!r}; allowed: {listed}")


def split_n(n: int, per_call: int) -> list[int]:
    """Images per call for `n` images when one call returns at most `per_call`: never more than `n` in all."""
    per_call = max(1, per_call)
    full, rest = divmod(n, per_call)
    return [per_call] * full + ([rest] if rest else [])
