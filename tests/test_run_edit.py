"""`pixelmill edit`: one image, several images, a mask, image URLs, and multi-turn rows as a chain of edits."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image

from pixelmill.testing import Emulator
from tests.runs import cli, read_output, write_jsonl


def png(path: Path, size: tuple[int, int] = (64, 64), mode: str = "RGB", color: object = "red") -> Path:
    Image.new(mode, size, color).save(path, format="PNG")  # type: ignore[arg-type]
    return path


def edit(emu: Emulator, src: Path, out: Path, *extra: str | Path) -> tuple[int, str]:
    result = cli("edit", src, "-o", out, "--base-url", emu.openai_base_url, "--quiet", *extra)
    return result.code, result.output


def test_single_and_multiple_images_in_order(emulator_thread: Emulator, tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    png(tmp_path / "pics" / "a.png", (40, 40), color="red")
    png(tmp_path / "pics" / "b.png", (50, 50), color="blue")
    jpg = tmp_path / "pics" / "c.jpg"
    Image.new("RGB", (60, 60), "green").save(jpg, format="JPEG")
    rows = [
        {"id": "one", "images": "pics/a.png", "prompt": "make it blue"},
        {"id": "three", "images": ["pics/a.png", "pics/b.png", str(jpg)], "prompt": "combine these"},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    code, text = edit(emulator_thread, src, tmp_path / "run", "--id-field", "id")
    assert code == 0, text
    out = read_output(tmp_path / "run")
    assert out[0]["output_image"] == ["images/edit/one_0.png"]
    assert out[1]["output_image"] == ["images/edit/three_0.png"]
    assert out[1]["images"] == rows[1]["images"]  # the input row is unchanged
    records = {r.prompt: r for r in emulator_thread.records(endpoint="edits")}
    assert records["make it blue"].input_images == 1
    assert records["combine these"].input_images == 3


def test_mask_is_sent_and_must_match_the_image(emulator_thread: Emulator, tmp_path: Path) -> None:
    png(tmp_path / "img.png", (64, 64))
    png(tmp_path / "mask.png", (64, 64), mode="RGBA", color=(0, 0, 0, 0))
    png(tmp_path / "small_mask.png", (32, 32), mode="RGBA", color=(0, 0, 0, 0))
    rows = [
        {"images": "img.png", "mask": "mask.png", "prompt": "fill the hole"},
        {"images": "img.png", "mask": "small_mask.png", "prompt": "bad mask"},
        {"images": "img.png", "prompt": "no mask"},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    code, _ = edit(emulator_thread, src, tmp_path / "run", "--mask-field", "mask")
    assert code == 1
    out = read_output(tmp_path / "run")
    assert out[0]["pixelmill"]["status"] == "done"
    assert "must match" in out[1]["pixelmill"]["error"]["message"]
    assert out[1]["pixelmill"]["error"]["field"] == "mask"
    assert "no mask" in out[2]["pixelmill"]["error"]["message"]
    [sent] = emulator_thread.records(endpoint="edits")
    assert sent.mask and sent.prompt == "fill the hole"


def test_multi_turn_rows_chain_edits_on_openai(emulator_thread: Emulator, tmp_path: Path) -> None:
    png(tmp_path / "start.png", (64, 64))
    rows = [{
        "id": "chat",
        "images": ["start.png"],
        "conversations": [
            {"role": "user", "content": "make the background white"},
            {"role": "assistant", "content": "done"},
            {"role": "user", "content": "now add a shadow"},
            {"role": "user", "content": "and crop it square"},
        ],
    }]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    code, text = edit(emulator_thread, src, tmp_path / "run", "--id-field", "id", "--size", "1024x1024")
    assert code == 0, text
    [row] = read_output(tmp_path / "run")
    turns = row["pixelmill"]["turns"]
    assert [t["prompt"] for t in turns] == ["make the background white", "now add a shadow", "and crop it square"]
    assert [t["images"] for t in turns] == [["images/edit/chat_0.png"], ["images/edit/chat_1.png"],
                                            ["images/edit/chat_2.png"]]
    assert row["output_image"] == ["images/edit/chat_2.png"]  # the final turn's image
    sent = emulator_thread.records(endpoint="edits")
    assert [r.prompt for r in sent] == [t["prompt"] for t in turns]
    # Turns 2 and 3 edit the previous turn's output (1024x1024 PNGs), not the 64x64 start image.
    assert sent[1].bytes_in > sent[0].bytes_in


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[str]:
    """A tiny HTTP server on loopback serving one PNG, for URL inputs."""
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), "purple").save(buf, format="PNG")
    body = buf.getvalue()

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/big.png":
            return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"\0" * (2 * 1024 * 1024), content_type="image/png")
        return web.Response(body=body, content_type="image/png")

    import asyncio

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(web.Application(middlewares=[]))
    runner.app.router.add_get("/{name}", handler)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def test_image_urls_need_permission_for_loopback(emulator_thread: Emulator, tmp_path: Path,
                                                 image_server: str) -> None:
    rows = [{"images": f"{image_server}/cat.png", "prompt": "from a URL"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    code, _ = edit(emulator_thread, src, tmp_path / "a")
    assert code == 1
    assert "--allow-private-urls" in read_output(tmp_path / "a")[0]["pixelmill"]["error"]["message"]
    code, text = edit(emulator_thread, src, tmp_path / "b", "--allow-private-urls")
    assert code == 0, text
    assert emulator_thread.records(endpoint="edits")[0].prompt == "from a URL"
