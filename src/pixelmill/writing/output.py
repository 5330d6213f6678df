"""The output dataset, rebuilt from the source and the journal at any time.

The source is read again a chunk at a time, each row's results looked up in the journal by the row's identity
(memory flat in the dataset's size), and every input row is written: unchanged, plus its output field(s) and the
`pixelmill` object. The file is written under a temporary name and renamed, so a crash never leaves a half output;
on a full disk the temporary is removed, the previous output stays as it was, and `DiskFull` says so.

JSONL runs also get `metadata.jsonl` (`imagefolder.py`), written in the same pass. Parquet and HF take the rows
with their image paths and write the images as `Image` structs themselves (`image_columns.py`), embedding the bytes
with `--embed-images`; JSONL embeds data URLs. Every format and how to load it: docs/outputs.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelmill.config import RunConfig
from pixelmill.errors import DISK_ERRNOS, disk_full
from pixelmill.reading import jsonio
from pixelmill.reading.images import data_url
from pixelmill.reading.records import Record, read_records
from pixelmill.writing.journal import Journal, RowIdentity, StepState

_PRIVATE = ("calls", "_usages", "target", "sizes", "lost_submits")  # journal bookkeeping, not for the user
CHUNK = 256  # rows looked up in the journal at a time


@dataclass(slots=True)
class OutputCounts:
    rows: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def step_object(state: StepState | None) -> dict[str, Any]:
    if state is None:
        return {"status": "pending"}
    info = {k: v for k, v in state.info.items() if k not in _PRIVATE}
    return {"status": state.status, **info}


def output_rows(config: RunConfig, journal: Journal, counts: OutputCounts, *,
                settle: bool = False) -> Iterator[dict[str, Any]]:
    """Every row of the source in order, each with its own results: found by the row's identity (id, else
    content), wherever it stands now, a chunk of rows at a time (memory flat in the dataset's size). It reads the
    journal only, unless `settle` (the run's own output, under its lock): then the journal learns where the rows
    stand now (`Journal.settle_lookup`)."""
    chunk: list[Record] = []
    journal.begin_lookup()
    for record in _records(config):
        chunk.append(record)
        if len(chunk) >= CHUNK:
            yield from _chunk_rows(config, journal, chunk, counts)
            chunk = []
    if chunk:
        yield from _chunk_rows(config, journal, chunk, counts)
    if settle:
        journal.settle_lookup()  # the whole source was read: entries no row matched are no longer in it
        journal.set_meta("source_seen", source_token(config.source) or "")


def source_token(source: Path) -> str | None:
    """The source file's size and modification time: what tells a report that the source changed since the run
    last read it (None: not a file)."""
    try:
        st = source.stat()
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}" if source.is_file() else None


def _chunk_rows(config: RunConfig, journal: Journal, chunk: list[Record],
                counts: OutputCounts) -> Iterator[dict[str, Any]]:
    slots = journal.match([RowIdentity.of(r, config.id_field) for r in chunk])
    wanted = sorted(set(slots.values()))
    states = {step.name: journal.states(step.name, wanted) for step in config.steps}
    for record in chunk:
        slot = slots.get(record.index)
        mine = {} if slot is None else {name: by_slot[slot] for name, by_slot in states.items() if slot in by_slot}
        counts.rows += 1
        yield _row(config, record, mine, counts)


def _records(config: RunConfig) -> Iterator[Record]:
    for record in read_records(config.source, config.source_format):
        if config.limit is not None and record.index >= config.limit:
            return
        yield record


def _row(config: RunConfig, record: Record, states: dict[str, StepState], counts: OutputCounts) -> dict[str, Any]:
    if record.data is None:
        counts.failed += 1
        where: dict[str, Any] = {"line": record.line} if record.line is not None else {"row": record.index}
        return {"pixelmill": {**where, "status": "failed", "error": {"kind": "input", "message": record.error}}}
    row = dict(record.data)
    objects: dict[str, Any] = {}
    statuses = []
    for step in config.steps:
        state = states.get(step.name)
        obj = step_object(state)
        statuses.append(obj["status"])
        outputs = state.outputs if state is not None and state.status == "done" else []
        if config.embed_images:
            outputs = [_embed(config.output, p) for p in outputs]
        row[step.out_field] = outputs
        objects[step.name] = obj
    if "failed" in statuses:
        counts.failed += 1
    elif "pending" in statuses:
        counts.pending += 1
    else:
        counts.done += 1
    row["pixelmill"] = objects if config.pipeline else objects[config.steps[0].name]
    return row


def _embed(rundir: Path, path: str) -> str:
    return data_url((rundir / path).read_bytes())


def write_output(config: RunConfig, journal: Journal) -> tuple[Path, OutputCounts]:
    """Write the output dataset of `config` from the journal; `DiskFull` when the disk cannot take it (the
    previous output, if any, is left as it was)."""
    try:
        return _write_output(config, journal)
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        raise disk_full(exc, f"the output in {config.output}") from None


def _write_output(config: RunConfig, journal: Journal) -> tuple[Path, OutputCounts]:
    counts = OutputCounts()
    rundir = config.output
    rundir.mkdir(parents=True, exist_ok=True)
    # Parquet and HF take the images as `Image` structs, embedded as bytes by their writer: rows keep the paths.
    plain = config.model_copy(update={"embed_images": False})
    passes: list[OutputCounts] = []

    def rows() -> Iterator[dict[str, Any]]:
        passes.append(OutputCounts())
        return output_rows(plain, journal, passes[-1], settle=True)

    if config.format == "parquet":
        from pixelmill.writing.image_columns import layout_of
        from pixelmill.writing.parquet import write_parquet_from

        target = rundir / "output.parquet"
        write_parquet_from(target, rows, layout_of(config))
        return target, passes[-1]
    if config.format == "hf":
        from pixelmill.writing.hf import write_hf
        from pixelmill.writing.image_columns import layout_of

        target = rundir / "output.hf"
        write_hf(target, rundir, layout_of(config), rows)
        return target, passes[-1]
    from pixelmill.writing.imagefolder import imagefolder_row

    target = rundir / "output.jsonl"
    metadata = rundir / "metadata.jsonl"
    fields = [step.out_field for step in config.steps]
    steps = tuple(s.name for s in config.steps) if config.pipeline else None
    tmp, tmp_meta = target.with_name(f".{target.name}.tmp"), metadata.with_name(f".{metadata.name}.tmp")
    try:
        with open(tmp, "wb") as f, open(tmp_meta, "wb") as meta:
            for row in output_rows(plain, journal, counts, settle=True):
                meta.write(jsonio.dumps(imagefolder_row(row, fields, steps), newline=True))
                if config.embed_images:
                    row.update({name: [_embed(rundir, p) for p in row[name]] for name in fields if name in row})
                f.write(jsonio.dumps(row, newline=True))
        os.replace(tmp_meta, metadata)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half output holds space, and is never the output
        tmp_meta.unlink(missing_ok=True)
        raise
    return target, counts
