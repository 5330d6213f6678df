"""`pixelmill gallery RUNDIR`: one self-contained HTML page to review a run's images, at scale.

The page needs no network and loads nothing from elsewhere: its style and script are inline (the script allowed
by its hash in a strict Content-Security-Policy; no inline event handler), the rows are one JSON block, and
thumbnails (made with Pillow) are embedded as data URLs, or written in a folder beside the page for large runs.
The script keeps only the cards in view in the DOM (a virtual grid), so 10,000 rows open at once; images load
as their cards come into view.

What a reviewer gets (docs/gallery.md): a density control (thumbnail size, remembered); a lightbox with the
full-size images, an edit's inputs beside its outputs, left/right keys to move and Esc to close; filters by
status, error kind, step and model, and a search; sort by row, cost or time (when the row's results last
changed); keep/reject marks (K / X in the lightbox, or the card's buttons), kept in the browser's storage for
this run, and exported as a JSONL file that `pixelmill export RUNDIR --keep MARKS -o DIR` applies
(writing/export.py). Marks name rows by their journal identity, never by position.

Everything taken from the data (prompts, ids, error messages, paths) reaches the page as JSON with `<`, `>` and
`&` escaped, and the script sets it as text; image links are relative paths, percent-encoded, so no value can
become markup, script or a URL scheme.
"""

from __future__ import annotations

import hashlib
import html
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import orjson

from pixelmill.config import RunConfig
from pixelmill.errors import ConfigError
from pixelmill.reports.gallery.assets import SCRIPT, STYLE, content_security_policy
from pixelmill.reports.gallery.cards import Card, Source, make_card

ThumbMode = Literal["auto", "embed", "files"]
EMBED_UP_TO = 400  # images; past this, `auto` writes thumbnails beside the page
THUMB_PIXELS = 320
MAX_ROWS = 50_000  # cards on a page by default: the JSON of 50,000 rows opens in a few seconds
SIZES = (80, 400, 20, 160)  # the density slider: thumbnail px from, to, step, default


@dataclass(slots=True)
class GalleryResult:
    path: Path
    cards: int
    rows: int
    images: int
    thumbs_dir: Path | None


