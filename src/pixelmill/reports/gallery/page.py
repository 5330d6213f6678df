"""`pixelmill gallery RUNDIR`: one self-contained HTML page of a run's images beside their prompts.

The page needs no network and loads nothing from elsewhere: thumbnails (made with Pillow) are embedded as data
URLs, or written in a folder beside the page for large runs; styles and script are inline, and a
Content-Security-Policy forbids everything else. Each row is a card: its thumbnails (edits as input images ->
output, multi-turn rows and multi-step rows as a strip), its prompt, model, cost and status, and for a failed
row its reason. Buttons filter all / done / failed / pending and a search box filters by text, offline.

Everything taken from the data (prompts, ids, error messages, paths) is escaped; image links are relative
paths, percent-encoded, so no value can become markup, script or a URL scheme.

Rows come from the source and the journal, as the output dataset is built (`sinks.output_rows`); when the
source cannot be read any more, from the output file.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import orjson

from pixelmill.config import RunConfig, StepConfig
from pixelmill.errors import ConfigError, InputError
from pixelmill.reports.gallery.assets import SCRIPT, STYLE, content_security_policy
from pixelmill.writing.journal import Journal

ThumbMode = Literal["auto", "embed", "files"]
EMBED_UP_TO = 400  # images; past this, `auto` writes thumbnails beside the page
THUMB_PIXELS = 320
PROMPT_MAX = 4000  # characters of a prompt shown on a card (the search covers the same text)


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
class Card:
    index: int
    name: str
    status: str  # done | failed | pending
    stages: list[Stage]
    prompts: list[tuple[str, str]]  # (label, prompt)
    models: list[str]
    cost: float
    errors: list[str]
    notes: list[str] = field(default_factory=list)  # revised prompts, model text


@dataclass(slots=True)
class GalleryResult:
    path: Path
    cards: int
    rows: int
    images: int
    thumbs_dir: Path | None


def write_gallery(rundir: Path, output: Path | None = None, *, thumbnails: ThumbMode = "auto",
                  max_rows: int = 5000) -> GalleryResult:
    """Write the gallery page of the run in `rundir` (default `RUNDIR/gallery.html`)."""
    from pixelmill.reports.status import load_config, open_journal

    page = (output or rundir / "gallery.html").resolve()
    journal = open_journal(rundir)
    try:
        config = load_config(journal)
        if config is None:
            raise ConfigError(f"{rundir}: the journal holds no readable configuration; run the job again to "
                              "record it")
        spent = journal.spent()
        cards: list[Card] = []
        counts = {"done": 0, "failed": 0, "pending": 0}
        rows = 0
        for row in _rows(config, journal, rundir):
            card = _card(config, rundir, page.parent, row, rows)
            counts[card.status] += 1
            rows += 1
            if len(cards) < max_rows:
                cards.append(card)
    finally:
        journal.close()

    sources = [image for card in cards for stage in card.stages for image in stage.images
               if image.path is not None or image.data is not None]
    embed = thumbnails == "embed" or (thumbnails == "auto" and len(sources) <= EMBED_UP_TO)
    thumbs_dir = None if embed else page.parent / f"{page.stem}_files"
    srcs = _make_thumbnails(sources, thumbs_dir)
    page.parent.mkdir(parents=True, exist_ok=True)
    text = _render(config, rundir, cards, srcs, counts, rows, spent, max_rows)
    tmp = page.with_name(f".{page.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, page)
    return GalleryResult(page, len(cards), rows, sum(1 for s in srcs.values() if s), thumbs_dir)


# ---------------------------------------------------------------- rows -> cards


def _rows(config: RunConfig, journal: Journal, rundir: Path) -> Iterator[dict[str, Any]]:
    from pixelmill.writing.output import OutputCounts, output_rows

    plain = config.model_copy(update={"embed_images": False})
    if config.source.is_file():
        yield from output_rows(plain, journal, OutputCounts())
        return
    for name in ("output.jsonl", "output.parquet"):
        path = rundir / name
        if path.is_file():
            yield from _read_output(path)
            return
    raise ConfigError(f"cannot build the gallery: the source {config.source} and the output in {rundir} are both "
                      "missing; run the job again to write the output")


def _read_output(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix == ".jsonl":
        with path.open("rb") as f:
            for line in f:
                if line.strip():
                    yield orjson.loads(line)
        return
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=512):
        for row in batch.to_pylist():
            if isinstance(row.get("pixelmill"), str):
                row["pixelmill"] = orjson.loads(row["pixelmill"])
            yield row


def _card(config: RunConfig, rundir: Path, page_dir: Path, row: dict[str, Any], index: int) -> Card:
    pm = row.get("pixelmill") if isinstance(row.get("pixelmill"), dict) else {}
    assert isinstance(pm, dict)
    name = str(row.get(config.id_field)) if config.id_field and row.get(config.id_field) is not None else \
        f"row {index}"
    if "line" in pm or (set(row) == {"pixelmill"} and "error" in pm):  # a line that could not be read
        error = pm.get("error") or {}
        return Card(index, name, "failed", [], [], [], 0.0, [_error_text(error)])
    objects: dict[str, Any] = pm if config.pipeline else {config.steps[0].name: pm}
    stages: list[Stage] = []
    prompts: list[tuple[str, str]] = []
    models: list[str] = []
    errors: list[str] = []
    notes: list[str] = []
    cost = 0.0
    statuses: list[str] = []
    earlier_fields: set[str] = set()
    multi_step = len(config.steps) > 1
    for step in config.steps:
        obj = objects.get(step.name) if isinstance(objects.get(step.name), dict) else {}
        assert isinstance(obj, dict)
        status = str(obj.get("status") or "pending")
        statuses.append(status)
        model = str(obj.get("model") or step.model.model)
        if model not in models:
            models.append(model)
        cost += _float(obj.get("cost_usd"))
        turn_prompts = _prompts(step, row)
        for i, prompt in enumerate(turn_prompts):
            label = step.name if multi_step else ""
            if len(turn_prompts) > 1:
                label = f"{label} turn {i + 1}".strip()
            prompts.append((label, prompt))
        if obj.get("revised_prompt"):
            revised = obj["revised_prompt"]
            notes.append("revised prompt: " + (revised if isinstance(revised, str) else " | ".join(map(str, revised))))
        if status == "failed":
            errors.append((f"{step.name}: " if multi_step else "") + _error_text(obj.get("error") or {}))
        image_field = step.image_field or ("images" if step.task != "generate" else None)
        if image_field and image_field not in earlier_fields:
            inputs = _input_sources(config, row, image_field, page_dir)
            if inputs:
                stages.append(Stage("input", inputs))
        turns = obj.get("turns") if isinstance(obj.get("turns"), list) else None
        prefix = f"{step.name} · " if multi_step else ""
        if status == "done" and turns and len(turns) > 1:
            for t, turn in enumerate(turns):
                images = [_output_source(rundir, page_dir, p) for p in (turn.get("images") or [])]
                stages.append(Stage(f"{prefix}turn {t + 1}", images, title=str(turn.get("prompt") or "")))
        elif status == "done":
            outputs = row.get(step.out_field) or obj.get("outputs") or []
            images = [_output_source(rundir, page_dir, p) for p in outputs if isinstance(p, str)]
            stages.append(Stage(f"{prefix}{model} · ${_float(obj.get('cost_usd')):.4f}", images))
        else:
            stages.append(Stage(f"{prefix}{model}", [Source(note=status)]))
        earlier_fields.add(step.out_field)
    overall = "failed" if "failed" in statuses else "pending" if "pending" in statuses else "done"
    return Card(index, name, overall, stages, prompts, models, cost, errors, notes)


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


def _error_text(error: dict[str, Any]) -> str:
    kind = error.get("kind") or "error"
    status = f" (HTTP {error['http_status']})" if error.get("http_status") else ""
    return f"{kind}{status}: {error.get('message') or ''}"


def _float(value: Any) -> float:
    try:
        return float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0


# ---------------------------------------------------------------- thumbnails


def _make_thumbnails(sources: list[Source], folder: Path | None) -> dict[int, str | None]:
    """id(source) -> the thumbnail's `src` (data URL, or a path relative to the page), None when the bytes are
    not an image Pillow can read."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("t*.webp"):
            old.unlink()

    def one(item: tuple[int, Source]) -> tuple[int, str | None]:
        number, source = item
        try:
            data, mime = _thumbnail(source)
        except Exception:  # not an image, truncated, too large: shown as a note instead
            return id(source), None
        if folder is None:
            from pixelmill.reading.images import data_url

            return id(source), data_url(data, mime)
        name = f"t{number:06d}.webp"
        (folder / name).write_bytes(data)
        return id(source), quote(f"{folder.name}/{name}")

    workers = min(8, (os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(one, enumerate(sources)))


def _thumbnail(source: Source) -> tuple[bytes, str]:
    from PIL import Image

    from pixelmill.reading.images import MAX_PIXELS

    raw: Any = source.path if source.path is not None else BytesIO(source.data or b"")
    with Image.open(raw) as img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError("image too large for a thumbnail")
        img.draft("RGB", (THUMB_PIXELS, THUMB_PIXELS))
        frame = img.convert("RGBA" if _has_alpha(img) else "RGB")
    frame.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
    out = BytesIO()
    frame.save(out, format="WEBP", quality=78, method=4)
    return out.getvalue(), "image/webp"


def _has_alpha(img: Any) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


# ---------------------------------------------------------------- the page


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _render(config: RunConfig, rundir: Path, cards: list[Card], srcs: dict[int, str | None],
            counts: dict[str, int], rows: int, spent: float, max_rows: int) -> str:
    steps = ", ".join(f"{s.name} ({s.model.provider} {s.model.model})" for s in config.steps)
    shown_note = f" Showing the first {len(cards)} of {rows} rows (--max-rows)." if len(cards) < rows else ""
    buttons = [("all", "All", rows), ("done", "Done", counts["done"]), ("failed", "Failed", counts["failed"]),
               ("pending", "Pending", counts["pending"])]
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(content_security_policy())}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>pixelmill gallery: {_e(rundir.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        "<header>",
        f"<h1>pixelmill gallery: {_e(rundir)}</h1>",
        f'<p class="summary">{rows} rows: {counts["done"]} done, {counts["failed"]} failed, '
        f'{counts["pending"]} pending · spent ${spent:.4f} · {_e(steps)} · '
        f"made {_e(time.strftime('%Y-%m-%d %H:%M'))}.{_e(shown_note)}</p>",
        '<div class="controls" role="toolbar" aria-label="Filter">',
    ]
    for key, label, count in buttons:
        pressed = "true" if key == "all" else "false"
        out.append(f'<button type="button" data-filter="{key}" aria-pressed="{pressed}">{label} '
                   f"({count})</button>")
    out += [
        '<input id="search" type="search" placeholder="Search prompts, ids, models, errors" '
        'aria-label="Search" autocomplete="off">',
        f'<span class="shown"><span id="shown">{len(cards)}</span> shown</span>',
        "</div></header>",
        "<main>",
    ]
    for card in cards:
        out.append(_render_card(card, srcs))
    out += [
        "</main>",
        f"<footer>Made by pixelmill from {_e(rundir)}. Thumbnails link to the full images.</footer>",
        f"<script>{SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(out) + "\n"


def _render_card(card: Card, srcs: dict[int, str | None]) -> str:
    search = " ".join([card.name, card.status, *(p for _, p in card.prompts), *card.models, *card.errors,
                       *card.notes]).lower()
    single = len(card.stages) == 1 and len(card.stages[0].images) == 1
    parts = [f'<article class="card {card.status}" data-status="{card.status}" data-search="{_e(search)}">',
             f'<div class="strip{" single" if single else ""}">']
    for i, stage in enumerate(card.stages):
        if i:
            parts.append('<span class="arrow" aria-hidden="true">&rarr;</span>')
        title = f' title="{_e(stage.title)}"' if stage.title else ""
        parts.append(f'<figure class="stage"{title} style="margin:0"><figcaption class="label">{_e(stage.label)}'
                     '</figcaption><div class="thumbs">')
        for image in stage.images:
            parts.append(_render_image(image, srcs.get(id(image))))
        parts.append("</div></figure>")
    parts.append("</div>")
    for label, prompt in card.prompts:
        shown = prompt if len(prompt) <= PROMPT_MAX else prompt[:PROMPT_MAX] + "…"
        head = f"<strong>{_e(label)}:</strong> " if label else ""
        parts.append(f'<p class="prompt" title="{_e(shown)}">{head}{_e(shown)}</p>')
    for note in card.notes:
        parts.append(f'<p class="meta">{_e(note[:PROMPT_MAX])}</p>')
    for error in card.errors:
        parts.append(f'<p class="error">{_e(error[:PROMPT_MAX])}</p>')
    parts.append(f'<div class="meta"><span class="badge {card.status}">{card.status}</span>'
                 f"<span>{_e(card.name)}</span><span>{_e(', '.join(card.models))}</span>"
                 f"<span>${card.cost:.4f}</span></div>")
    parts.append("</article>")
    return "".join(parts)


def _render_image(image: Source, src: str | None) -> str:
    if src is None:
        note = image.note or "not an image"
        return f'<div class="missing">{_e(note)}</div>'
    img = f'<img src="{_e(src)}" alt="" loading="lazy" decoding="async">'
    if image.href:
        return f'<a href="{_e(image.href)}" target="_blank" rel="noopener">{img}</a>'
    return img
