"""Real image bytes, cheaply: a flat colour picked from the prompt's hash, a small mark, encoded once.

Encoded images (and their base64 text) are cached by (width, height, format, colour, alpha, padding), and the
colour comes from a small palette, so a long run at one size encodes a handful of images in all. Padding
(`image_bytes`) makes an image about N bytes long without changing its pixels: a private ancillary PNG chunk,
JPEG comment segments, or an unknown RIFF chunk in WebP, which decoders skip but clients must still download
and base64-decode.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import pybase64

PALETTE_SIZE = 32
_CACHE_LIMIT_BYTES = 512 * 1024 * 1024

MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
FORMAT_OF_PIL = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "GIF": "gif", "MPO": "jpeg"}


@dataclass(frozen=True, slots=True)
class Rendered:
    data: bytes
    b64: str
    digest: bytes  # sha256 of `data`, for thought signatures
    width: int
    height: int
    format: str

    @property
    def mime(self) -> str:
        return MIME[self.format]


def _palette() -> tuple[tuple[int, int, int], ...]:
    rng = random.Random(20261122)
    return tuple((rng.randrange(30, 226), rng.randrange(30, 226), rng.randrange(30, 226)) for _ in range(PALETTE_SIZE))


PALETTE = _palette()


def colour_for(text: str) -> tuple[int, int, int]:
    """One of PALETTE_SIZE colours, chosen by the text's hash (stable across runs)."""
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return PALETTE[int.from_bytes(h, "big") % PALETTE_SIZE]


class ImageCache:
    """Thread-safe LRU of encoded images, bounded in bytes."""

    def __init__(self, limit_bytes: int = _CACHE_LIMIT_BYTES) -> None:
        self._items: OrderedDict[tuple[object, ...], Rendered] = OrderedDict()
        self._bytes = 0
        self._limit = limit_bytes
        self._lock = threading.Lock()
        self.encoded = 0  # how many images were actually encoded (for tests of the cache)

    def get(
        self,
        width: int,
        height: int,
        fmt: str,
        colour: tuple[int, int, int],
        *,
        transparent: bool = False,
        pad_to: int | None = None,
        quality: int = 90,
    ) -> Rendered:
        key = (width, height, fmt, colour, transparent, pad_to, quality)
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        rendered = _render(width, height, fmt, colour, transparent, pad_to, quality)
        with self._lock:
            self.encoded += 1
            if key not in self._items:
                self._items[key] = rendered
                self._bytes += len(rendered.data) + len(rendered.b64)
                while self._bytes > self._limit and len(self._items) > 1:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= len(old.data) + len(old.b64)
        return rendered


def _render(
    width: int,
    height: int,
    fmt: str,
    colour: tuple[int, int, int],
    transparent: bool,
    pad_to: int | None,
    quality: int,
) -> Rendered:
    from PIL import Image, ImageDraw  # heavy: imported on first render only

    alpha = transparent and fmt in ("png", "webp")
    mode = "RGBA" if alpha else "RGB"
    fill = (*colour, 0) if alpha else colour
    img = Image.new(mode, (width, height), fill)
    # A small opaque mark in the middle, so a transparent image is not entirely empty and the pixels show
    # which way up the image is.
    mark = max(1, min(width, height) // 8)
    draw = ImageDraw.Draw(img)
    ink = (255 - colour[0], 255 - colour[1], 255 - colour[2])
    x0, y0 = width // 2 - mark // 2, height // 4 - mark // 2
    draw.rectangle((x0, y0, x0 + mark - 1, y0 + mark - 1), fill=(*ink, 255) if alpha else ink)
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=1)
    elif fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=quality, method=0)
    else:
        raise ValueError(f"cannot render format {fmt!r}")
    data = buf.getvalue()
    if pad_to and pad_to > len(data):
        data = pad(data, fmt, pad_to)
    return Rendered(
        data=data,
        b64=pybase64.b64encode(data).decode("ascii"),
        digest=hashlib.sha256(data).digest(),
        width=width,
        height=height,
        format=fmt,
    )


def _filler(n: int) -> bytes:
    # Incompressible, deterministic: padding that gzip in a proxy could not shrink away.
    return random.Random(n).randbytes(n)


def pad(data: bytes, fmt: str, target: int) -> bytes:
    """`data` grown to about `target` bytes with content every decoder skips."""
    missing = target - len(data)
    if missing <= 0:
        return data
    if fmt == "png":
        body = _filler(max(0, missing - 12))
        ctype = b"pmLd"  # ancillary, private, safe to copy
        chunk = struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))
        iend = data.rfind(b"IEND") - 4
        return data[:iend] + chunk + data[iend:]
    if fmt == "jpeg":
        segments = []
        while missing > 4:
            size = min(65533, missing - 4)
            segments.append(b"\xff\xfe" + struct.pack(">H", size + 2) + _filler(size))
            missing -= size + 4
        return data[:2] + b"".join(segments) + data[2:]
    if fmt == "webp":
        size = max(0, missing - 8)
        size -= size % 2
        chunk = b"PMLD" + struct.pack("<I", size) + _filler(size)
        body = data[8:] + chunk
        return b"RIFF" + struct.pack("<I", len(body)) + body
    raise ValueError(f"cannot pad format {fmt!r}")


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str  # png, jpeg, webp, gif, or the Pillow name lower-cased
    width: int
    height: int
    has_alpha: bool


def inspect(data: bytes) -> ImageInfo | None:
    """Format and size of an input image from its header (no pixel decoding); None when it is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = FORMAT_OF_PIL.get(img.format or "", (img.format or "unknown").lower())
            alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
            return ImageInfo(fmt, img.width, img.height, alpha)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
