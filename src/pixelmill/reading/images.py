"""Image bytes: telling the real format from the bytes, loading input images from every kind of reference,
and converting only where a model or the user needs another format.

Formats are sniffed from magic numbers, never trusted from file names or labels. Pillow is imported only
where pixels are touched (input checks and conversions), never on the output hot path.

Local paths in rows are data, not trusted commands: a downloaded dataset must not make pixelmill upload the
user's own files. A path is read only when it resolves (symlinks followed) inside the input file's folder tree
(`InputPolicy.base_dir`; RUNDIR for paths pixelmill wrote itself) or a folder the user named
(`allowed_paths`, the `--allow-path` flag); the refusal reads the same whether the file exists or not. Only a
regular file within the size limit is read, within `file_timeout`: a directory, a device (`/dev/zero`), a FIFO
or a socket fails its row instead of exhausting memory or hanging the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pybase64

from pixelmill.errors import InputError
from pixelmill.netpolicy import UnsafeAddress, pinned, public_address
from pixelmill.providers.base import InputImage

if TYPE_CHECKING:
    import aiohttp

    from pixelmill.models.table import ModelSpec

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
MIME_OF_FORMAT = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
MAX_PIXELS = 89_478_485  # Pillow's warning threshold (about 9459x9459); larger is refused, not decoded


def sniff(data: bytes) -> str | None:
    """The MIME type of image bytes from their magic number, or None when they are not an image we know."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1"):
        return "image/heic"
    return None


@dataclass(slots=True)
class InputPolicy:
    """Limits on input images, from the run's options."""

    base_dir: Path  # relative paths resolve here, and paths must stay inside it (or an allowed folder)
    max_bytes: int = 50 * 1024 * 1024
    url_timeout: float = 30.0
    allow_private_urls: bool = False
    allowed_paths: tuple[Path, ...] = ()  # more folders whose files rows may name (`--allow-path`)
    file_timeout: float = 30.0  # reading one local file (a hung network file system fails the row)


async def load_image(
    ref: Any, *, field: str, policy: InputPolicy, session: aiohttp.ClientSession | None
) -> InputImage:
    """Load one input image from a path, an http(s) URL, a data URL, raw bytes or a HF image dict."""
    name = field
    if isinstance(ref, dict) and ("bytes" in ref or "path" in ref):  # Hugging Face `Image` feature
        ref = ref.get("bytes") or ref.get("path")
    if isinstance(ref, bytes | bytearray):
        data = bytes(ref)
    elif isinstance(ref, str) and ref.startswith("data:"):
        data = _data_url(ref, field)
    elif isinstance(ref, str) and ref.split(":", 1)[0].lower() in ("http", "https"):
        data = await _fetch(ref, field=field, policy=policy, session=session)
        name = urlsplit(ref).path.rsplit("/", 1)[-1] or field
    elif isinstance(ref, str) and "://" in ref:
        raise InputError(f"{field}: only http(s) URLs, data URLs and file paths are read, not {ref[:40]!r}",
                         field=field)
    elif isinstance(ref, str) and ref.strip():
        path = confined_path(ref, field=field, policy=policy)
        name = path.name
        data = await _read_file(path, ref, field=field, policy=policy)
    else:
        raise InputError(f"{field}: expected an image path, URL or data URL, got {type(ref).__name__}",
                         field=field)
    image = await asyncio.to_thread(inspect_image, data, name=name, field=field, max_bytes=policy.max_bytes)
    if isinstance(ref, str) and ref.lower().startswith("https://"):
        image = dataclasses.replace(image, url=ref)
    return image


def confined_path(ref: str, *, field: str, policy: InputPolicy) -> Path:
    """The real path (symlinks resolved) of a local image reference, refused unless it lies inside the input's
    folder tree or an allowed folder. Nothing is opened here, so a refusal cannot tell whether a file exists."""
    if "\x00" in ref:
        raise InputError(f"{field}: the image path holds a NUL byte", field=field)
    given = Path(ref)
    try:
        resolved = (given if given.is_absolute() else policy.base_dir / given).resolve()
        roots = [root.resolve() for root in (policy.base_dir, *policy.allowed_paths)]
    except (OSError, RuntimeError):  # a symlink loop, a name too long
        raise InputError(f"{field}: cannot resolve the image path {ref}", field=field) from None
    if not any(resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(root) for root in roots)
        raise InputError(
            f"{field}: image path {ref} is outside the folders images are read from ({allowed}); a row may only "
            "name files in its input file's folder; to read another folder, pass --allow-path DIR", field=field)
    return resolved


