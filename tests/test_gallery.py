"""The gallery page, read as HTML: one card per row with its status, thumbnails embedded or beside the page,
edits as input -> output, pipelines as a strip, nothing from the network, and every value from the data
escaped (hostile prompts, ids, paths and error messages stay text). The browser tests are in
test_gallery_browser.py."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pixelmill.errors import ConfigError
from pixelmill.reports.gallery.assets import SCRIPT, script_hash
from pixelmill.reports.gallery.page import write_gallery
from pixelmill.testing import Emulator
from tests.runs import cli, read_output, run_api, write_jsonl

# ---------------------------------------------------------------- the runs shown (also used by the browser tests)

HOSTILE_ROWS: list[dict[str, Any]] = [
    {"id": "mug", "prompt": "A ceramic mug & saucer"},
    {"id": "lamp", "prompt": "A brass lamp"},
    {"id": "js", "prompt": "<script>window.__pwned = 1</script> a tea cup"},
    {"id": '"><img src=x onerror="window.__pwned=2">', "prompt": 'a hat "><img src=x onerror="window.__pwned=2">'},
    {"id": "closer", "prompt": "</p></article></main><script>window.__pwned=3</script> a chair"},
    {"id": "refused1", "prompt": "blocked [[fault:moderation]]"},
    {"id": "javascript:window.__pwned=4", "prompt": "<b>also</b> blocked [[fault:moderation]]"},
    {"id": "noprompt", "caption": "a row without a prompt"},
]
DONE, FAILED = 5, 3
MISSING = "missing<script>window.__pwned=6</script>.png"


def generate_run(emu: Emulator, tmp_path: Path) -> Path:
    src = write_jsonl(tmp_path / "in.jsonl", HOSTILE_ROWS)
    run = tmp_path / "gen"
    report = run_api(emu, src, run, quality="low", size="1024x1024", id_field="id")
    assert report.exit_code == 1 and report.counts.done == DONE and report.counts.failed == FAILED
    return run


def edit_run(emu: Emulator, tmp_path: Path, generated: Path) -> Path:
    first = next(r for r in read_output(generated) if r["id"] == "mug")
    rows = [
        {"id": "e1", "images": [str(generated / first["images"][0])], "prompt": "make it blue"},
        {"id": "e2", "images": [MISSING], "prompt": "make it red"},
    ]
    src = write_jsonl(tmp_path / "edits.jsonl", rows)
    run = tmp_path / "edit"
    report = run_api(emu, src, run, task="edit", quality="low", id_field="id")
    assert report.counts.done == 1 and report.counts.failed == 1
    return run


class Page(HTMLParser):
    """The parts of the page the tests look at: cards, images, links, scripts, the CSP."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.cards: list[dict[str, str | None]] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.scripts = 0
        self.handlers: list[str] = []
        self.csp: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        if tag == "article":
            self.cards.append(values)
        elif tag == "img":
            self.images.append(values.get("src") or "")
        elif tag == "a":
            self.links.append(values.get("href") or "")
        elif tag == "script":
            self.scripts += 1
        elif tag == "meta" and values.get("http-equiv") == "Content-Security-Policy":
            self.csp = values.get("content")


def test_cards_statuses_and_embedded_thumbnails(emulator_thread: Emulator, tmp_path: Path) -> None:
    run = generate_run(emulator_thread, tmp_path)
    result = write_gallery(run)
    assert result.path == (run / "gallery.html").resolve() and result.thumbs_dir is None
    text = result.path.read_text()
    page = Page(text)
    assert len(page.cards) == len(HOSTILE_ROWS)
    statuses = [c["data-status"] for c in page.cards]
    assert statuses.count("done") == DONE and statuses.count("failed") == FAILED
    assert len(page.images) == DONE and all(src.startswith("data:image/webp;base64,") for src in page.images)
    assert f"All ({len(HOSTILE_ROWS)})" in text and f"Failed ({FAILED})" in text and f"Done ({DONE})" in text
    # Model, cost and status on each card; failed rows with their reasons.
    assert text.count("gpt-image-2") >= len(HOSTILE_ROWS)
    assert "refused (HTTP 400)" in text and "input: " in text and "no prompt" in text
    assert "$0.0082" in text  # one low-quality square image on gpt-image-2