def write_gallery(rundir: Path, output: Path | None = None, *, thumbnails: ThumbMode = "auto",
                  max_rows: int = MAX_ROWS) -> GalleryResult:
    """Write the gallery page of the run in `rundir` (default `RUNDIR/gallery.html`)."""
    from pixelmill.reports.status import load_config, open_journal
    from pixelmill.writing.export import identified_rows

    page = (output or rundir / "gallery.html").resolve()
    journal = open_journal(rundir)
    try:
        config = load_config(journal)
        if config is None:
            raise ConfigError(f"{rundir}: the journal holds no readable configuration; run the job again to "
                              "record it")
        spent = journal.spent()
        run_id = hashlib.sha256(f"{rundir.resolve()}\n{journal.get_meta('fingerprint')}".encode()).hexdigest()[:16]
        cards: list[Card] = []
        counts = {"done": 0, "failed": 0, "pending": 0}
        rows = 0
        plain = config.model_copy(update={"embed_images": False})
        try:
            for position, row, place in identified_rows(plain, journal, rundir):
                card = make_card(config, rundir, page.parent, row, position, place)
                counts[card.status] += 1
                rows += 1
                if len(cards) < max_rows:
                    cards.append(card)
        except ConfigError as exc:
            raise ConfigError(f"cannot build the gallery: {exc}") from None
    finally:
        journal.close()

    sources = [image for card in cards for stage in card.stages for image in stage.images
               if image.path is not None or image.data is not None]
    embed = thumbnails == "embed" or (thumbnails == "auto" and len(sources) <= EMBED_UP_TO)
    thumbs_dir = None if embed else page.parent / f"{page.stem}_files"
    srcs = _make_thumbnails(sources, thumbs_dir)
    page.parent.mkdir(parents=True, exist_ok=True)
    text = _render(config, rundir, run_id, cards, srcs, counts, rows, spent)
    tmp = page.with_name(f".{page.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, page)
    return GalleryResult(page, len(cards), rows, sum(1 for s in srcs.values() if s), thumbs_dir)


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


def page_json(value: Any) -> str:
    """JSON that is safe inside a <script> block: no `<`, `>` or `&` as themselves (JSON.parse reads the
    escapes back), so no value can close the block or open a comment."""
    text = orjson.dumps(value).decode("utf-8")
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _select(ident: str, label: str, first: str, values: list[str]) -> str:
    options = [f'<option value="">{_e(first)}</option>'] + [f'<option value="{_e(v)}">{_e(v)}</option>'
                                                            for v in values]
    return f'<label>{_e(label)} <select id="{ident}">{"".join(options)}</select></label>'


def _render(config: RunConfig, rundir: Path, run_id: str, cards: list[Card], srcs: dict[int, str | None],
            counts: dict[str, int], rows: int, spent: float) -> str:
    steps = ", ".join(f"{s.name} ({s.model.provider} {s.model.model})" for s in config.steps)
    shown_note = f" Showing the first {len(cards)} of {rows} rows (--max-rows)." if len(cards) < rows else ""
    buttons = [("all", "All", rows), ("done", "Done", counts["done"]), ("failed", "Failed", counts["failed"]),
               ("pending", "Pending", counts["pending"])]
    kinds = sorted({s.kind for c in cards for s in c.steps if s.kind})
    models = sorted({s.model for c in cards for s in c.steps})
    low, high, step, default = SIZES
    filters = [f'<button type="button" data-filter="{key}" aria-pressed="{"true" if key == "all" else "false"}">'
               f"{label} ({count})</button>" for key, label, count in buttons]
    if len(config.steps) > 1:
        filters.append(_select("f-step", "Step", "every step", [s.name for s in config.steps]))
    filters += [
        _select("f-kind", "Error", "any error kind", kinds),
        _select("f-model", "Model", "any model", models),
        '<label>Marks <select id="f-mark"><option value="">all</option><option value="keep">kept</option>'
        '<option value="reject">rejected</option><option value="none">unmarked</option></select></label>',
        '<label>Sort <select id="sort"><option value="row">row</option><option value="cost-desc">cost, highest '
        'first</option><option value="cost-asc">cost, lowest first</option><option value="time-desc">time, '
        'latest first</option><option value="time-asc">time, earliest first</option></select></label>',
        '<input id="search" type="search" placeholder="Search prompts, ids, models, errors" aria-label="Search" '
        'autocomplete="off">',
    ]
    data = {"run": run_id, "rows": [card.to_json(srcs) for card in cards]}
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
        f'<div class="controls" role="toolbar" aria-label="Filter and sort">{"".join(filters)}</div>',
        '<div class="controls" role="toolbar" aria-label="View and marks">',
        f'<label>Size <input id="size" type="range" min="{low}" max="{high}" step="{step}" value="{default}" '
        'aria-label="Thumbnail size"></label>',
        f'<span class="shown"><span id="shown">{len(cards)}</span> shown</span>',
        '<span class="marks" id="marks"></span>',
        f'<a class="button" id="export" download="{_e(rundir.name or "run")}-marks.jsonl" '
        'aria-disabled="true">Export marks (0)</a>',
        '<span class="keys">click a card to open it · <kbd>←</kbd> <kbd>→</kbd> move · <kbd>K</kbd> keep · '
        "<kbd>X</kbd> reject · <kbd>U</kbd> unmark · <kbd>Esc</kbd> close · <kbd>/</kbd> search · "
        "<kbd>+</kbd> <kbd>-</kbd> size</span>",
        "</div></header>",
        '<main id="grid" aria-label="Rows"></main>',
        '<p class="empty" id="empty" hidden>No row matches.</p>',
        '<div id="lightbox" role="dialog" aria-modal="true" aria-label="Image" hidden>',
        '<div class="lb-bar"><button type="button" id="lb-prev" title="Previous (←)">←</button>'
        '<span id="lb-pos"></span><button type="button" id="lb-next" title="Next (→)">→</button>'
        '<span class="lb-title" id="lb-title"></span>'
        '<button type="button" id="lb-keep" title="Keep (K)">✓ Keep</button>'
        '<button type="button" id="lb-reject" title="Reject (X)">✕ Reject</button>'
        '<button type="button" id="lb-close" title="Close (Esc)">Close</button></div>',
        '<div id="lb-stages"></div><div id="lb-text"></div></div>',
        f"<footer>Made by pixelmill from {_e(rundir)}. Marks stay in this browser until exported; "
        f"apply them with: pixelmill export {_e(rundir)} --keep MARKS.jsonl -o KEPT_DIR</footer>",
        f'<script type="application/json" id="gallery-data">{page_json(data)}</script>',
        f"<script>{SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(out) + "\n"
