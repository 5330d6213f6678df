"""Writing output images: atomic, named after the record, with the extension of the real format.

A file is written to a temporary name in its final folder and renamed into place, so a crash never leaves a
half image under a final name. The journal marks a row done only after its files are in place.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pixelmill.errors import TransientError
from pixelmill.reading.images import EXTENSIONS, MIME_OF_FORMAT, convert, sniff

TMP_MARK = ".pixelmill-tmp"


DEFAULT_NAME = "{step}/{key}_{i}"
NAME_FIELDS = ("step", "key", "i", "row", "field")


def check_name_template(template: str) -> None:
    """A file-name template must give every image of a step its own file, inside RUNDIR/images.

    It tells rows apart ({key} or {row}) and images of a row apart ({i}); and between two of those a literal with
    a character that is not a digit, so that a name reads back one way only ({key}{i}
    would give ids 'a1' and 'a' the same file 'a10'). {step} and {field} are constant within a step.
    The extension is added from the bytes."""
    import string

    from pixelmill.errors import ConfigError
    from pixelmill.reading.records import template_fields

    names = template_fields(template)
    unknown = sorted(set(names) - set(NAME_FIELDS))
    if unknown:
        raise ConfigError(f"name template {template!r}: unknown placeholder(s) {unknown}; use {list(NAME_FIELDS)}")
    if ("key" not in names and "row" not in names) or "i" not in names:
        raise ConfigError(f"name template {template!r} must contain {{key}} or {{row}}, and {{i}}, so that two "
                          "images never share a file")
    if template.startswith("/") or ".." in template.split("/") or "\\" in template or "\x00" in template:
        raise ConfigError(f"name template {template!r} must stay inside RUNDIR/images")
    between = ""
    last: str | None = None
    for literal, placeholder, _, _ in string.Formatter().parse(template):
        between += literal
        if placeholder in ("key", "row", "i"):
            if last is not None and not any(not c.isdigit() for c in between):
                raise ConfigError(f"name template {template!r}: put a separator that is not a digit between "
                                  f"{{{last}}} and {{{placeholder}}} (like _ or /), so that names cannot clash")
            last, between = placeholder, ""


def check_step_names(steps: list[tuple[str, str | None]]) -> None:
    """Steps of one run never share a file: with more than one step, each template puts {step} or {field} in
    a folder of its own (the default does: "{step}/...")."""
    from pixelmill.errors import ConfigError

    if len(steps) < 2:
        return
    for step, template in steps:
        parts = (template or DEFAULT_NAME).split("/")[:-1]
        if "{step}" not in parts and "{field}" not in parts:
            raise ConfigError(f"step {step!r}: name template {template!r} must put {{step}} or {{field}} in a folder "
                              "of its own (e.g. \"{step}/{key}_{i}\"), so that two steps never share a file")


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
