"""`pixelmill export RUNDIR --keep MARKS -o DIR`: the kept subset of a run's output, as a run of its own.

MARKS is the JSONL file the gallery's "Export marks" link saves: one line per marked row,
`{"identity": ..., "key": ..., "row": ..., "mark": "keep" | "reject"}`. Rows are matched by their identity in the
journal's terms (the `--id-field` value, else the row's content), computed from each output row, never by
position, so a marks file still applies after the source was reordered or rows were added (and the run resumed);
a line without an identity is matched by `key` (the stem of the row's image files). The last line about a row
wins; identical rows without an id share an identity, and so a mark.

DIR gets `output.jsonl` (or `output.parquet` for a Parquet run) with the kept rows, unchanged and in the run's
order, and their image files under the same relative paths, copied (or hard-linked with `link`; a copy where
the file system cannot link). Rows whose images are embedded (`--embed-images`) need no files. DIR must be new
or empty: an export never mixes with another.

Rows come as the output is built (`output_rows`: the source and the journal), or from the output file when the
source cannot be read any more; `identified_rows` pairs each with its journal entry (also for the gallery).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from pixelmill.config import RunConfig
from pixelmill.errors import ConfigError
from pixelmill.reading import jsonio
from pixelmill.reading.records import Record
from pixelmill.writing.journal import Journal, Place, RowIdentity

Mark = Literal["keep", "reject"]
Unmarked = Literal["drop", "keep"]
CHUNK = 256


# ---------------------------------------------------------------- a run's rows, each with its entry


def run_rows(config: RunConfig, journal: Journal, rundir: Path) -> Iterator[dict[str, Any]]:
    """Every output row of the run in order: rebuilt from the source and the journal, else read from the output
    file (the source is gone); image fields as paths relative to RUNDIR unless the run embedded them."""
    from pixelmill.writing.output import OutputCounts, output_rows

    if config.source.is_file():
        yield from output_rows(config, journal, OutputCounts())
        return
    for name in ("output.jsonl", "output.parquet"):
        path = rundir / name
        if path.is_file():
            yield from read_output(path, config)
            return
    raise ConfigError(f"the source {config.source} and the output in {rundir} are both missing; run the job "
                      "again to write the output")


def read_output(path: Path, config: RunConfig | None = None) -> Iterator[dict[str, Any]]:
    """The rows of an output file as the output is built: a Parquet run's `Image` structs of its output fields
    back to paths relative to RUNDIR (or data URLs where it embedded them), without the flat `pixelmill_*`
    columns (writing/meta_columns.py: the writer adds them again)."""
    if path.suffix == ".jsonl":
        with path.open("rb") as f:
            for line in f:
                if line.strip():
                    yield orjson.loads(line)
        return
    import pyarrow.parquet as pq

    from pixelmill.writing.image_columns import layout_of
    from pixelmill.writing.meta_columns import meta_names

    layout = layout_of(config) if config is not None else None
    outputs = [c.name for c in layout.outputs] if layout is not None else []
    flat = {name for name, _ in meta_names(layout.steps)} if layout is not None else set()
    rundir = path.parent.resolve()
    for batch in pq.ParquetFile(path).iter_batches(batch_size=512):
        for row in batch.to_pylist():
            if isinstance(row.get("pixelmill"), str):
                row["pixelmill"] = orjson.loads(row["pixelmill"])
            for name in flat:
                row.pop(name, None)
            for name in outputs:
                if isinstance(row.get(name), list):
                    row[name] = [image_reference(v, rundir) for v in row[name]]
            yield row


def image_reference(value: Any, rundir: Path) -> Any:
    """An output image as the output rows hold it: a path relative to RUNDIR, or a data URL for embedded bytes
    with no file of the run behind them."""
    if not isinstance(value, dict):
        return value
    data, ref = value.get("bytes"), value.get("path")
    if isinstance(ref, str):
        path = Path(ref)
        try:
            return (path if path.is_absolute() else rundir / path).resolve().relative_to(rundir).as_posix()
        except ValueError:
            pass
    if data:
        from pixelmill.reading.images import data_url

        return data_url(bytes(data))
    return ref


def identified_rows(config: RunConfig, journal: Journal,
                    rundir: Path) -> Iterator[tuple[int, dict[str, Any], Place | None]]:
    """(position, row, its identity and journal entry) for every row; None for a line that could not be read.
    The identity is computed from the row itself, as the journal computes it (`RowIdentity`): never from where
    the row stands, so that marks follow rows that moved."""
    chunk: list[tuple[int, dict[str, Any], str | None]] = []
    for position, row in enumerate(run_rows(config, journal, rundir)):
        chunk.append((position, row, row_identity(config, row)))
        if len(chunk) >= CHUNK:
            yield from _placed(journal, chunk)
            chunk = []
    if chunk:
        yield from _placed(journal, chunk)


def row_identity(config: RunConfig, row: dict[str, Any]) -> str | None:
    """The identity of an output row: its id, else the content of the input row (the row without the fields
    the run added)."""
    pm = row.get("pixelmill")
    if set(row) == {"pixelmill"} and isinstance(pm, dict) and "error" in pm:
        return None  # a line that could not be read: nothing to mark
    added = {"pixelmill", *(step.out_field for step in config.steps)}
    data = {name: value for name, value in row.items() if name not in added}
    return RowIdentity.of(Record(0, data), config.id_field).identity


def _placed(journal: Journal, chunk: list[tuple[int, dict[str, Any], str | None]]
            ) -> Iterator[tuple[int, dict[str, Any], Place | None]]:
    places = journal.places([identity for _, _, identity in chunk if identity is not None])
    for position, row, identity in chunk:
        yield position, row, None if identity is None else places.get(identity, Place(identity))


# ---------------------------------------------------------------- marks


@dataclass(slots=True)
class Marks:
    by_identity: dict[str, Mark] = field(default_factory=dict)
    by_key: dict[str, Mark] = field(default_factory=dict)

    def of(self, place: Place) -> Mark | None:
        return self.by_identity.get(place.identity) or (self.by_key.get(place.key) if place.key else None)

    def __len__(self) -> int:
        return len(self.by_identity) + len(self.by_key)


def read_marks(path: Path) -> Marks:
    """The marks file the gallery saves; a line that is not a mark is a usage error naming its line."""
    marks = Marks()
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the marks file {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            item = None
        mark = item.get("mark") if isinstance(item, dict) else None
        identity = item.get("identity") if isinstance(item, dict) else None
        key = item.get("key") if isinstance(item, dict) else None
        if mark not in ("keep", "reject") or not (isinstance(identity, str) or isinstance(key, str)):
            raise ConfigError(f"{path} line {number}: not a mark; each line is "
                              '{"identity": ..., "key": ..., "mark": "keep" | "reject"}, as the gallery exports')
        if isinstance(identity, str):
            marks.by_identity[identity] = mark
        else:
            marks.by_key[str(key)] = mark
    return marks


# ---------------------------------------------------------------- the kept subset


@dataclass(slots=True)
class ExportResult:
    output: Path
    rows: int  # rows of the run
    kept: int
    files: int  # image files copied or linked
    unmatched: int  # marks that name no row of the run


def export_kept(config: RunConfig, journal: Journal, rundir: Path, marks: Marks, target: Path, *,
                unmarked: Unmarked = "drop", link: bool = False) -> ExportResult:
    """Write the rows `marks` keeps (and unmarked rows when `unmarked` is "keep") to `target`, with their images;
    rows are streamed (memory flat in the run's size)."""
    target = target.resolve()
    if target == rundir.resolve():
        raise ConfigError(f"{target} is the run itself: give a new folder to --output")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target} is not empty: give a new or empty folder to --output, so that the export "
                          "holds the kept rows only")
    out_fields = [step.out_field for step in config.steps]
    result = ExportResult(target, 0, 0, 0, 0)
    identities: set[str] = set()
    keys: set[str] = set()
    passes = 0

    def kept() -> Iterator[dict[str, Any]]:
        nonlocal passes
        passes += 1
        first = passes == 1  # the Parquet writer reads the rows twice: files and counts on the first pass
        for _, row, place in identified_rows(config, journal, rundir):
            mark = marks.of(place) if place is not None else None
            if first:
                result.rows += 1
                if place is not None:
                    identities.add(place.identity)
                    keys.add(place.key or "")
            if mark == "reject" or (mark is None and unmarked == "drop"):
                continue
            if first:
                result.kept += 1
                result.files += sum(_copy_image(rundir, target, ref, link)
                                    for name in out_fields for ref in _refs(row.get(name)))
            yield row

    target.mkdir(parents=True, exist_ok=True)
    result.output = _write_rows(config, target, kept)
    result.unmatched = len(set(marks.by_identity) - identities) + len(set(marks.by_key) - keys)
    return result


