"""One output row as a gallery card: its images by stage (edits as input -> output, multi-turn rows and
multi-step rows as a strip), prompts, per-step status, model and error kind (what the filters read), cost, the
time its results last changed (what "sort by time" reads) and its journal identity (what marks are keyed by).

Nothing here makes markup: the page script sets text and attributes from these values, so a prompt, an id or
an error message stays text whatever it holds. Image links are relative paths, percent-encoded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pixelmill.config import RunConfig, StepConfig
from pixelmill.errors import ConfigError, InputError
from pixelmill.writing.journal import Place

PROMPT_MAX = 4000  # characters of a prompt kept on a card (the search covers the same text)


@dataclass(slots=True)
class Source:
    """One image to show: a file, inline bytes (a data URL), or a reference that is not loaded."""

    path: Path | None = None
    data: bytes | None = None
    note: str | None = None  # shown instead of an image (remote URL, missing file, failed or pending step)
    href: str | None = None  # link to the full image, relative to the page


@dataclass(slots=True)
class Stage:
    label: str
    images: list[Source]
    title: str = ""


@dataclass(slots=True)
class StepView:
    name: str
    status: str
    model: str
    kind: str | None  # the error kind of a failed step


@dataclass(slots=True)
class Card:
    index: int
    name: str
    status: str  # done | failed | pending
    stages: list[Stage]
    prompts: list[tuple[str, str]]  # (label, prompt)
    steps: list[StepView]
    cost: float
    errors: list[str]
    notes: list[str] = field(default_factory=list)  # revised prompts, model text
    identity: str | None = None
    key: str | None = None
    updated: float | None = None

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(s.model for s in self.steps))

    def to_json(self, srcs: dict[int, str | None]) -> dict[str, Any]:
        """The card as the page script reads it (short names: 10,000 of them travel in one page)."""
        return {
            "i": self.index, "n": self.name, "s": self.status, "id": self.identity, "k": self.key,
            "c": round(self.cost, 6), "t": self.updated,
            "st": [{"n": s.name, "s": s.status, "m": s.model, "e": s.kind} for s in self.steps],
            "g": [{"l": g.label, "tt": g.title,
                   "im": [{"t": srcs.get(id(im)), "h": im.href, "x": im.note} for im in g.images]}
                  for g in self.stages],
            "p": [[label, _cut(prompt)] for label, prompt in self.prompts],
            "er": [_cut(e) for e in self.errors],
            "no": [_cut(n) for n in self.notes],
        }


def _cut(text: str) -> str:
    return text if len(text) <= PROMPT_MAX else text[:PROMPT_MAX] + "…"


def make_card(config: RunConfig, rundir: Path, page_dir: Path, row: dict[str, Any], index: int,
              place: Place | None) -> Card:
    pm = row.get("pixelmill") if isinstance(row.get("pixelmill"), dict) else {}
    assert isinstance(pm, dict)
    name = str(row.get(config.id_field)) if config.id_field and row.get(config.id_field) is not None else \
        f"row {index}"
    if "line" in pm or (set(row) == {"pixelmill"} and "error" in pm):  # a line that could not be read
        error = pm.get("error") or {}
        first = config.steps[0]
        view = StepView(first.name, "failed", first.model.model, str(error.get("kind") or "error"))
        return _placed(Card(index, name, "failed", [], [], [view], 0.0, [error_text(error)]), place)
    objects: dict[str, Any] = pm if config.pipeline else {config.steps[0].name: pm}
    card = _placed(Card(index, name, "pending", [], [], [], 0.0, []), place)
    earlier_fields: set[str] = set()
    multi_step = len(config.steps) > 1
    for step in config.steps:
        obj = objects.get(step.name) if isinstance(objects.get(step.name), dict) else {}
        assert isinstance(obj, dict)
        status = str(obj.get("status") or "pending")
        model = str(obj.get("model") or step.model.model)
        error = obj.get("error") if isinstance(obj.get("error"), dict) else {}
        assert isinstance(error, dict)
        card.steps.append(StepView(step.name, status, model, str(error.get("kind") or "error")
                                   if status == "failed" else None))
        card.cost += _float(obj.get("cost_usd"))
        turn_prompts = _prompts(step, row)
        for i, prompt in enumerate(turn_prompts):
            label = step.name if multi_step else ""
            if len(turn_prompts) > 1:
                label = f"{label} turn {i + 1}".strip()
            card.prompts.append((label, prompt))
        if obj.get("revised_prompt"):
            revised = obj["revised_prompt"]
            card.notes.append("revised prompt: " + (revised if isinstance(revised, str) else
                                                    " | ".join(map(str, revised))))
        if status == "failed":
            card.errors.append((f"{step.name}: " if multi_step else "") + error_text(error))
        image_field = step.image_field or ("images" if step.task != "generate" else None)
        if image_field and image_field not in earlier_fields:
            inputs = _input_sources(config, row, image_field, page_dir)
            if inputs:
                card.stages.append(Stage("input", inputs))
        turns = obj.get("turns") if isinstance(obj.get("turns"), list) else None
        prefix = f"{step.name} · " if multi_step else ""
        if status == "done" and turns and len(turns) > 1:
            for t, turn in enumerate(turns):
                images = [_output_source(rundir, page_dir, p) for p in (turn.get("images") or [])]
                card.stages.append(Stage(f"{prefix}turn {t + 1}", images, title=str(turn.get("prompt") or "")))
        elif status == "done":
            outputs = row.get(step.out_field) or obj.get("outputs") or []
            images = [_output_source(rundir, page_dir, p) for p in outputs if isinstance(p, str)]
            card.stages.append(Stage(f"{prefix}{model} · ${_float(obj.get('cost_usd')):.4f}", images))
        else:
            card.stages.append(Stage(f"{prefix}{model}", [Source(note=status)]))
        earlier_fields.add(step.out_field)
    statuses = [s.status for s in card.steps]
    card.status = "failed" if "failed" in statuses else "pending" if "pending" in statuses else "done"
    return card


def _placed(card: Card, place: Place | None) -> Card:
    if place is not None:
        card.identity, card.key, card.updated = place.identity, place.key, place.updated
    return card


def _prompts(step: StepConfig, row: dict[str, Any]) -> list[str]:
    from pixelmill.reading.records import user_turns

    try:
        turns = user_turns(row, prompt_field=step.prompt_field, template=step.prompt)
    except (InputError, ConfigError):
        return []
    return [t.prompt for t in turns]


def _input_sources(config: RunConfig, row: dict[str, Any], image_field: str, page_dir: Path) -> list[Source]:
    from pixelmill.engine.inputs import image_refs

    refs = image_refs(row.get(image_field))
    for message in _messages(row):
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and ("image_url" in part or part.get("type") == "image"):
                ref = part.get("image_url", part.get("image"))
                refs.append(ref.get("url") if isinstance(ref, dict) else ref)
    return [_input_source(config.rows_dir, page_dir, ref) for ref in refs[:16]]


def _messages(row: dict[str, Any]) -> list[Any]:
    for name in ("conversations", "conversation"):
        if isinstance(row.get(name), list):
            return list(row[name])
    return []


def _input_source(base: Path, page_dir: Path, ref: Any) -> Source:
    if isinstance(ref, dict):
        ref = ref.get("url") or ref.get("path")
    if not isinstance(ref, str) or not ref:
        return Source(note="no image")
    if ref.startswith("data:"):
        from pixelmill.reading.images import _data_url

        try:
            return Source(data=_data_url(ref, "image"))
        except InputError:
            return Source(note="unreadable data URL")
    if ref.startswith(("http://", "https://")):
        return Source(note=f"remote image (not loaded): {ref[:200]}")
    path = Path(ref) if Path(ref).is_absolute() else base / ref
    if not path.is_file():
        return Source(note=f"missing: {ref[:200]}")
    return Source(path=path, href=_href(path, page_dir))


def _output_source(rundir: Path, page_dir: Path, ref: Any) -> Source:
    if not isinstance(ref, str):
        return Source(note="no image")
    if ref.startswith("data:"):
        return _input_source(rundir, page_dir, ref)
    path = rundir / ref
    if not path.is_file():
        return Source(note=f"missing: {ref[:200]}")
    return Source(path=path, href=_href(path, page_dir))


def _href(path: Path, page_dir: Path) -> str:
    """A relative, percent-encoded link: never a scheme, whatever the path holds."""
    try:
        rel = os.path.relpath(path.resolve(), page_dir)
    except ValueError:  # another drive (Windows)
        rel = str(path.resolve())
    return quote(Path(rel).as_posix(), safe="/")


def error_text(error: dict[str, Any]) -> str:
    kind = error.get("kind") or "error"
    status = f" (HTTP {error['http_status']})" if error.get("http_status") else ""
    return f"{kind}{status}: {error.get('message') or ''}"


def _float(value: Any) -> float:
    try:
        return float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0
