"""The gallery in a real browser: headless Chromium driven over the DevTools protocol (a websocket from
aiohttp), with real mouse clicks and key presses. The page loads from a file with no network and shows the
right images; the filter buttons, selects (error kind, marks, sort) and search box show the right cards; the
lightbox opens on a click, moves with the arrow keys and closes with Esc; keep/reject marks (keys and clicks)
survive a reload and download as a file that `pixelmill export` applies; the density is remembered; the CSP
lets the page's own script run and nothing else; no hostile text ran.

Skipped when Chromium is not installed (CI installs it: `apt-get install -y --no-install-recommends chromium`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from pixelmill.reports.gallery.page import write_gallery
from pixelmill.testing import Emulator
from tests.runs import cli, read_output
from tests.test_gallery import DONE, FAILED, HOSTILE_ROWS, MISSING, Page, edit_run, generate_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--window-size=1400,4000", "--remote-debugging-port=0"]


class Tab:
    """One page target, spoken to over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), 20)
            if message.get("id") == ident:
                assert "error" not in message, message
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    async def eval(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def open(self, path: Path) -> None:
        await self.send("Page.navigate", url=path.as_uri())  # write_gallery's path is absolute
        deadline = time.monotonic() + 20
        while await self.eval("document.readyState") != "complete":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        # Every image has either loaded or failed.
        await self.eval("Promise.all([...document.images].map(i => i.complete ? 0 : "
                        "new Promise(r => { i.onload = i.onerror = r; })))")

    async def open_ready(self, path: Path) -> None:
        """Open the page and wait for its script to have drawn the grid (it sets `data-ready`)."""
        await self.open(path)
        assert await self.eval("document.documentElement.dataset.ready !== undefined"), "the page script did not run"

    async def centre(self, selector: str) -> list[float]:
        box: list[float] = await self.eval(
            f"(() => {{ const e = document.querySelector({selector!r}); e.scrollIntoView({{block: 'nearest'}});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        return box

    async def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (it must be visible and on top)."""
        x, y = await self.centre(selector)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def press(self, key: str) -> None:
        """A real key press (down and up), as the keyboard sends it."""
        code, vk, text = KEYS[key] if key in KEYS else (f"Key{key.upper()}", ord(key.upper()), key)
        down = {"type": "keyDown", "text": text} if text else {"type": "rawKeyDown"}
        await self.send("Input.dispatchKeyEvent", key=key, code=code, windowsVirtualKeyCode=vk, **down)
        await self.send("Input.dispatchKeyEvent", type="keyUp", key=key, code=code, windowsVirtualKeyCode=vk)

    async def choose(self, selector: str, label: str) -> None:
        """Pick an option of a <select> as a user does: click it, arrow down to the option, Enter."""
        await self.click(selector)
        options = await self.eval(f"[...document.querySelector({selector!r}).options].map(o => o.text)")
        now = await self.eval(f"document.querySelector({selector!r}).selectedIndex")
        target = options.index(label)
        for _ in range(abs(target - now)):
            await self.press("ArrowDown" if target > now else "ArrowUp")
        await self.press("Enter")
        assert await self.eval(f"document.querySelector({selector!r}).selectedIndex") == target

    async def type(self, selector: str, text: str) -> None:
        await self.click(selector)
        await self.send("Input.insertText", text=text)

    async def visible_cards(self) -> int:
        """Cards on the page: the grid keeps in the DOM only those in view (all of them in these small runs)."""
        return int(await self.eval("document.querySelectorAll('#grid .card').length"))

    async def card_names(self) -> list[str]:
        names: list[str] = await self.eval(
            "[...document.querySelectorAll('#grid .card')].sort((a, b) => a.dataset.pos - b.dataset.pos)"
            ".map(c => c.querySelector('.name').textContent)")
        return names

    async def loaded_images(self, scope: str = "") -> int:
        return int(await self.eval(f"[...document.querySelectorAll('{scope} img')]"
                                   ".filter(i => i.complete && i.naturalWidth > 0).length"))

    async def images_settled(self) -> None:
        await self.eval("Promise.all([...document.images].map(i => i.complete ? 0 : "
                        "new Promise(r => { i.onload = i.onerror = r; })))")


KEYS: dict[str, tuple[str, int, str]] = {
    "ArrowLeft": ("ArrowLeft", 37, ""), "ArrowRight": ("ArrowRight", 39, ""), "ArrowUp": ("ArrowUp", 38, ""),
    "ArrowDown": ("ArrowDown", 40, ""), "Escape": ("Escape", 27, ""), "Enter": ("Enter", 13, "\r"),
    "+": ("Equal", 187, "+"), "-": ("Minus", 189, "-"),
}


@contextlib.asynccontextmanager
async def browser(tmp_path: Path) -> AsyncIterator[Tab]:
    profile = tmp_path / "chromium-profile"
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank",
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert proc.returncode is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium did not start"
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tab = Tab(ws)
                await tab.send("Page.enable")
                await tab.send("Runtime.enable")
                yield tab
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_gallery_loads_filters_and_searches(emulator_thread: Emulator, tmp_path: Path) -> None:
    run = await asyncio.to_thread(generate_run, emulator_thread, tmp_path)
    embedded = await asyncio.to_thread(write_gallery, run)
    in_files = await asyncio.to_thread(write_gallery, run, tmp_path / "site" / "g.html", thumbnails="files")
    async with browser(tmp_path) as tab:
        for page in (embedded.path, in_files.path):
            await tab.open_ready(page)
            await tab.images_settled()
            assert await tab.loaded_images() == DONE
            assert await tab.eval("document.images.length") == DONE
            assert await tab.visible_cards() == len(HOSTILE_ROWS)
            await tab.click("button[data-filter=failed]")
            assert await tab.visible_cards() == FAILED
            assert await tab.eval("document.getElementById('shown').textContent") == str(FAILED)
            assert await tab.eval("[...document.querySelectorAll('#grid .card')]"
                                  ".every(c => c.dataset.status === 'failed')")
            await tab.click("button[data-filter=done]")
            assert await tab.visible_cards() == DONE
            await tab.click("button[data-filter=all]")
            assert await tab.visible_cards() == len(HOSTILE_ROWS)
            await tab.type("#search", "BRASS")  # the lamp's prompt, in another case
            assert await tab.card_names() == ["lamp"]
            await tab.click("button[data-filter=failed]")
            assert await tab.visible_cards() == 0  # the search and the filter apply together
            assert await tab.eval("!document.getElementById('empty').hidden")
            # Hostile prompts and ids are on the page as text, and none of them ran.
            assert await tab.eval("typeof window.__pwned") == "undefined"
            assert await tab.eval("document.scripts.length") == 2  # the page's script and its inert JSON
            await tab.eval("document.getElementById('search').value = ''; "
                           "document.getElementById('search').dispatchEvent(new Event('input'))")
            await tab.click("button[data-filter=all]")
            assert await tab.eval("document.body.textContent.includes('<script>window.__pwned = 1</script>')")
            assert not await tab.eval(ANY_HANDLER)


# Any element with an inline event handler (an `on*` attribute): the page must never have one.
ANY_HANDLER = "[...document.querySelectorAll('*')].some(e => [...e.attributes].some(a => a.name.startsWith('on')))"


async def test_edit_gallery_in_the_browser(emulator_thread: Emulator, tmp_path: Path) -> None:
    generated = await asyncio.to_thread(generate_run, emulator_thread, tmp_path)
    run = await asyncio.to_thread(edit_run, emulator_thread, tmp_path, generated)
    page = await asyncio.to_thread(write_gallery, run)
    async with browser(tmp_path) as tab:
        await tab.open_ready(page.path)
        await tab.images_settled()
        assert await tab.loaded_images() == 2  # input -> output of the row that was edited
        await tab.click("button[data-filter=failed]")
        assert await tab.visible_cards() == 1
        assert await tab.eval(f"document.body.innerText.includes({MISSING!r})")
        assert await tab.eval("typeof window.__pwned") == "undefined"
        # The lightbox shows the edit's input and output side by side, at full size, from the files.
        await tab.click("button[data-filter=done]")
        await tab.click("#grid .card img")
        assert await tab.eval("!document.getElementById('lightbox').hidden")
        await tab.images_settled()
        figures = await tab.eval("[...document.querySelectorAll('#lb-stages figure')].map(f => {"
                                 " const r = f.getBoundingClientRect(), i = f.querySelector('img');"
                                 " return [f.querySelector('figcaption').textContent, r.x, r.y, i.src,"
                                 " i.naturalWidth]; })")
        assert figures[0][0] == "input" and figures[1][0].startswith("gpt-image-2 · $")
        assert figures[0][1] < figures[1][1] and abs(figures[0][2] - figures[1][2]) < 2  # side by side
        assert all(f[3].startswith("file://") and f[3].endswith(".png") for f in figures)
        assert figures[1][4] == 1024  # the full image, not the 320 px thumbnail


async def test_review_with_keys_clicks_marks_and_export(emulator_thread: Emulator, tmp_path: Path) -> None:
    """A review as a user makes it: open a card, arrow through, keep and reject with keys and clicks, filter by
    error kind, export the marks (a real download) and apply them with `pixelmill export`."""
    run = await asyncio.to_thread(generate_run, emulator_thread, tmp_path)
    page = await asyncio.to_thread(write_gallery, run)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    async with browser(tmp_path) as tab:
        await tab.send("Page.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
        await tab.open_ready(page.path)
        assert await tab.card_names() == [str(r.get("id")) for r in HOSTILE_ROWS]
        # The lightbox: a click opens it, arrows move (not past the ends), Esc closes it.
        await tab.click("#grid .card[data-pos='0'] img")
        assert await tab.eval("!document.getElementById('lightbox').hidden")
        assert await tab.eval("document.getElementById('lb-title').textContent") == "mug · done"
        await tab.press("ArrowRight")
        assert await tab.eval("document.getElementById('lb-title').textContent") == "lamp · done"
        assert await tab.eval("document.getElementById('lb-pos').textContent") == f"2 / {len(HOSTILE_ROWS)}"
        await tab.press("ArrowLeft")
        await tab.press("ArrowLeft")
        assert await tab.eval("document.getElementById('lb-title').textContent") == "mug · done"
        # Marks by key: K keeps the row shown, X rejects, K again on a kept row unmarks it.
        await tab.press("k")
        await tab.press("ArrowRight")
        await tab.press("x")
        await tab.press("ArrowRight")
        await tab.press("k")
        await tab.press("k")
        assert await tab.eval("document.getElementById('lb-reject').getAttribute('aria-pressed')") == "false"
        await tab.press("Escape")
        assert await tab.eval("document.getElementById('lightbox').hidden")
        # ... and by click, on a card's own button.
        await tab.click("#grid .card[data-pos='3'] button[data-mark=keep]")
        assert await tab.eval("document.getElementById('lightbox').hidden")  # the button did not open it
        classes = await tab.eval("[...document.querySelectorAll('#grid .card')].sort((a, b) => a.dataset.pos - "
                                 "b.dataset.pos).slice(0, 4).map(c => c.classList.contains('keep') ? 'keep' : "
                                 "c.classList.contains('reject') ? 'reject' : '')")
        assert classes == ["keep", "reject", "", "keep"]
        assert await tab.eval("document.getElementById('marks').textContent") == "✓ 2 kept · ✕ 1 rejected"
        # Filter by error kind (a real <select>), and by the marks.
        await tab.choose("#f-kind", "refused")
        assert await tab.card_names() == ["refused1", "javascript:window.__pwned=4"]
        await tab.choose("#f-kind", "input")
        assert await tab.card_names() == ["noprompt"]
        await tab.choose("#f-kind", "any error kind")
        await tab.choose("#f-mark", "kept")
        assert await tab.card_names() == ["mug", HOSTILE_ROWS[3]["id"]]
        await tab.choose("#f-mark", "all")
        # Sorted by cost: the failed rows (no cost) last, in row order.
        await tab.choose("#sort", "cost, lowest first")
        assert (await tab.card_names())[:FAILED] == ["refused1", "javascript:window.__pwned=4", "noprompt"]
        await tab.choose("#sort", "row")
        # The marks stay in the page: a reload keeps them.
        await tab.open_ready(page.path)
        assert await tab.eval("document.getElementById('export').textContent") == "Export marks (3)"
        assert await tab.eval("document.querySelectorAll('#grid .card.keep').length") == 2
        # Export: a real click on the download link.
        await tab.click("#export")
        deadline = time.monotonic() + 20
        while not [p for p in downloads.iterdir() if p.suffix == ".jsonl"]:
            assert time.monotonic() < deadline, "no download"
            await asyncio.sleep(0.1)
        assert await tab.eval("typeof window.__pwned") == "undefined" and not await tab.eval(ANY_HANDLER)
    marks_file = next(p for p in downloads.iterdir() if p.suffix == ".jsonl")
    assert marks_file.name == "gen-marks.jsonl"
    marks = [orjson.loads(line) for line in marks_file.read_bytes().splitlines()]
    assert [(m["key"], m["mark"]) for m in marks] == [("mug", "keep"), ("lamp", "reject"), (
        next(r["k"] for r in Page(page.path.read_text()).rows if r["i"] == 3), "keep")]
    assert marks[0]["identity"] == 'id:"mug"'
    # Applied with the CLI: the kept subset, with its images.
    result = await asyncio.to_thread(cli, "export", run, "--keep", marks_file, "-o", tmp_path / "kept")
    assert result.code == 0, result.output
    assert "export: 2 of 8 rows kept, 2 images copied" in result.output
    kept = read_output(tmp_path / "kept")
    assert [r["id"] for r in kept] == ["mug", HOSTILE_ROWS[3]["id"]]
    for row in kept:
        assert (tmp_path / "kept" / row["images"][0]).read_bytes() == (run / row["images"][0]).read_bytes()


async def test_density_is_remembered(emulator_thread: Emulator, tmp_path: Path) -> None:
    run = await asyncio.to_thread(generate_run, emulator_thread, tmp_path)
    page = await asyncio.to_thread(write_gallery, run)
    per_line = ("[...document.querySelectorAll('#grid .card')].filter(c => c.getBoundingClientRect().y === "
                "document.querySelector('#grid .card[data-pos=\"0\"]').getBoundingClientRect().y).length")
    async with browser(tmp_path) as tab:
        await tab.open_ready(page.path)
        assert await tab.eval(per_line) == 7  # 1400 px wide, 160 px thumbnails
        width_before = await tab.eval("document.querySelector('#grid .card').offsetWidth")
        for _ in range(6):
            await tab.press("+")
        width_after = await tab.eval("document.querySelector('#grid .card').offsetWidth")
        assert width_after == width_before + 120 and await tab.eval(per_line) == 4
        await tab.open_ready(page.path)
        assert await tab.eval("document.querySelector('#grid .card').offsetWidth") == width_after
        assert await tab.eval("document.getElementById('size').value") == "280"


async def test_the_policy_lets_the_page_run_and_nothing_else(emulator_thread: Emulator, tmp_path: Path) -> None:
    """The CSP in the page allows its own script (by hash) and blocks any other: a script changed by one
    character, an inline script added to the page and an inline event handler all stay dead."""
    run = await asyncio.to_thread(generate_run, emulator_thread, tmp_path)
    page = await asyncio.to_thread(write_gallery, run)
    text = page.path.read_text()
    changed = tmp_path / "changed.html"
    changed.write_text(text.replace('"use strict";', '"use strict"; ', 1))
    injected = tmp_path / "injected.html"
    injected.write_text(text.replace("</footer>", "</footer><script>window.__pwned = 7</script>"
                                     '<img src="x.png" onerror="window.__pwned = 8">', 1))
    async with browser(tmp_path) as tab:
        await tab.open_ready(page.path)
        assert await tab.visible_cards() == len(HOSTILE_ROWS)
        await tab.open(changed)
        assert await tab.eval("document.documentElement.dataset.ready") is None  # blocked: its hash differs
        assert await tab.visible_cards() == 0
        await tab.open(injected)
        await asyncio.sleep(0.3)
        assert await tab.eval("typeof window.__pwned") == "undefined"
        assert await tab.visible_cards() == len(HOSTILE_ROWS)  # the page's own script still ran
