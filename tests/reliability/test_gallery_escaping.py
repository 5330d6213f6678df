"""The gallery escapes everything that comes from the data: prompts, ids, error messages, image references and
the run's own folder name show as text, never as markup, script or a link with a scheme. The page runs one
script, its own, allowed by hash in its Content-Security-Policy; the rows it shows are one inert JSON block
(`type="application/json"`, never run) with no `<`, `>` or `&` in it, which the script sets as text."""

from __future__ import annotations

import base64
import hashlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest

from pixelmill.reports.gallery.assets import SCRIPT
from pixelmill.testing import Emulator
from tests.runs import cli, write_jsonl

HOSTILE_PROMPTS = [
    "<script>alert('prompt')</script>",
    '"><svg onload=alert(2)>',
    "</p></article><iframe src=javascript:alert(3)></iframe>",
    "<style>*{display:none}</style> [[fault:moderation]]",
    "{{7*7}} ${7*7} &lt;pre-escaped&gt; &amp;",
]
HOSTILE_IDS = ["<b>id</b>", '"><img src=x onerror=alert(5)>', "javascript:alert(6)", "&#x3C;script&#x3E;", "ok"]
HOSTILE_IMAGES = [
    "<svg onload=alert(7)>.png",
    "javascript:alert(8)",
    'http://127.0.0.1:1/"><script>alert(9)</script>.png',
    "data:image/svg+xml;base64," + base64.b64encode(b"<svg onload='alert(10)'/>").decode(),
]
RUN_NAME = "run<img src=x onerror=alert(11)>"


class Page(HTMLParser):
    """What a browser would build from the page: elements, attributes and the text shown."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.data: list[str] = []
        self._in: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(tag, name, value or "") for name, value in attrs]
        if tag == "script":
            self._in = self.data if dict(attrs).get("type") == "application/json" else self.scripts

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        (self._in if self._in is not None else self.text).append(data)


def shown_by_script(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(the texts the page script sets from the rows, the image `src`/`href` values it sets)."""
    texts: list[str] = []
    links: list[str] = []
    for row in rows:
        texts += [row["n"], *(p[1] for p in row["p"]), *row["er"], *row["no"]]
        for stage in row["g"]:
            texts.append(stage["l"])
            for image in stage["im"]:
                texts.append(image["x"] or "")
                links += [v for v in (image["t"], image["h"]) if v]
    return texts, links


def hostile_runs(emu: Emulator, tmp_path: Path) -> list[Path]:
    gen_rows = [{"id": i, "prompt": p} for i, p in zip(HOSTILE_IDS, HOSTILE_PROMPTS, strict=True)]
    gen_src = write_jsonl(tmp_path / "gen.jsonl", [*gen_rows, b'{"prompt": "<script>broken'])
    gen_run = tmp_path / RUN_NAME
    assert cli("generate", gen_src, "-o", gen_run, "--base-url", emu.openai_base_url, "--id-field", "id",
               "--quiet").code == 1
    edit_rows = [{"id": f"<i>edit {n}</i>", "images": ref, "prompt": HOSTILE_PROMPTS[0]}
                 for n, ref in enumerate(HOSTILE_IMAGES)]
    edit_src = write_jsonl(tmp_path / "edit.jsonl", edit_rows)
    edit_run = tmp_path / "edit-run"
    assert cli("edit", edit_src, "-o", edit_run, "--base-url", emu.openai_base_url, "--id-field", "id",
               "--quiet").code == 1
    return [gen_run, edit_run]


@pytest.mark.parametrize("thumbnails", ["embed", "files"])
def test_gallery_shows_hostile_data_as_text(emulator_thread: Emulator, tmp_path: Path, thumbnails: str) -> None:
    for run in hostile_runs(emulator_thread, tmp_path):
        result = cli("gallery", run, "--thumbnails", thumbnails)
        assert result.code == 0, result.output
        html = (run / "gallery.html").read_text(encoding="utf-8")
        page = Page()
        page.feed(html)
        page.close()

        assert page.tags.count("script") == 2 and "".join(page.scripts) == SCRIPT
        block = "".join(page.data)
        assert not {"<", ">", "&"} & set(block)  # nothing in it can end the block or start markup
        texts, links = shown_by_script(orjson.loads(block)["rows"])
        assert page.tags.count("style") == 1
        assert not {"iframe", "svg", "object", "embed", "base", "form", "frame", "link"} & set(page.tags)
        for tag, name, value in page.attrs:
            assert not name.startswith("on"), (tag, name, value)
            if name in ("href", "src"):
                head = value.split("/", 1)[0]
                assert value.startswith("data:image/webp;base64,") or ":" not in head, (tag, name, value)
        for value in links:  # what the script will set as an image's src, or a full image's
            head = value.split("/", 1)[0]
            assert value.startswith("data:image/webp;base64,") or ":" not in head, value
        [csp] = [v for _, n, v in page.attrs if n == "content" and "script-src" in v]
        digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
        assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp

        # The hostile values are on the page, as text a reader sees (escaped, not dropped).
        shown = "".join(page.text) + " ".join(texts)
        assert run.name in shown
        if run.name == RUN_NAME:
            for value in [*HOSTILE_PROMPTS[:3], *HOSTILE_IDS[:4]]:
                assert value in shown or value.lower() in shown, value
        else:
            assert "<svg onload=alert(7)>.png" in shown
            assert "<script>alert(9)</script>" in shown
