"""The gallery page, read as HTML and as the JSON block its script reads: one row per input row with its status,
error kind, model, cost, identity and time, thumbnails embedded or beside the page, edits as input -> output,
pipelines as a strip, nothing from the network, and every value from the data inert (hostile prompts, ids,
paths and error messages stay text). The browser tests are in test_gallery_browser.py, `export` in
test_gallery_export.py."""

from __future__ import annotations

import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest

from pixelmill.errors import ConfigError
from pixelmill.reports.gallery.assets import SCRIPT, script_hash
from pixelmill.reports.gallery.page import page_json, write_gallery
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
    """The parts of the page the tests look at: scripts (code and data), images, links, handlers, the CSP, and
    the rows the script shows (the JSON block, parsed as the page's script parses it)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.scripts: list[str | None] = []  # each <script>'s type attribute
        self.handlers: list[str] = []
        self.csp: str | None = None
        self._in_data = False
        self._data: list[str] = []
        self.feed(text)
        self.data: dict[str, Any] = orjson.loads("".join(self._data))
        self.rows: list[dict[str, Any]] = self.data["rows"]
        # Thumbnails and full-image links of the rows, as the script will set them.
        for row in self.rows:
            for stage in row["g"]:
                for image in stage["im"]:
                    if image["t"]:
                        self.images.append(image["t"])
                    if image["h"]:
                        self.links.append(image["h"])

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        if tag == "img":
            self.images.append(values.get("src") or "")
        elif tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        elif tag == "script":
            self.scripts.append(values.get("type"))
            self._in_data = values.get("type") == "application/json"
        elif tag == "meta" and values.get("http-equiv") == "Content-Security-Policy":
            self.csp = values.get("content")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_data = False

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self._data.append(data)


def stage_labels(row: dict[str, Any]) -> list[str]:
    return [stage["l"] for stage in row["g"]]


def test_cards_statuses_and_embedded_thumbnails(emulator_thread: Emulator, tmp_path: Path) -> None:
    run = generate_run(emulator_thread, tmp_path)
    result = write_gallery(run)
    assert result.path == (run / "gallery.html").resolve() and result.thumbs_dir is None
    text = result.path.read_text()
    page = Page(text)
    assert len(page.rows) == len(HOSTILE_ROWS)
    statuses = [r["s"] for r in page.rows]
    assert statuses.count("done") == DONE and statuses.count("failed") == FAILED
    assert len(page.images) == DONE and all(src.startswith("data:image/webp;base64,") for src in page.images)
    assert f"All ({len(HOSTILE_ROWS)})" in text and f"Failed ({FAILED})" in text and f"Done ({DONE})" in text
    # Model, cost and status on each card; failed rows with their reasons and error kinds.
    assert all(r["st"][0]["m"] == "gpt-image-2" for r in page.rows)
    errors = [e for r in page.rows for e in r["er"]]
    assert any("refused (HTTP 400)" in e for e in errors) and any(e.startswith("input: ") for e in errors)
    assert any("no prompt" in e for e in errors)
    assert sorted(s["e"] for r in page.rows for s in r["st"] if s["e"]) == ["input", "refused", "refused"]
    assert '<option value="refused">refused</option>' in text and '<option value="input">input</option>' in text
    assert "gpt-image-2 · $0.0082" in stage_labels(page.rows[0])  # one low-quality square image on gpt-image-2
    assert page.rows[0]["c"] == pytest.approx(0.00819)


def test_rows_carry_their_identity_key_and_time(emulator_thread: Emulator, tmp_path: Path) -> None:
    """Marks are keyed by the journal's identity of a row (its id here), and "sort by time" reads when its
    results last changed: both come from the journal, row by row."""
    run = generate_run(emulator_thread, tmp_path)
    rows = Page(write_gallery(run).path.read_text()).rows
    assert [r["i"] for r in rows] == list(range(len(HOSTILE_ROWS)))
    assert rows[0]["id"] == 'id:"mug"' and rows[0]["k"] == "mug" and rows[1]["id"] == 'id:"lamp"'
    assert len({r["id"] for r in rows}) == len(HOSTILE_ROWS) and len({r["k"] for r in rows}) == len(HOSTILE_ROWS)
    assert all(isinstance(r["t"], float) and abs(r["t"] - time.time()) < 600 for r in rows)


def test_hostile_text_stays_text(emulator_thread: Emulator, tmp_path: Path) -> None:
    run = generate_run(emulator_thread, tmp_path)
    text = write_gallery(run).path.read_text()
    page = Page(text)
    # The page's own script, and the rows as inert JSON: nothing from the data is a script.
    assert page.scripts == ["application/json", None]
    assert not page.handlers  # no on* attribute anywhere
    assert "<script>window" not in text and "<img src=x" not in text and "</main><script>" not in text
    assert "\\u003cscript\\u003ewindow.__pwned = 1\\u003c/script\\u003e" in text
    # The values come back exactly as they were, for the script to set as text.
    assert [r["p"][0][1] for r in page.rows if r["p"]] == [r["prompt"] for r in HOSTILE_ROWS if "prompt" in r]
    assert [r["n"] for r in page.rows][:7] == [r["id"] for r in HOSTILE_ROWS][:7]
    # Links are relative paths, percent-encoded: never a scheme, whatever an id or a path holds.
    assert page.links and all(not re.match(r"^[a-z][a-z0-9+.-]*:", href) for href in page.links)
    # The policy allows exactly the page's script and nothing from the network.
    assert page.csp is not None and script_hash() in page.csp and "default-src 'none'" in page.csp
    assert "'unsafe-inline'" not in page.csp.split("script-src")[1].split(";")[0]
    assert f"<script>{SCRIPT}</script>" in text
    assert not re.search(r"(src|href)=\"(https?:)?//", text)


def test_page_json_cannot_close_its_block() -> None:
    text = page_json({"a": "</script><!-- & -->"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert orjson.loads(text) == {"a": "</script><!-- & -->"}


def test_edits_show_input_then_output(emulator_thread: Emulator, tmp_path: Path) -> None:
    run = edit_run(emulator_thread, tmp_path, generate_run(emulator_thread, tmp_path))
    page = Page(write_gallery(run).path.read_text())
    assert len(page.rows) == 2 and len(page.images) == 2  # e1: input and output; e2 failed, its input missing
    labels = stage_labels(page.rows[0])
    assert labels[0] == "input" and labels[1].startswith("gpt-image-2 · $")
    assert page.rows[1]["g"][0]["im"][0]["x"] == f"missing: {MISSING}"  # the input that is not there, as text
    assert f"image file {MISSING} not found" in page.rows[1]["er"][0]  # the row's error names it


def test_pipeline_rows_are_a_strip(emulator_thread: Emulator, tmp_path: Path) -> None:
    from tests.test_pipeline import ENV, TWO_STEPS, pipeline

    path = pipeline(tmp_path, emulator_thread, TWO_STEPS)
    assert cli("run", path, "--quiet", env=ENV).code == 0
    result = cli("gallery", tmp_path / "out", "-o", tmp_path / "pages" / "pipe.html")
    assert result.code == 0 and "gallery: " in result.output
    text = (tmp_path / "pages" / "pipe.html").read_text()
    page = Page(text)
    assert len(page.rows) == 3 and len(page.images) == 6
    labels = stage_labels(page.rows[0])
    assert labels[0].startswith("product_image · gpt-image-2") and labels[1].startswith("on_marble · ")
    assert [s["n"] for s in page.rows[0]["st"]] == ["product_image", "on_marble"]
    assert '<select id="f-step">' in text and '<option value="on_marble">on_marble</option>' in text
    # Each step's prompt is on the card, named by its step.
    prompts = page.rows[0]["p"]
    assert prompts[0][0] == "product_image" and prompts[0][1].startswith("A professional product photo of Lamp")
    assert prompts[1] == ["on_marble", "Put this product on a marble table."]
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
    assert len(page.rows) == len(HOSTILE_ROWS) and len(page.images) == DONE
    assert page.rows[0]["id"] == 'id:"mug"'  # the journal still knows each row
    (run / "output.jsonl").unlink()
    with pytest.raises(ConfigError, match="both missing"):
        write_gallery(run)


def test_the_run_summary_names_the_gallery(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", HOSTILE_ROWS[:2])
    out = tmp_path / "my run"
    result = cli("generate", src, "-o", out, "--base-url", emulator_thread.openai_base_url)
    assert result.code == 0, result.output
    assert f"pixelmill: review: pixelmill gallery '{out}'" in result.output  # quoted: the path has a space
    quiet = cli("generate", src, "-o", out, "--base-url", emulator_thread.openai_base_url, "--quiet")
    assert quiet.code == 0 and "review:" not in quiet.output
    # A prompt field that is there but blank: the row fails on its own (a field in no row stops before sending).
    nothing = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "   "}])
    failed = cli("generate", nothing, "-o", tmp_path / "bad", "--base-url", emulator_thread.openai_base_url)
    assert failed.code == 1 and "review:" not in failed.output  # no image to review


def test_not_a_run(tmp_path: Path) -> None:
    result = cli("gallery", tmp_path)
    assert result.code == 2 and "holds no pixelmill run" in result.output
    assert cli("gallery", tmp_path, "--thumbnails", "zip").code == 2


def test_demo_ends_with_the_gallery(tmp_path: Path) -> None:
    result = cli("demo", "-o", tmp_path / "demo")
    assert result.code == 0, result.output
    assert f"demo: gallery: {(tmp_path / 'demo' / 'generate' / 'gallery.html').resolve()}" in result.output
    page = Page((tmp_path / "demo" / "generate" / "gallery.html").read_text())
    assert len(page.rows) == 12 and len(page.images) == 12
    shutil.rmtree(tmp_path / "demo")