def _refs(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value] if isinstance(value, str) else []


def _copy_image(rundir: Path, target: Path, ref: Any, link: bool) -> bool:
    """Copy (or link) one image of a kept row to the same relative path under `target`; a data URL or a path
    outside the run (never written by it) is left as it is."""
    if not isinstance(ref, str) or ref.startswith("data:"):
        return False
    source = (rundir / ref).resolve()
    if not source.is_relative_to(rundir.resolve()) or not source.is_file():
        return False
    dest = target / ref
    dest.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(source, dest)
            return True
        except OSError:  # another file system, or links not allowed: a copy will do
            pass
    shutil.copy2(source, dest)
    return True


def _write_rows(config: RunConfig, target: Path, rows: Callable[[], Iterator[dict[str, Any]]]) -> Path:
    if config.format == "parquet":
        from pixelmill.writing.image_columns import layout_of
        from pixelmill.writing.parquet import write_parquet_from

        # As the run wrote it (`Image` structs, flat status columns), with the images of the export's own folder.
        layout = layout_of(config)
        for column in layout.outputs:
            column.base = target.resolve()
        path = target / "output.parquet"
        write_parquet_from(path, rows, layout)
        return path
    path = target / "output.jsonl"  # a saved HF dataset run exports as JSONL: the rows and their files
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            for row in rows():
                f.write(jsonio.dumps(row, newline=True))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
