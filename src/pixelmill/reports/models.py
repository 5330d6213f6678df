"""`pixelmill models`: the model table as a user reads it, whole names always.

One row per model (`model_rows`), printed three ways:
- on a terminal, a rich table whose model column never wraps nor truncates (the other columns fold); on a
  terminal too narrow for the table's columns, one block per model instead, its name on a line of its own;
- when stdout is not a terminal, plain tab-separated lines under a header, one line per model with every field,
  so that `pixelmill models | grep gemini` finds each gemini model by its full name;
- with `--json`, an array of objects (name, family, providers, tasks, sizes, prices, status, aliases, presets).
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from pixelmill.errors import ConfigError
from pixelmill.models.table import ModelSpec, ModelTable, builtin_table

if TYPE_CHECKING:
    from rich.console import Console

# The providers that serve each family's models (`--provider` filters on these).
PROVIDERS = {"openai": ("openai", "azure"), "gemini": ("gemini",), "diffusers": ("diffusers",), "fal": ("fal",),
             "replicate": ("replicate",), "bfl": ("bfl",), "hf": ("hf", "hf-endpoint")}
COLUMNS = ("model", "provider", "tasks", "sizes / ratios", "n", "qualities", "max input images", "price", "status",
           "aliases", "presets")
# Below this width per column besides the model's, the table's words break mid-way: blocks read better.
_MIN_COLUMN = 8


@dataclass(frozen=True, slots=True)
class ModelRow:
    """One model as `pixelmill models` shows it; `cells` are the table's text, in `COLUMNS` order."""

    spec: ModelSpec
    providers: tuple[str, ...]
    presets: tuple[str, ...]  # "provider:preset" names that resolve to this model
    cells: tuple[str, ...]

    def to_json(self, today: dt.date) -> dict[str, Any]:
        spec = self.spec
        state = "current" if spec.shutdown is None else "retired" if spec.retired(today) else "deprecated"
        return {
            "name": spec.name, "family": spec.family, "providers": list(self.providers), "tasks": list(spec.tasks),
            "sizes": list(spec.sizes), "size_rule": spec.size_rule, "aspect_ratios": list(spec.aspect_ratios),
            "image_sizes": list(spec.image_sizes), "n_max": spec.n_max, "qualities": list(spec.qualities),
            "max_input_images": spec.max_input_images, "price": spec.price.model_dump(exclude_none=True),
            "price_summary": _price(spec), "status": state,
            "shutdown": spec.shutdown.isoformat() if spec.shutdown else None, "replacement": spec.replacement,
            "aliases": list(spec.aliases), "presets": list(self.presets),
        }


def _price(spec: ModelSpec) -> str:
    p = spec.price
    if p.per_image:
        low, high = min(p.per_image.values()), max(p.per_image.values())
        return f"${low:.3f}/image" if low == high else f"${low:.3f}-${high:.3f}/image"
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


def model_rows(provider: str | None = None, *, table: ModelTable | None = None,
               today: dt.date | None = None) -> list[ModelRow]:
    """The rows of the models `provider` serves (every model when None); an unknown provider is a
    `ConfigError` naming the known ones."""
    table = table or builtin_table()
    today = today or dt.date.today()
    known = sorted({name for names in PROVIDERS.values() for name in names})
    if provider is not None and provider not in known:
        raise ConfigError(f"--provider {provider!r}: the model table has no models of it; use "
                          f"{', '.join(known[:-1])} or {known[-1]}")
    rows = []
    for spec in table.specs.values():
        providers = PROVIDERS[spec.family]
        if provider is not None and provider not in providers:
            continue
        presets = tuple(f"{p}:{name}" for p, named in table.presets.items() for name, model in named.items()
                        if model == spec.name and p in providers)
        sizes = ", ".join(spec.sizes) if spec.sizes else ", ".join(spec.aspect_ratios)
        if spec.size_rule == "free":
            sizes += " (+ any WxH in limits)"
        if spec.image_sizes:
            sizes += f" @ {'/'.join(spec.image_sizes)}"
        cells = (spec.name, ", ".join(providers), ", ".join(spec.tasks), sizes, str(spec.n_max),
                 ", ".join(spec.qualities) or "-", str(spec.max_input_images), _price(spec), _status(spec, today),
                 ", ".join(spec.aliases) or "-", ", ".join(presets) or "-")
        rows.append(ModelRow(spec, providers, presets, cells))
    return rows


def plain_lines(rows: list[ModelRow]) -> Iterator[str]:
    """A header and one tab-separated line per model (no cell holds a tab)."""
    yield "\t".join(COLUMNS)
    for row in rows:
        yield "\t".join(row.cells)


def print_models(provider: str | None = None, *, json: bool = False, out: IO[str] | None = None,
                 console: Console | None = None) -> None:
    """Print the models `provider` serves: JSON with `json`, a rich view when `console` is given or `out` (stdout
    by default) is a terminal, tab-separated lines otherwise."""
    rows = model_rows(provider)
    out = out or sys.stdout
    if json:
        import orjson

        today = dt.date.today()
        out.write(orjson.dumps([row.to_json(today) for row in rows], option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    if console is None and not out.isatty():
        for line in plain_lines(rows):
            out.write(line + "\n")
        return
    from rich.console import Console

    _print_rich(rows, console or Console(file=out))


def _print_rich(rows: list[ModelRow], console: Console) -> None:
    from rich.table import Table
    from rich.text import Text

    name_width = max((len(row.cells[0]) for row in rows), default=len(COLUMNS[0]))
    # Borders and padding take 3 characters a column; the model column is never narrower than its longest name.
    if console.width < name_width + 4 + (len(COLUMNS) - 1) * (_MIN_COLUMN + 3):
        for row in rows:
            # Whole even when longer than the terminal (the terminal wraps it, the text stays one line for grep).
            console.print(Text(row.cells[0], style="bold"), soft_wrap=True)
            fields = Table.grid(padding=(0, 1))
            fields.add_column(no_wrap=True, style="dim")
            fields.add_column(overflow="fold")
            for column, cell in zip(COLUMNS[1:], row.cells[1:], strict=True):
                fields.add_row(f"  {column}", cell)
            console.print(fields)
        return
    view = Table(title="pixelmill models")
    view.add_column(COLUMNS[0], no_wrap=True, min_width=name_width)
    for column in COLUMNS[1:]:
        view.add_column(column, overflow="fold")
    for row in rows:
        view.add_row(*row.cells)
    console.print(view)
