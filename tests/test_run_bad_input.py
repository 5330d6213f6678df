"""Bad rows get a clear error naming the row and field; the run goes on; exit 1."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from pixelmill.testing import Emulator
from tests.runs import cli, read_output, write_jsonl


def png(size: tuple[int, int] = (64, 64), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "red" if mode in ("RGB", "RGBA") else 128).save(out, format="PNG")
    return out.getvalue()


def test_bad_generate_rows(emulator_thread: Emulator, tmp_path: Path) -> None:
    lines = [
        b'{"prompt": "good one"}',
        b'{"prompt": "unterminated',
        b'{"prompt": ""}',
        b'{"prompt": "   "}',
        b'{"prompt": 42}',
        b'{"other": "no prompt here"}',
        b'["not", "an", "object"]',
        b"\xff\xfe not utf-8 \xff",
        b"",  # blank line: not a row
        b'{"prompt": "good two"}',
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")  # BOM and CRLF line ends
    result = cli("generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url, "--quiet")
    assert result.code == 1
    out = read_output(tmp_path / "run")
    assert len(out) == 9
    assert out[0]["pixelmill"]["status"] == "done" and out[8]["pixelmill"]["status"] == "done"
    assert out[1] == {"pixelmill": {"line": 2, "status": "failed", "error": {
        "kind": "input", "message": out[1]["pixelmill"]["error"]["message"]}}}
    assert out[1]["pixelmill"]["error"]["message"].startswith("line 2: not valid JSON")
    assert "blank" in out[2]["pixelmill"]["error"]["message"] and out[2]["pixelmill"]["error"]["field"] == "prompt"
    assert out[3]["pixelmill"]["error"]["kind"] == "input"
    assert "must be text" in out[4]["pixelmill"]["error"]["message"]
    assert "no prompt" in out[5]["pixelmill"]["error"]["message"]
    assert out[6]["pixelmill"] == {"line": 7, "status": "failed", "error": {"kind": "input",
                                                         "message": "line 7: expected a JSON object, got list"}}
    assert out[7]["pixelmill"]["error"]["message"] == "line 8: not valid UTF-8 text"
    assert out[2]["images"] == [] and out[2]["prompt"] == ""
    assert emulator_thread.count(endpoint="generations") == 2


def test_bad_edit_rows(emulator_thread: Emulator, tmp_path: Path) -> None:
    (tmp_path / "good.png").write_bytes(png())
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_bytes(b"this is not an image at all")
    (tmp_path / "truncated.png").write_bytes(png((256, 256))[:200])
    (tmp_path / "dir.png").mkdir()
    rows = [
        {"images": "good.png", "prompt": "make it blue"},
        {"images": "missing.png", "prompt": "x"},
        {"images": "empty.png", "prompt": "x"},
        {"images": "text.png", "prompt": "x"},
        {"images": "truncated.png", "prompt": "x"},
        {"images": "dir.png", "prompt": "x"},
        {"prompt": "no image field"},
        {"images": [], "prompt": "empty list"},
        {"images": ["good.png"] * 17, "prompt": "too many for gpt-image-2"},
        {"images": "ftp://example.com/a.png", "prompt": "bad scheme"},
        {"images": "http://127.0.0.1:1/a.png", "prompt": "loopback url"},
        {"images": "data:image/png;base64,@@@@", "prompt": "bad data url"},
        {"images": ["good.png", "good.png"], "prompt": "two good ones"},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = cli("edit", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url, "--quiet")
    assert result.code == 1
    out = read_output(tmp_path / "run")
    status = [r["pixelmill"]["status"] for r in out]
    assert status == ["done"] + ["failed"] * 11 + ["done"]
    msgs = [r["pixelmill"].get("error", {}).get("message", "") for r in out]
    assert "missing.png not found" in msgs[1]
    assert "empty" in msgs[2]
    assert "not a PNG, JPEG, WebP or GIF" in msgs[3]
    assert "not a readable image" in msgs[4]
    assert "folder" in msgs[5]
    assert "no field 'images'" in msgs[6]
    assert "no image to edit" in msgs[7]
    assert "17 input images" in msgs[8] and "at most 16" in msgs[8]
    assert "only http(s) URLs" in msgs[9]
    assert "--allow-private-urls" in msgs[10]
    assert "invalid base64" in msgs[11]
    for row in out[1:12]:
        assert row["pixelmill"]["error"]["kind"] == "input"
        assert row["pixelmill"]["error"]["field"].startswith("images")
        assert row["output_image"] == []
    assert emulator_thread.count(endpoint="edits") == 2
    [two] = emulator_thread.records(endpoint="edits", input_images=2)
    assert two.prompt == "two good ones"


def test_image_over_the_model_limit_and_dall_e_2_square(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(serve_retired=True)
    (tmp_path / "wide.png").write_bytes(png((128, 64)))
    (tmp_path / "square.png").write_bytes(png((64, 64)))
    big = Image.frombytes("RGB", (1400, 1400), bytes(range(256)) * (1400 * 1400 * 3 // 256) + b"\0" * (
        1400 * 1400 * 3 % 256))
    buf = io.BytesIO()
    big.save(buf, format="PNG", compress_level=0)
    assert len(buf.getvalue()) > 4 * 1024 * 1024
    (tmp_path / "big.png").write_bytes(buf.getvalue())
    rows = [{"images": "wide.png", "prompt": "x"}, {"images": "big.png", "prompt": "x"},
            {"images": "square.png", "prompt": "ok"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = cli("edit", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url, "--quiet",
                 "--model", "dall-e-2", "--size", "256x256")
    assert result.code == 1, result.output
    out = read_output(tmp_path / "run")
    assert "square" in out[0]["pixelmill"]["error"]["message"]
    assert "at most 4194304" in out[1]["pixelmill"]["error"]["message"]
    assert out[2]["pixelmill"]["status"] == "done"


def test_odd_input_images_are_converted(emulator_thread: Emulator, tmp_path: Path) -> None:
    cmyk = io.BytesIO()
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(cmyk, format="JPEG")
    (tmp_path / "cmyk.jpg").write_bytes(cmyk.getvalue())
    deep = io.BytesIO()
    Image.new("I;16", (32, 32), 40000).save(deep, format="PNG")
    (tmp_path / "deep.png").write_bytes(deep.getvalue())
    gif = io.BytesIO()
    frames = [Image.new("P", (32, 32), i) for i in range(3)]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    (tmp_path / "anim.gif").write_bytes(gif.getvalue())
    rows = [{"images": name, "prompt": "x"} for name in ("cmyk.jpg", "deep.png", "anim.gif")]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = cli("edit", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url, "--quiet")
    assert result.code == 0, result.output
    assert [r.content_type.split(";")[0] for r in emulator_thread.records(endpoint="edits")] == \
        ["multipart/form-data"] * 3


def test_decompression_bomb_is_refused_without_decoding(emulator_thread: Emulator, tmp_path: Path) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(bomb)
    src = write_jsonl(tmp_path / "in.jsonl", [{"images": "bomb.png", "prompt": "x"}])
    result = cli("edit", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url, "--quiet")
    assert result.code == 1
    [row] = read_output(tmp_path / "run")
    assert "too large to be safe" in row["pixelmill"]["error"]["message"]
    assert emulator_thread.count() == 0
