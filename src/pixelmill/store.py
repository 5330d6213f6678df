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


DEFAULT_NAME = "{step}/{key}_{i}"
NAME_FIELDS = ("step", "key", "i", "row", "field")


def check_name_template(template: str) -> None:
    """A file-name template must tell rows apart ({key} or {row}) and images of a row apart ({i}), and use
    only known placeholders. The extension is added from the bytes."""
    from pixelmill.errors import ConfigError
    from pixelmill.records import template_fields

    names = template_fields(template)
    unknown = sorted(set(names) - set(NAME_FIELDS))
    if unknown:
        raise ConfigError(f"name template {template!r}: unknown placeholder(s) {unknown}; use {list(NAME_FIELDS)}")
    if ("key" not in names and "row" not in names) or "i" not in names:
        raise ConfigError(f"name template {template!r} must contain {{key}} or {{row}}, and {{i}}, so that two "
                          "images never share a file")
    if template.startswith("/") or ".." in template.split("/") or "\\" in template:
        raise ConfigError(f"name template {template!r} must stay inside RUNDIR/images")


def image_stem(template: str, *, step: str, key: str, i: int, row: int, field: str) -> str:
    """The file path (without extension) below RUNDIR/images for one image. Values are already safe: keys are
    sanitised, steps and fields are checked names."""
    return template.format(step=step, key=key, i=i, row=f"{row:06d}", field=field)


class ImageStore:
    def __init__(self, rundir: Path) -> None:
        self.rundir = rundir
        self.root = rundir / "images"
        self._made: set[Path] = set()

    def write(
        self,
        stem: str,
        data: bytes,
        *,
        convert_to: str | None = None,
        compression: int | None = None,
    ) -> tuple[str, str]:
        """Write one image at `images/<stem>.<ext>`. Returns (path relative to RUNDIR, MIME type).

        Blocking (disk I/O): the engine calls it from a worker thread."""
        mime = sniff(data)
        if mime is None:
            raise TransientError("the provider's answer is not an image (unknown bytes)", maybe_billed=True)
        if convert_to is not None and MIME_OF_FORMAT[convert_to] != mime:
            data = convert(data, convert_to, quality=compression)
            mime = MIME_OF_FORMAT[convert_to]
        final = self.root / f"{stem}.{EXTENSIONS[mime]}"
        folder = final.parent
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)
        tmp = folder / f".{final.name}.{secrets.token_hex(4)}{TMP_MARK}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
        return final.relative_to(self.rundir).as_posix(), mime

    def sweep_temporaries(self) -> int:
        """Remove temporary files left by a killed run. They never carry a final name, so this is tidiness,
        not recovery."""
        removed = 0
        if not self.root.is_dir():
            return 0
        folders = [self.root]
        while folders:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(Path(entry.path))
                    elif entry.name.endswith(TMP_MARK):
                        Path(entry.path).unlink(missing_ok=True)
                        removed += 1
        return removed
