"""Writing output images: atomic, named after the record, with the extension of the real format.

A file is written to a temporary name in its final folder and renamed into place, so a crash never leaves a
half image under a final name. The journal marks a row done only after its files are in place.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pixelmill.errors import TransientError
from pixelmill.images import EXTENSIONS, MIME_OF_FORMAT, convert, sniff

TMP_MARK = ".pixelmill-tmp"


class ImageStore:
    def __init__(self, rundir: Path) -> None:
        self.rundir = rundir
        self._made: set[Path] = set()

    def write(
        self,
        step: str,
        key: str,
        index: int,
        data: bytes,
        *,
        convert_to: str | None = None,
        compression: int | None = None,
    ) -> tuple[str, str]:
        """Write image `index` of (`step`, `key`). Returns (path relative to RUNDIR, MIME type).

        Blocking (disk I/O): the engine calls it from a worker thread."""
        mime = sniff(data)
        if mime is None:
            raise TransientError("the provider's answer is not an image (unknown bytes)", maybe_billed=True)
        if convert_to is not None and MIME_OF_FORMAT[convert_to] != mime:
            data = convert(data, convert_to, quality=compression)
            mime = MIME_OF_FORMAT[convert_to]
        folder = self.rundir / "images" / step
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)
        final = folder / f"{key}_{index}.{EXTENSIONS[mime]}"
        tmp = folder / f".{final.name}.{secrets.token_hex(4)}{TMP_MARK}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
        return final.relative_to(self.rundir).as_posix(), mime

    def sweep_temporaries(self) -> int:
        """Remove temporary files left by a killed run. They never carry a final name, so this is tidiness,
        not recovery."""
        removed = 0
        images = self.rundir / "images"
        if not images.is_dir():
            return 0
        for folder in images.iterdir():
            if not folder.is_dir():
                continue
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.endswith(TMP_MARK):
                        Path(entry.path).unlink(missing_ok=True)
                        removed += 1
        return removed
