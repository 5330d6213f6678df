"""Image columns as the data ecosystem reads them: the `{bytes, path}` struct of Hugging Face's `Image` feature,
and the `huggingface` schema metadata that tells `datasets` (and the Hub's viewer) a struct column is an image.

Which columns hold images is known from the run: every step's output field (paths relative to RUNDIR, written by
pixelmill) and the input image field of each edit step whose values are references the run read (paths relative
to the input file's folder, URLs, data URLs, or `Image` dicts). A value becomes:
- embedded: `{"bytes": <the file>, "path": <the reference as written>}`: the file travels with the data;
- referenced: `{"bytes": None, "path": <absolute path>}`: `datasets` opens a relative path against the working
  directory, so an absolute one is what decodes from anywhere on this machine (it breaks if RUNDIR moves: then
  write the output again, or embed).
URLs stay URLs (`datasets` fetches them when decoded; nothing is fetched while writing); data URLs and bytes are
embedded either way. An input path that is refused (outside the allowed folders) or missing gives no image
(`None`): its row failed and says why in `pixelmill`. Files are read per batch, so memory stays flat.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pybase64

from pixelmill.config import RunConfig
from pixelmill.errors import InputError
from pixelmill.reading.images import InputPolicy, confined_path, read_confined

STRUCT_FIELDS = (("bytes", "binary"), ("path", "string"))


@dataclass(slots=True)
class ImageColumn:
    """One column of images. `policy` is None for the files pixelmill wrote itself (under RUNDIR, trusted); an
    input column reads only what its run could read. `many` (a list of images per row) is decided from the
    values for input columns (any list makes it a list column), and always true for outputs."""

    name: str
    base: Path
    policy: InputPolicy | None = None
    many: bool = True

    def struct(self, value: Any, embed: bool) -> dict[str, Any] | None:
        """One image reference as an `Image` struct, or None when there is no usable image."""
        if value is None or value == "":
            return None
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data:
                return {"bytes": bytes(data), "path": path}
            return self.struct(path, embed) if isinstance(path, str) else None
        if isinstance(value, bytes | bytearray):
            return {"bytes": bytes(value), "path": None}
        if not isinstance(value, str):
            return None
        if value.startswith("data:"):
            header, _, payload = value.partition(",")
            try:
                return {"bytes": pybase64.b64decode(payload, validate=True), "path": None} \
                    if ";base64" in header else None
            except ValueError:
                return None
        if value.startswith(("http://", "https://")):
            return {"bytes": None, "path": value}
        return self._local(value, embed)

    def _local(self, ref: str, embed: bool) -> dict[str, Any] | None:
        try:
            if self.policy is None:
                path = (self.base / ref).resolve()
                if embed:
                    return {"bytes": path.read_bytes(), "path": self._name(ref, path)}
            else:
                policy = self.policy
                path = confined_path(ref, field=self.name, policy=policy)
                if embed:
                    return {"bytes": read_confined(ref, field=self.name, policy=policy),
                            "path": self._name(ref, path)}
        except (InputError, OSError):
            return None
        return {"bytes": None, "path": str(path)} if path.is_file() else None

    def _name(self, ref: str, path: Path) -> str:
        """The `path` of an embedded image: the reference as the row wrote it when relative, else relative to
        the column's folder (or the bare file name), so that no absolute local path travels with the bytes (an
        output read back from a referenced Parquet holds absolute paths)."""
        if not Path(ref).is_absolute():
            return ref
        try:
            return path.relative_to(self.base.resolve()).as_posix()
        except ValueError:
            return path.name

    def cell(self, value: Any, embed: bool) -> Any:
        """The column's value for one row: a list of structs (a list column) or one struct."""
        if self.many:
            values = value if isinstance(value, list | tuple) else [] if value in (None, "") else [value]
            return [s for s in (self.struct(v, embed) for v in values) if s is not None]
        return self.struct(value[0] if isinstance(value, list | tuple) and value else value, embed)


def is_image_ref(value: Any) -> bool:
    """Whether a value can stand for images (None included): what makes an input field an image column."""
    if value is None or isinstance(value, str | bytes | bytearray):
        return True
    if isinstance(value, dict):
        return "bytes" in value or "path" in value
    if isinstance(value, list | tuple):
        return all(v is not None and is_image_ref(v) for v in value)
    return False


@dataclass(slots=True)
class ImageLayout:
    """What the Parquet writer needs to know of a run's images: the columns and whether bytes are embedded.
    `steps` names the steps of a pipeline (None: one step), for the flat `pixelmill_*` columns."""

    outputs: list[ImageColumn] = field(default_factory=list)
    inputs: list[ImageColumn] = field(default_factory=list)
    embed: bool = False
    steps: tuple[str, ...] | None = None

    @property
    def columns(self) -> dict[str, ImageColumn]:
        return {c.name: c for c in (*self.inputs, *self.outputs)}


def layout_of(config: RunConfig, *, embed: bool | None = None) -> ImageLayout:
    """The image columns of a run: every step's output field, and each edit step's input image field unless it
    is an earlier step's output (then it is that output's column already)."""
    rundir = config.output.resolve()
    outputs = [ImageColumn(step.out_field, rundir) for step in config.steps]
    written = {c.name for c in outputs}
    policy = InputPolicy(base_dir=config.source.parent, allowed_paths=config.allowed_paths)
    inputs: list[ImageColumn] = []
    for step in config.steps:
        name = step.image_field or ("images" if step.task != "generate" else None)
        if name is not None and name not in written and name not in {c.name for c in inputs}:
            inputs.append(ImageColumn(name, config.source.parent, policy, many=False))
    return ImageLayout(outputs, inputs, config.embed_images if embed is None else embed,
                       tuple(s.name for s in config.steps) if config.pipeline else None)


def arrow_type(column: ImageColumn) -> Any:
    import pyarrow as pa

    struct = pa.struct([(name, getattr(pa, kind)()) for name, kind in STRUCT_FIELDS])
    return pa.list_(struct) if column.many else struct


def features_metadata(columns: Iterable[ImageColumn]) -> dict[str, Any]:
    """The `features` of the `huggingface` schema metadata, as `datasets` writes them, for the image columns
    (the other columns' features `datasets` reads from their Arrow types). A list is written as `Sequence`,
    which every version of `datasets` reads (recent ones as `List`)."""
    image = {"_type": "Image"}
    return {c.name: {"feature": image, "_type": "Sequence"} if c.many else image for c in columns}
