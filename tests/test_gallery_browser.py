"""The gallery in a real browser: headless Chromium driven over the DevTools protocol (a websocket from
aiohttp). The page loads from a file with no network, shows the right number of images, the filter buttons
(clicked with the mouse) and the search box (typed into) show the right cards, and no hostile text ran.

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
import pytest

from pixelmill.reports.gallery.page import write_gallery
from pixelmill.testing import Emulator
from tests.test_gallery import DONE, FAILED, HOSTILE_ROWS, MISSING, edit_run, generate_run

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

    async def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (it must be visible and on top)."""
        box = await self.eval(f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
                              " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    async def type(self, selector: str, text: str) -> None:
        await self.click(selector)
        await self.send("Input.insertText", text=text)

    async def visible_cards(self) -> int:
        return int(await self.eval("[...document.querySelectorAll('main .card')]"
                                   ".filter(c => c.offsetParent !== null).length"))

    async def loaded_images(self) -> int:
        return int(await self.eval("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length"))


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
            await tab.open(page)
            assert await tab.loaded_images() == DONE
            assert await tab.eval("document.images.length") == DONE
            assert await tab.visible_cards() == len(HOSTILE_ROWS)
            await tab.click("button[data-filter=failed]")
            assert await tab.visible_cards() == FAILED
            assert await tab.eval("document.getElementById('shown').textContent") == str(FAILED)
            assert await tab.eval("[...document.querySelectorAll('main .card')].filter(c => c.offsetParent)"
                                  ".every(c => c.dataset.status === 'failed')")
            await tab.click("button[data-filter=done]")
            assert await tab.visible_cards() == DONE
            await tab.click("button[data-filter=all]")
            assert await tab.visible_cards() == len(HOSTILE_ROWS)
            await tab.type("#search", "BRASS")  # the lamp's prompt, in another case
            assert await tab.visible_cards() == 1
            await tab.click("button[data-filter=failed]")
            assert await tab.visible_cards() == 0  # the search and the filter apply together
            # Hostile prompts and ids are on the page as text, and none of them ran.
            assert await tab.eval("typeof window.__pwned") == "undefined"
            assert await tab.eval("document.scripts.length") == 1
            assert await tab.eval("document.body.textContent.includes('<script>window.__pwned = 1</script>')")


async def test_edit_gallery_in_the_browser(emulator_thread: Emulator, tmp_path: Path) -> None:
    generated = await asyncio.to_thread(generate_run, emulator_thread, tmp_path)
    run = await asyncio.to_thread(edit_run, emulator_thread, tmp_path, generated)
    page = await asyncio.to_thread(write_gallery, run)
    async with browser(tmp_path) as tab:
        await tab.open(page.path)
        assert await tab.loaded_images() == 2  # input -> output of the row that was edited
        await tab.click("button[data-filter=failed]")
        assert await tab.visible_cards() == 1
        assert await tab.eval(f"document.body.innerText.includes({MISSING!r})")
        assert await tab.eval("typeof window.__pwned") == "undefined"
        # A thumbnail links to the full image, a file beside the run.
        href = await tab.eval("document.querySelector('.card.done a').href")
        assert href.startswith("file://") and href.endswith(".png")
