"""(Re)create the bad-input corpus in this folder: `python tests/data/bad/make_corpus.py`.

Every file is small and made here from code, so its origin and its defect are plain. Big inputs (a 50 MB line,
images over a provider's size limit, files over pixelmill's own limit) are made at test time in a temporary
folder instead (tests/reliability/test_bad_corpus.py). The expected outcome of each file is in that test.
"""

from __future__ import annotations

import codecs
import io
import json
import random
import struct
import zlib
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"


def png(size: tuple[int, int] = (64, 64), mode: str = "RGB", colour: object = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="PNG")  # type: ignore[arg-type]
    return out.getvalue()


def noisy(fmt: str, size: tuple[int, int] = (128, 128)) -> bytes:
    """An image whose bytes do not compress away, so that cutting it leaves a visibly truncated file."""
    rng = random.Random(7)
    img = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height pixels, with a few bytes of data: decoding it would need
    gigabytes; a safe reader refuses it from the header alone."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + \
        chunk(b"IEND", b"")


def jpeg_bomb(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to declare width x height."""
    data = bytearray(noisy("JPEG", (16, 16)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def gif_bomb(width: int, height: int) -> bytes:
    """A GIF whose logical screen and only frame declare width x height (the frame's data is a few bytes)."""
    out = io.BytesIO()
    Image.new("P", (8, 8), 1).save(out, format="GIF")
    data = bytearray(out.getvalue())
    struct.pack_into("<HH", data, 6, width, height)  # logical screen descriptor
    frame = data.index(b"\x2c")  # image descriptor
    struct.pack_into("<HH", data, frame + 5, width, height)
    return bytes(data)


def cmyk_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(out, format="JPEG", quality=95)  # pure red in CMYK
    return out.getvalue()


def gray16_png() -> bytes:
    out = io.BytesIO()
    Image.new("I;16", (32, 32), 40000).save(out, format="PNG")
    return out.getvalue()


def animated_gif() -> bytes:
    """Three frames (red, green, blue) with a transparent colour: the first frame must be sent, transparency kept."""
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0] + [0] * (256 * 3 - 12)
    frames = []
    for colour in range(3):
        frame = Image.new("P", (32, 32), colour)
        frame.putpalette(palette)
        frame.paste(3, (0, 0, 8, 8))  # a transparent corner
        frames.append(frame)
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], transparency=3, duration=100,
                   loop=0, disposal=2)
    return out.getvalue()


def images() -> dict[str, bytes]:
    return {
        "good.png": png(),
        "png_named.jpg": png(colour=(30, 200, 30)),  # a PNG behind a .jpg name: the bytes decide
        "not_an_image.png": b"this is a text file with an image's name\n",
        "empty.png": b"",
        "truncated.png": noisy("PNG")[:6000],
        "truncated.jpg": noisy("JPEG")[:3000],
        "bomb.png": png_bomb(100_000, 100_000),
        "bomb.jpg": jpeg_bomb(60_000, 60_000),
        "bomb.gif": gif_bomb(65_535, 65_535),
        "cmyk.jpg": cmyk_jpeg(),
        "gray16.png": gray16_png(),
        "animated.gif": animated_gif(),
    }


def jsonl(lines: list[bytes], *, bom: bool = False, newline: bytes = b"\n") -> bytes:
    return (codecs.BOM_UTF8 if bom else b"") + newline.join(lines) + newline


def row(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


# Lines of generate_rows.jsonl (written with a UTF-8 BOM and CRLF line ends), one defect each.
GENERATE_LINES: list[bytes] = [
    row({"prompt": "a good row"}),
    b'{"prompt": "unterminated',
    row({"caption": "no prompt field"}),
    row({"prompt": ""}),
    row({"prompt": " \t "}),
    row({"prompt": 42}),
    row({"prompt": None}),
    row({"prompt": ["a", "list"]}),
    row([1, 2, 3]),
    b'{"prompt": "caf\xe9 in latin-1"}',  # not UTF-8
    b"",  # a blank line: not a row
    b"   ",  # only spaces: not a row
    b'{"prompt": "trailing garbage"} x',
    row({"prompt": "another good row, caf\u00e9 \u65e5\u672c"}),
]

# Rows of edit_rows.jsonl: one image each (paths relative to this folder).
EDIT_IMAGES = ["good.png", "png_named.jpg", "cmyk.jpg", "gray16.png", "animated.gif", "not_an_image.png",
               "empty.png", "truncated.png", "truncated.jpg", "bomb.png", "bomb.jpg", "bomb.gif", "missing.png"]

# Rows of ids.jsonl: hostile --id-field values.
HOSTILE_IDS: list[object] = ["../../x", "/etc/passwd", "..\\..\\windows\\win.ini", "x" * 300, "na\u00efve/\u65e5\u672c",
                             "..", ".", "", None, 123, "a\u0000b", "~/.ssh/id_rsa", "\u202egnp.exe", "CON", "ok"]


def files() -> dict[str, bytes]:
    out = {f"images/{name}": data for name, data in images().items()}
    out["generate_rows.jsonl"] = jsonl(GENERATE_LINES, bom=True, newline=b"\r\n")
    out["edit_rows.jsonl"] = jsonl([row({"images": f"images/{name}", "prompt": f"edit {name}"})
                                    for name in EDIT_IMAGES])
    out["ids.jsonl"] = jsonl([row({"id": value, "prompt": f"hostile id number {i}"})
                              for i, value in enumerate(HOSTILE_IDS)])
    out["bom_crlf.csv"] = codecs.BOM_UTF8 + b'id,prompt\r\n1,a cat\r\n2,"two\r\nlines"\r\n3,\r\n4,a dog\r\n'
    out["latin1.csv"] = b"id,prompt\n1,a cat\n2,caf\xe9 au lait\n3,a dog\n"
    out["bom.json"] = codecs.BOM_UTF8 + b'[{"prompt": "a cat"},\r\n {"prompt": "a dog"}]\r\n'
    out["utf16.jsonl"] = codecs.BOM_UTF16_LE + '{"prompt": "a cat"}\n'.encode("utf-16-le")
    return out


def main() -> None:
    for name, data in files().items():
        path = HERE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


if __name__ == "__main__":
    main()
