"""The gallery at scale: how long a page of N rows takes to open in headless Chromium, and a screenshot.

    .venv/bin/python -m bench.gallery                        # 10,000 rows timed; 1,000 rows screenshot
    .venv/bin/python -m bench.gallery --rows 2000 --shot-rows 0 --work /tmp/g   # quicker, runs kept in /tmp/g

A real run is made first (the emulator over loopback HTTP, one image per row, every 16th row refused, every 25th
an input error), kept in `--work` so that a second call only times the page. The page is written by
`write_gallery` (thumbnails beside the page past 400 images, as `auto` does), then opened `--repeats` times in a
fresh tab at 1400x1000: the figure is the time from the navigation to the page script's first drawn grid
(`data-ready`, the page's own clock from navigation start) and, from outside, to `load` and the grid drawn,
images in view loaded. The target is under 2 s for 10,000 rows. The DOM holds only the cards in view: their
number is printed too. Needs Chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_run(work: Path, rows: int) -> Path:
    """A finished run of `rows` rows (made once per `work` folder and size)."""
    from pixelmill.api import run_config
    from pixelmill.options import build_config, job_options
    from pixelmill.testing import Emulator

    run = work / f"run{rows}"
    if (run / "output.jsonl").is_file():
        return run
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"in{rows}.jsonl"
    subjects = ["mug", "lamp", "chair", "teapot", "bicycle", "clock", "vase", "sneaker", "backpack", "kettle"]
    with src.open("wb") as f:
        for i in range(rows):
            row: dict[str, Any] = {"id": f"p{i:05d}", "prompt": f"A studio photo of a {subjects[i % 10]}, "
                                   f"variant {i}, soft light"}
            if i % 16 == 5:
                row["prompt"] += " [[fault:moderation]]"
            if i % 25 == 7:
                row = {"id": f"p{i:05d}", "caption": "a row without a prompt"}
            f.write(orjson.dumps(row) + b"\n")
    started = time.monotonic()
    with Emulator().run_in_thread() as emu:
        config = build_config("generate", src, job_options(
            output=run, base_url=emu.openai_base_url, api_key="sk-bench", quality="low", size="1024x1024",
            id_field="id", concurrency=64, engine={"retry_base": 0.01, "retry_cap": 0.05}))
        report = run_config(config)
    print(f"run of {rows} rows: {report.counts.done} done, {report.counts.failed} failed in "
          f"{time.monotonic() - started:.1f} s")
    return run


async def time_page(page: Path, repeats: int, shot: Path | None) -> dict[str, Any]:
    from tests.test_gallery_browser import browser

    shot_png = b""
    ready: list[float] = []
    outside: list[float] = []
    cards = 0
    with tempfile.TemporaryDirectory() as profile:
        async with browser(Path(profile)) as tab:
            await tab.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1,
                           mobile=False)
            for _ in range(repeats):
                await tab.send("Page.navigate", url="about:blank")
                started = time.monotonic()
                await tab.send("Page.navigate", url=page.as_uri())
                while True:
                    state = await tab.eval("[document.readyState, (document.documentElement && "
                                           "document.documentElement.dataset.ready) || null]")
                    if state[0] == "complete" and state[1] is not None:
                        break
                    await asyncio.sleep(0.01)
                await tab.eval("Promise.all([...document.querySelectorAll('#grid img')].map(i => i.complete ? 0 :"
                               " new Promise(r => { i.onload = i.onerror = r; })))")
                outside.append(time.monotonic() - started)
                ready.append(float(state[1]) / 1000)
                cards = int(await tab.eval("document.querySelectorAll('#grid .card').length"))
            # Scrolled to the middle, the grid draws the cards there.
            await tab.eval("window.scrollTo(0, document.body.scrollHeight / 2)")
            await asyncio.sleep(0.3)
            middle = await tab.eval("[...document.querySelectorAll('#grid .card')].length")
            await tab.eval("window.scrollTo(0, 0)")
            await asyncio.sleep(0.3)
            if shot is not None:
                await tab.images_settled()
                image = await tab.send("Page.captureScreenshot", format="png")
                shot_png = base64.b64decode(image["data"])
    if shot is not None:
        await asyncio.to_thread(shot.write_bytes, shot_png)
    return {"ready_s": ready, "outside_s": outside, "cards_in_dom": cards, "cards_in_dom_scrolled": middle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--shot-rows", type=int, default=1_000, help="rows of the screenshot run (0: none)")
    parser.add_argument("--shot", type=Path, default=Path("/tmp/pixelmill-gallery-1000.png"))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pixelmill-bench-gallery")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from pixelmill.reports.gallery.page import write_gallery

    run = make_run(args.work, args.rows)
    started = time.monotonic()
    result = write_gallery(run)
    written = time.monotonic() - started
    size = result.path.stat().st_size
    timing = asyncio.run(time_page(result.path, args.repeats, None))
    print(f"gallery of {result.rows} rows: written in {written:.1f} s ({size / 1e6:.1f} MB page, "
          f"{result.images} thumbnails beside it)")
    print(f"open to grid drawn (page clock): best {min(timing['ready_s']):.2f} s, median "
          f"{statistics.median(timing['ready_s']):.2f} s; to load + images in view (outside): best "
          f"{min(timing['outside_s']):.2f} s, median {statistics.median(timing['outside_s']):.2f} s "
          f"[target < 2 s]")
    print(f"cards in the DOM: {timing['cards_in_dom']} at the top, {timing['cards_in_dom_scrolled']} scrolled "
          f"to the middle (of {result.rows})")
    if args.shot_rows:
        shot_run = make_run(args.work, args.shot_rows)
        page = write_gallery(shot_run)
        asyncio.run(time_page(page.path, 1, args.shot))
        print(f"screenshot of the gallery of {page.rows} rows at 1400x1000: {args.shot}")


if __name__ == "__main__":
    main()