def test_hostile_text_stays_text(emulator_thread: Emulator, tmp_path: Path) -> None:
    run = generate_run(emulator_thread, tmp_path)
    text = write_gallery(run).path.read_text()
    page = Page(text)
    assert page.scripts == 1  # the page's own script, nothing from the data
    assert not page.handlers  # no on* attribute anywhere
    assert "<script>window" not in text and "<img src=x" not in text and "</main><script>" not in text
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in text
    assert "&quot;&gt;&lt;img src=x onerror=&quot;window.__pwned=2&quot;&gt;" in text
    assert "&lt;b&gt;also&lt;/b&gt;" in text
    # Links are relative paths, percent-encoded: never a scheme, whatever an id or a path holds.
    assert page.links and all(not re.match(r"^[a-z][a-z0-9+.-]*:", href) for href in page.links)
    # The policy allows exactly the page's script and nothing from the network.
    assert page.csp is not None and script_hash() in page.csp and "default-src 'none'" in page.csp
    assert SCRIPT in text
    assert not re.search(r"(src|href)=\"(https?:)?//", text)


def test_edits_show_input_then_output(emulator_thread: Emulator, tmp_path: Path) -> None:
    run = edit_run(emulator_thread, tmp_path, generate_run(emulator_thread, tmp_path))
    text = write_gallery(run).path.read_text()
    page = Page(text)
    assert len(page.cards) == 2 and len(page.images) == 2  # e1: input and output; e2 failed, its input missing
    first_card = text.split("<article")[1]
    assert first_card.index(">input<") < first_card.index("&rarr;") < first_card.index("gpt-image-2 · $")
    escaped = MISSING.replace("<", "&lt;").replace(">", "&gt;")
    assert f"missing: {escaped}" in text  # the input that is not there, as text
    assert f"image file {escaped} not found" in text  # the row's error names it, escaped


def test_pipeline_rows_are_a_strip(emulator_thread: Emulator, tmp_path: Path) -> None:
    from tests.test_pipeline import ENV, TWO_STEPS, pipeline

    path = pipeline(tmp_path, emulator_thread, TWO_STEPS)
    assert cli("run", path, "--quiet", env=ENV).code == 0
    result = cli("gallery", tmp_path / "out", "-o", tmp_path / "pages" / "pipe.html")
    assert result.code == 0 and "gallery: " in result.output
    text = (tmp_path / "pages" / "pipe.html").read_text()
    page = Page(text)
    assert len(page.cards) == 3 and len(page.images) == 6
    card = text.split("<article")[1]
    assert card.index("product_image · gpt-image-2") < card.index("&rarr;") < card.index("on_marble · ")
    # Each step's prompt is on the card, named by its step.
    assert "<strong>product_image:</strong> A professional product photo of Lamp" in card
    assert "<strong>on_marble:</strong> Put this product on a marble table." in card
    # The page is elsewhere: links to the full images climb back to the run.
    assert all(href.startswith("../out/images/") for href in page.links)


def test_thumbnails_beside_the_page(emulator_thread: Emulator, tmp_path: Path) -> None:
    run = generate_run(emulator_thread, tmp_path)
    result = write_gallery(run, tmp_path / "site" / "g.html", thumbnails="files")
    assert result.thumbs_dir == (tmp_path / "site" / "g_files").resolve()
    page = Page(result.path.read_text())
    assert len(page.images) == DONE
    for src in page.images:
        assert src.startswith("g_files/t") and (tmp_path / "site" / src).is_file()
    # Written again, the folder holds this page's thumbnails only.
    write_gallery(run, tmp_path / "site" / "g.html", thumbnails="files", max_rows=2)
    assert len(list((tmp_path / "site" / "g_files").iterdir())) == 2


def test_rows_come_from_the_output_when_the_source_is_gone(emulator_thread: Emulator, tmp_path: Path) -> None:
    run = generate_run(emulator_thread, tmp_path)
    (tmp_path / "in.jsonl").unlink()
    page = Page(write_gallery(run).path.read_text())
    assert len(page.cards) == len(HOSTILE_ROWS) and len(page.images) == DONE
    (run / "output.jsonl").unlink()
    with pytest.raises(ConfigError, match="both missing"):
        write_gallery(run)


def test_not_a_run(tmp_path: Path) -> None:
    result = cli("gallery", tmp_path)
    assert result.code == 2 and "holds no pixelmill run" in result.output
    assert cli("gallery", tmp_path, "--thumbnails", "zip").code == 2


def test_demo_ends_with_the_gallery(tmp_path: Path) -> None:
    result = cli("demo", "-o", tmp_path / "demo")
    assert result.code == 0, result.output
    assert f"demo: gallery: {(tmp_path / 'demo' / 'generate' / 'gallery.html').resolve()}" in result.output
    page = Page((tmp_path / "demo" / "generate" / "gallery.html").read_text())
    assert len(page.cards) == 12 and len(page.images) == 12
    shutil.rmtree(tmp_path / "demo")
