"""`pixelmill models`: the model table as a user reads it."""

from __future__ import annotations

import datetime as dt

from pixelmill.models.table import ModelSpec, builtin_table


def _price(spec: ModelSpec) -> str:
    p = spec.price
    if p.per_image:
        low, high = min(p.per_image.values()), max(p.per_image.values())
        return f"${low:.3f}-${high:.3f}/image"
    if p.per_megapixel is not None:
        first = f"${p.first_megapixel:g} first MP, then " if p.first_megapixel is not None else ""
        return f"{first}${p.per_megapixel:g}/MP"
    if p.image_out is not None:
        return f"${p.image_out:g}/1M image tokens out"
    return "unknown"


def _status(spec: ModelSpec, today: dt.date) -> str:
    if spec.shutdown is None:
        return "current"
    word = "shut down" if spec.retired(today) else "retires"
    instead = f" -> {spec.replacement}" if spec.replacement else ""
    return f"{word} {spec.shutdown.isoformat()}{instead}"


def print_models(family: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = builtin_table()
    today = dt.date.today()
    view = Table(title="pixelmill models", show_lines=False)
    for column in ("model", "provider", "tasks", "sizes / ratios", "n", "qualities", "max input images",
                   "price", "status", "aliases"):
        view.add_column(column)
    provider_of = {"openai": "openai, azure", "gemini": "gemini", "diffusers": "diffusers", "fal": "fal",
                   "bfl": "bfl", "replicate": "replicate", "hf": "hf, hf-endpoint"}
    for spec in table.specs.values():
        providers = provider_of.get(spec.family, spec.family)
        if family and family not in (spec.family, *providers.split(", ")):
            continue
        sizes = ", ".join(spec.sizes) if spec.sizes else ", ".join(spec.aspect_ratios)
        if spec.size_rule == "free":
            sizes += " (+ any WxH in limits)"
        if spec.image_sizes:
            sizes += f" @ {'/'.join(spec.image_sizes)}"
        view.add_row(spec.name, providers, ", ".join(spec.tasks), sizes, str(spec.n_max),
                     ", ".join(spec.qualities) or "-", str(spec.max_input_images), _price(spec),
                     _status(spec, today), ", ".join(spec.aliases) or "-")
    console = Console()
    console.print(view)
    for provider, presets in table.presets.items():
        if family in (None, provider):
            console.print(f"presets for {provider}: " + ", ".join(f"{k} = {v}" for k, v in presets.items()))
