"""Writing output images: atomic, named after the record, with the extension of the real format; and checking
them again on a later run.

A file is written to a temporary name in its final folder and renamed into place, so a crash never leaves a
half image under a final name. The journal marks a row done only after its files are in place, with each file's
byte size, so that a re-run can tell a file deleted or cut short since (`check_files`: one stat per file, a decode
only when asked) and make it again.

A full disk (or a quota, a read-only or failing device) raises `DiskFull` and leaves no temporary file behind.
The store keeps a reserve of disk space for the run (`reserve_space`, a file in `.pixelmill`): when the disk
fills up, `release_reserve` frees it so that the journal can still record what was paid and the output can still
be written; after that, an image is written only when it leaves the reserve's worth of space free.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from pixelmill.errors import DISK_ERRNOS, TransientError, disk_full
from pixelmill.reading.images import EXTENSIONS, MIME_OF_FORMAT, convert, sniff

TMP_MARK = ".pixelmill-tmp"
RESERVE_NAME = "space-reserve"
# Room for the journal to record the calls of a stopped run and for a small output file, once the disk is full.
RESERVE_BYTES = 1 << 20


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
        self._reserve = rundir / ".pixelmill" / RESERVE_NAME
        self.full = False  # the disk filled up during this run: images must leave the reserve's room free

    def write(
        self,
        stem: str,
        data: bytes,
        *,
        convert_to: str | None = None,
        compression: int | None = None,
    ) -> tuple[str, str, int]:
        """Write one image at `images/<stem>.<ext>`. Returns (path relative to RUNDIR, MIME type, bytes written).
        Raises `DiskFull` when the disk cannot take it (no temporary file is left behind).

        Blocking (disk I/O): the engine calls it from a worker thread."""
        mime = sniff(data)
        if mime is None:
            raise TransientError("the provider's answer is not an image (unknown bytes)", maybe_billed=True)
        if convert_to is not None and MIME_OF_FORMAT[convert_to] != mime:
            data = convert(data, convert_to, quality=compression)
            mime = MIME_OF_FORMAT[convert_to]
        final = self.root / f"{stem}.{EXTENSIONS[mime]}"
        name = final.relative_to(self.rundir).as_posix()
        folder = final.parent
        tmp = folder / f".{final.name}.{secrets.token_hex(4)}{TMP_MARK}"
        try:
            if self.full and not self._room_for(len(data)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if folder not in self._made:
                folder.mkdir(parents=True, exist_ok=True)
                self._made.add(folder)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, final)
            except BaseException:
                tmp.unlink(missing_ok=True)  # a half-written temporary holds space the journal needs
                raise
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise
            self.full = True
            raise disk_full(exc, name) from None
        return name, mime, len(data)

    # ------------------------------------------------------------ the reserve of space for a full disk
    def reserve_space(self) -> None:
        """Set RESERVE_BYTES of disk aside (allocated, not a sparse file) for the end of a run that fills the disk.
        Raises `DiskFull` when even that does not fit: then nothing should be sent."""
        try:
            self._reserve.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                try:
                    os.posix_fallocate(fd, 0, RESERVE_BYTES)
                except OSError as exc:
                    if exc.errno in DISK_ERRNOS:
                        raise
                    os.pwrite(fd, bytes(RESERVE_BYTES), 0)  # a file system without fallocate
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise
            self._reserve.unlink(missing_ok=True)
            raise disk_full(exc, str(self.rundir)) from None

    def release_reserve(self) -> None:
        """Free the reserve (the disk filled up, or the run ends): from now on images leave its room free."""
        self.full = True
        self._reserve.unlink(missing_ok=True)

    def _room_for(self, size: int) -> bool:
        try:
            st = os.statvfs(self.rundir)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize >= size + RESERVE_BYTES

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


def check_files(rundir: Path, outputs: list[str], sizes: dict[str, int], *, decode: bool = False) -> list[str]:
    """The files of a done row that are missing or broken, each as `path (why)`: gone, not a regular file, or of
    another size than the journal recorded when it was written (`sizes`; rows written before sizes were recorded
    are checked for existence only); with `decode`, also each image that does not decode. One stat per file: cheap
    enough to run on every resume."""
    broken: list[str] = []
    for path in dict.fromkeys([*outputs, *sizes]):
        try:
            st = os.stat(rundir / path)
        except OSError:
            broken.append(f"{path} (missing)")
            continue
        if not stat.S_ISREG(st.st_mode):
            broken.append(f"{path} (not a file)")
            continue
        want = sizes.get(path)
        if want is not None and st.st_size != want:
            broken.append(f"{path} ({st.st_size} bytes, {want} written)")
        elif decode and (why := _undecodable(rundir / path)) is not None:
            broken.append(f"{path} (does not decode: {why})")
    return broken


def _undecodable(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:  # Pillow raises many types for a broken file: each one means "broken"
        return f"{type(exc).__name__}: {exc}"[:200]
    return None