def read_confined(ref: str, *, field: str, policy: InputPolicy) -> bytes:
    """The bytes of a local image reference, read under the same rules as an input image (confined, a regular
    file, within the size limit), without an event loop: for writers that embed the images a run read."""
    return _read_regular_file(confined_path(ref, field=field, policy=policy), ref, field, policy.max_bytes,
                              time.monotonic() + policy.file_timeout)


async def _read_file(path: Path, ref: str, *, field: str, policy: InputPolicy) -> bytes:
    deadline = time.monotonic() + policy.file_timeout
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(_read_regular_file, path, ref, field, policy.max_bytes, deadline),
            timeout=policy.file_timeout)
    except TimeoutError:
        raise InputError(f"{field}: reading {ref} took longer than {policy.file_timeout:g} s", field=field) \
            from None
    except FileNotFoundError:
        raise InputError(f"{field}: image file {ref} not found (relative paths are read from "
                         f"{policy.base_dir})", field=field) from None
    except OSError as exc:
        raise InputError(f"{field}: cannot read {ref}: {exc.strerror or exc}", field=field) from None


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | \
    getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


def _read_regular_file(path: Path, ref: str, field: str, max_bytes: int, deadline: float) -> bytes:
    """At most max_bytes of a regular file. Checked before opening (a FIFO would block the open), opened without
    blocking or following a symlink swapped in since `confined_path`, and checked again on the open descriptor
    (the file may have been replaced between the two)."""
    _check_kind(os.stat(path), ref, field, max_bytes)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        _check_kind(os.fstat(fd), ref, field, max_bytes)
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > max_bytes:  # the file grew since fstat
                raise InputError(f"{field}: {ref} is over the limit of {max_bytes} bytes", field=field)
            chunks.append(chunk)
    finally:
        os.close(fd)


def _check_kind(info: os.stat_result, ref: str, field: str, max_bytes: int) -> None:
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        raise InputError(f"{field}: {ref} is a folder, not an image file", field=field)
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
        raise InputError(f"{field}: {ref} is {kind}, not an image file; only regular files are read", field=field)
    if info.st_size > max_bytes:
        raise InputError(f"{field}: {ref} is {info.st_size} bytes, over the limit of {max_bytes}", field=field)


def inspect_image(data: bytes, *, name: str, field: str, max_bytes: int) -> InputImage:
    """Check that bytes are a whole, decodable image of sane dimensions; return it with its real type."""
    if not data:
        raise InputError(f"{field}: {name} is empty", field=field)
    if len(data) > max_bytes:
        raise InputError(f"{field}: {name} is {len(data)} bytes, over the limit of {max_bytes}", field=field)
    mime = sniff(data)
    if mime is None:
        raise InputError(f"{field}: {name} is not a PNG, JPEG, WebP or GIF image", field=field)
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise InputError(f"{field}: {name} declares {width}x{height} pixels, too large to be safe",
                                     field=field)
                img.load()
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"{field}: {name} declares more than {MAX_PIXELS} pixels, too large to be safe "
                         "(a decompression bomb?)", field=field) from None
    except Exception as exc:  # Pillow raises many types for broken files
        raise InputError(f"{field}: {name} is not a readable image ({exc})", field=field) from None
    return InputImage(data=data, mime=mime, name=name, width=width, height=height)


