"""`ImageIO(save_path)`: where a DataFlow step's images are put: `{save_path}/{key}/{key}_{i}.{ext}`.

As in DataFlow, `key` names the sample (`sample0_condition0`, `sample_3`); unlike it, the extension is the real
format of the bytes (a JPEG is `.jpg`), transparency is kept, and every file appears atomically (a temporary
name in the same folder, then a rename).

The engine writes each image once, into the step's run directory (where the journal vouches for it);
`place()` then gives it its DataFlow name with a hard link, which costs no disk space and no copy (a copy
only where the two folders are on different file systems).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pixelmill.reading.images import EXTENSIONS, sniff
from pixelmill.reading.records import sanitize_key
from pixelmill.writing.store import TMP_MARK

_ALL_EXTENSIONS = tuple(sorted(set(EXTENSIONS.values()) | {"jpeg"}))


class ImageIO:
    def __init__(self, save_path: str) -> None:
        self.save_path = str(save_path)

    def path_for(self, key: str, i: int, ext: str) -> str:
        """The DataFlow name of image `i` of sample `key`, as a path in the form `save_path` was given
        (a relative `save_path` gives paths relative to the working directory, as DataFlow wrote them)."""
        key = sanitize_key(key)
        return os.path.join(self.save_path, key, f"{key}_{i}.{ext}")

    def place(self, source: Path, key: str, i: int) -> str:
        """Give the engine's image file `source` its DataFlow name; returns that name. Idempotent: a file that
        is already the same file is left alone; a stale one (another run's image, or another format) is
        replaced."""
        ext = source.suffix.lstrip(".") or "png"
        name = self.path_for(key, i, ext)
        target = Path(name)
        with contextlib.suppress(FileNotFoundError):
            if os.path.samefile(source, target):
                return name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TMP_MARK}")
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        # The same image in another format from an earlier run (say .png, now .jpg) would be found beside it.
        for other in _ALL_EXTENSIONS:
            if other != ext:
                with contextlib.suppress(FileNotFoundError):
                    target.with_suffix(f".{other}").unlink()
        return name

    # ------------------------------------------------------------ DataFlow's direct use
    def __call__(self, images: Mapping[str, Iterable[Any]]) -> dict[str, list[str]]:
        """Save `{key: [image, ...]}` (bytes, or PIL images) as `{save_path}/{key}/{key}_{i}.{ext}`; returns
        `{key: [path, ...]}`. PIL images are saved as PNG (transparency kept); bytes keep their own format."""
        out: dict[str, list[str]] = {}
        for key, items in images.items():
            paths = out.setdefault(key, [])
            for i, image in enumerate(items):
                data = image if isinstance(image, bytes | bytearray) else _png_bytes(image)
                mime = sniff(bytes(data))
                if mime not in EXTENSIONS:
                    raise ValueError(f"image {i} of {key!r} is not a PNG, JPEG, WebP or GIF image")
                name = self.path_for(key, i, EXTENSIONS[mime])
                target = Path(name)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TMP_MARK}")
                tmp.write_bytes(bytes(data))
                os.replace(tmp, target)
                paths.append(name)
        return out

    def read(self, paths: str | Iterable[str]) -> list[Any]:
        """Open image files as PIL images (loaded, files closed)."""
        from PIL import Image

        out = []
        for path in [paths] if isinstance(paths, str) else paths:
            with Image.open(path) as img:
                img.load()
                out.append(img)
        return out


def _png_bytes(image: Any) -> bytes:
    if not hasattr(image, "save"):
        raise ValueError(f"cannot save a {type(image).__name__} as an image: give bytes or a PIL image")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
