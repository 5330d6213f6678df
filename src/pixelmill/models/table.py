"""The model table (`models.toml`): capabilities, limits, prices and retirement dates as data.

Lookups accept a model's name or any of its aliases. Unknown models get no spec from here; the caller
decides (OpenAI-compatible endpoints and custom deployments take the family's permissive rules).
"""

from __future__ import annotations

import datetime as dt
import tomllib
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pixelmill.errors import ConfigError

# The wire families: whose parameter rules apply (`pixelmill.params`) and which providers may send a model.
# fal, replicate and bfl are remote-job APIs (submit, poll, collect); hf is Hugging Face's synchronous routes.
Family = Literal["openai", "gemini", "diffusers", "fal", "replicate", "bfl", "hf"]


class FreeSize(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    multiple: int = 16
    min_ratio: float = 1 / 3
    max_ratio: float = 3.0
    max_width: int = 3840
    max_height: int = 3840
    max_pixels: int = 3840 * 2160
    min_pixels: int = 0

    def problem(self, width: int, height: int) -> str | None:
        """What is wrong with a `width` x `height` image under this rule (for the refusal's message), or None."""
        m = self.multiple
        if width % m or height % m:
            return f"both sides must be multiples of {m}"
        if not self.min_ratio <= width / height <= self.max_ratio:
            return f"the aspect ratio must be between 1:{1 / self.min_ratio:.3g} and {self.max_ratio:.3g}:1"
        if width > self.max_width or height > self.max_height:
            return f"each side must be at most {self.max_width}x{self.max_height}"
        if width * height > self.max_pixels:
            return f"at most {self.max_pixels} pixels in all"
        if width * height < self.min_pixels:
            return f"at least {self.min_pixels} pixels"
        return None


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text_in: float | None = None  # USD per 1M tokens
    image_in: float | None = None
    image_out: float | None = None
    text_out: float | None = None  # text and thinking output (Gemini; gpt-image-1.5 text out)
    per_image: dict[str, float] = Field(default_factory=dict)  # "quality:size" -> USD
    output_tokens: dict[str, int] = Field(default_factory=dict)  # "quality:size" or image size -> tokens
    batch_discount: float | None = None
    # Megapixel prices (fal's FLUX dev/schnell, BFL's FLUX.2): USD for each output megapixel, each megapixel
    # started counting as one (UNCONFIRMED how each provider rounds; rounding up bounds the bill);
    # `first_megapixel` prices the first one where it differs, `input_megapixel` each input-image megapixel.
    per_megapixel: float | None = None
    first_megapixel: float | None = None
    input_megapixel: float | None = None


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    family: Family
    tasks: tuple[str, ...] = ("generate",)
    sizes: tuple[str, ...] = ()
    size_rule: Literal["list", "free"] = "list"
    free_size: FreeSize | None = None
    n_max: int = 1
    qualities: tuple[str, ...] = ()
    styles: tuple[str, ...] = ()
    output_formats: tuple[str, ...] = ()
    backgrounds: tuple[str, ...] = ()
    response_formats: tuple[str, ...] = ()
    moderation: bool = False
    input_fidelity: bool = False
    mask: bool = False
    max_prompt_chars: int = 32000
    max_input_images: int = 0
    max_input_image_bytes: int = 50 * 1024 * 1024
    input_formats: tuple[str, ...] = ()
    square_input: bool = False
    aspect_ratios: tuple[str, ...] = ()
    image_sizes: tuple[str, ...] = ()
    default_image_size: str | None = None
    ratio_pixels: dict[str, tuple[int, int]] = Field(default_factory=dict)
    thinking: bool = False
    strict_thought_signatures: bool = False
    timeout: float | None = Field(default=None, gt=0)  # seconds for one request when --timeout is not given
    shutdown: dt.date | None = None
    replacement: str | None = None
    aliases: tuple[str, ...] = ()
    price: Price = Field(default_factory=Price)
    known: bool = True  # False for the permissive stand-in used for models the table does not list

    def retired(self, today: dt.date | None = None) -> bool:
        return self.shutdown is not None and self.shutdown <= (today or dt.date.today())

    def retirement_notice(self, today: dt.date | None = None) -> str | None:
        """A one-line notice for retired or soon-retired models; None when the model is current."""
        if self.shutdown is None:
            return None
        instead = f"; use {self.replacement} instead" if self.replacement else ""
        if self.retired(today):
            return (
                f"{self.name} was shut down on {self.shutdown.isoformat()}{instead}. Sending anyway: "
                "gateways and older deployments may still serve it."
            )
        return f"{self.name} is deprecated and shuts down on {self.shutdown.isoformat()}{instead}."


class ModelTable:
    def __init__(self, specs: dict[str, ModelSpec], presets: dict[str, dict[str, str]]) -> None:
        self.specs = specs
        self.presets = presets
        self._by_alias = {alias: spec for spec in specs.values() for alias in spec.aliases}

    def get(self, name: str) -> ModelSpec | None:
        return self.specs.get(name) or self._by_alias.get(name)

    def resolve_preset(self, provider: str, name: str) -> str:
        """`fast`, `base`, `best` become the provider's model; other names pass unchanged."""
        return self.presets.get(provider, {}).get(name, name)

    def family(self, family: str) -> list[ModelSpec]:
        return [spec for spec in self.specs.values() if spec.family == family]

    def merged(self, path: Path) -> ModelTable:
        """This table with a user's file laid over it, key by key: an entry for a known model (by name or
        alias) changes only the keys it gives, at any depth (`[models."gpt-image-2".price]` with one key
        changes one price); an entry for a new model must be complete. Presets merge per provider."""
        raw = _read_toml(path)
        origin = str(path)
        models = raw.get("models", {})
        if not isinstance(models, dict):
            raise ConfigError(f"{origin}: 'models' must be a table of models")
        layered: dict[str, Any] = {}
        for name, body in models.items():
            if not isinstance(body, dict):
                raise ConfigError(f"{origin}: model {name!r} must be a table of keys")
            base = self.get(name)
            if base is None:
                layered[name] = body
            else:
                own = base.model_dump(exclude={"name", "known"}, exclude_unset=False)
                layered[base.name] = _deep_merge(own, body)
        specs, presets = _parse({**raw, "models": layered}, origin)
        merged_presets = {p: dict(v) for p, v in self.presets.items()}
        for provider, names in presets.items():
            merged_presets.setdefault(provider, {}).update(names)
        return ModelTable({**self.specs, **specs}, merged_presets)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`: tables merge key by key, everything else (lists included) is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def permissive_spec(name: str, family: Family) -> ModelSpec:
    """Rules for a model the table does not know: accept what the server accepts."""
    return ModelSpec(
        name=name,
        family=family,
        tasks=("generate", "edit", "variation"),
        size_rule="free",
        free_size=FreeSize(multiple=1, min_ratio=0.0, max_ratio=1e9, max_width=100000, max_height=100000,
                           max_pixels=10**10),
        n_max=10,
        max_prompt_chars=10**7,
        max_input_images=64,
        max_input_image_bytes=100 * 1024 * 1024,
        mask=True,
        known=False,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read model table {path}: {exc}") from exc


def _parse(raw: dict[str, Any], origin: str) -> tuple[dict[str, ModelSpec], dict[str, dict[str, str]]]:
    unknown = set(raw) - {"models", "presets"}
    if unknown:
        raise ConfigError(f"{origin}: unknown top-level key(s) {sorted(unknown)}; expected 'models', 'presets'")
    specs: dict[str, ModelSpec] = {}
    for name, body in raw.get("models", {}).items():
        try:
            specs[name] = ModelSpec(name=name, **body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{origin}: model {name!r}, key {where!r}: {first['msg']}") from exc
    return specs, dict(raw.get("presets", {}))


@cache
def builtin_table() -> ModelTable:
    text = resources.files("pixelmill.models").joinpath("models.toml").read_text(encoding="utf-8")
    specs, presets = _parse(tomllib.loads(text), "models.toml")
    return ModelTable(specs, presets)