def fit_for_model(image: InputImage, spec: ModelSpec, *, field: str) -> InputImage:
    """Convert an input image the model cannot take as it is (CMYK, 16-bit, animated GIF, a format the model
    does not list) into a PNG that keeps transparency; enforce the model's size limit."""
    from PIL import Image

    needs = bool(spec.input_formats) and image.mime not in spec.input_formats
    with Image.open(io.BytesIO(image.data)) as img:
        odd_mode = img.mode not in ("RGB", "RGBA", "L", "LA", "P")
        animated = getattr(img, "is_animated", False)
        if needs or odd_mode or animated:
            img.seek(0)
            target = "RGBA" if ("A" in img.getbands() or "transparency" in img.info) else "RGB"
            frame: Image.Image = img
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                frame = img.point(lambda v: v / 256).convert("L")
            out = io.BytesIO()
            frame.convert(target).save(out, format="PNG")
            image = InputImage(out.getvalue(), "image/png", image.name, image.width, image.height)
    if spec.square_input and image.width != image.height:
        raise InputError(f"{field}: {spec.name} edits need a square image; {image.name} is "
                         f"{image.width}x{image.height}", field=field)
    if len(image.data) > spec.max_input_image_bytes:
        raise InputError(f"{field}: {image.name} is {len(image.data)} bytes; {spec.name} takes at most "
                         f"{spec.max_input_image_bytes}", field=field)
    return image


def convert(data: bytes, fmt: str, *, quality: int | None = None) -> bytes:
    """Re-encode an output image in `fmt` (png, jpeg, webp), keeping transparency where the format can."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        out = io.BytesIO()
        if fmt == "jpeg":
            img.convert("RGB").save(out, format="JPEG", quality=quality or 95)
        else:
            frame = img if img.mode in ("RGB", "RGBA", "L", "LA") else img.convert("RGBA")
            frame.save(out, format=fmt.upper(), **({"quality": quality} if quality else {}))
        return out.getvalue()


def data_url(data: bytes, mime: str | None = None) -> str:
    return f"data:{mime or sniff(data) or 'application/octet-stream'};base64,{pybase64.b64encode(data).decode()}"


def _data_url(ref: str, field: str) -> bytes:
    header, sep, payload = ref.partition(",")
    if not sep or ";base64" not in header:
        raise InputError(f"{field}: data URL must be base64 (data:image/png;base64,...)", field=field)
    try:
        return pybase64.b64decode(payload, validate=True)
    except ValueError:
        raise InputError(f"{field}: data URL has invalid base64", field=field) from None


async def _fetch(url: str, *, field: str, policy: InputPolicy, session: aiohttp.ClientSession | None) -> bytes:
    import aiohttp

    target, headers = url, {}
    server_hostname: str | None = None
    if not policy.allow_private_urls:
        # Connect to the very address that was checked (DNS could answer differently a second time), keeping the
        # name for the Host header and TLS.
        aim = pinned(url, await _public_address(urlsplit(url).hostname or "", field))
        target, headers["Host"], server_hostname = aim.url, aim.host, aim.server_hostname
    if session is None:
        raise InputError(f"{field}: cannot fetch {url}: no HTTP session", field=field)
    try:
        timeout = aiohttp.ClientTimeout(total=policy.url_timeout)
        async with session.get(target, timeout=timeout, allow_redirects=False, headers=headers,
                               server_hostname=server_hostname) as resp:
            if resp.status != 200:
                raise InputError(f"{field}: fetching {url} gave HTTP {resp.status}", field=field)
            if (resp.content_length or 0) > policy.max_bytes:
                raise InputError(f"{field}: {url} is over the limit of {policy.max_bytes} bytes", field=field)
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > policy.max_bytes:
                    raise InputError(f"{field}: {url} is over the limit of {policy.max_bytes} bytes",
                                     field=field)
                chunks.append(chunk)
            return b"".join(chunks)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise InputError(f"{field}: cannot fetch {url}: {type(exc).__name__}", field=field) from None


async def _public_address(host: str, field: str) -> str:
    """The address to connect to for `host` (`pixelmill.netpolicy`: public addresses only), or the row's
    `InputError` naming the flag that allows private ones."""
    try:
        return await public_address(host)
    except UnsafeAddress as exc:
        hint = "; pass --allow-private-urls to read it" if exc.private else ""
        raise InputError(f"{field}: {exc}{hint}", field=field) from None
