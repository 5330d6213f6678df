"""In-memory inputs of the Python API: an iterable of dicts, a pandas DataFrame, a pyarrow Table or a
`datasets.Dataset`, spooled once into the run directory and then read like any source file.

Why a spool: the engine reads its source twice (to send the rows, then to write the output in input order beside
the journal), a generator can be read only once, and a resume must find the same rows again. Written under the
run's lock as `RUNDIR/.pixelmill/input.jsonl` (an iterable of dicts: one JSON line per row) or
`RUNDIR/.pixelmill/input.parquet` (Arrow data: batch by batch, types and binary columns kept), the spool makes
an in-memory input a file source in every respect: rows are streamed (never held twice in memory), keyed by
`id_field` or their content exactly as a file's rows are, so calling again with the same data (a new generator
over it included) sends nothing that is done, and `status` shows a command that resumes the run from the spool.
Each call writes the spool again from the data it is given (atomically: a temporary file, then a rename).

The rows are the user's, unchanged; relative image paths in them resolve against the working directory (the
configuration's `input_dir`), not against the spool's folder.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pixelmill.errors import ConfigError
from pixelmill.reading import jsonio

SPOOL_NAME = "input"  # RUNDIR/.pixelmill/input.jsonl | input.parquet
BATCH_ROWS = 1024  # rows converted and written at a time: memory stays flat in the size of the input


def kind_of(data: Any) -> str | None:
    """What kind of in-memory input `data` is ("rows", "dataframe", "table", "dataset"), or None for a path.
    Checked by type name, so that pandas, pyarrow and datasets are imported only when the data is theirs."""
    if isinstance(data, str | os.PathLike):
        return None
    module = type(data).__module__.split(".", 1)[0]
    name = type(data).__name__
    if module == "pandas" and name == "DataFrame":
        return "dataframe"
    if module == "pyarrow" and name == "Table":
        return "table"
    if module == "datasets" and name == "Dataset":
        return "dataset"
    if module == "datasets" and name in ("DatasetDict", "IterableDatasetDict"):
        raise ConfigError(f"the input is a {name} of several splits ({', '.join(data)}); "
                          "pass one split, e.g. dataset['train']")
    if isinstance(data, Mapping | bytes | bytearray):
        raise ConfigError(f"the input is a {type(data).__name__}: give a path, an iterable of dicts (one per row), "
                          "a pandas DataFrame, a pyarrow Table or a datasets.Dataset")
    if isinstance(data, Iterable):
        return "rows"
    raise ConfigError(f"the input is a {type(data).__name__}: give a path, an iterable of dicts (one per row), "
                      "a pandas DataFrame, a pyarrow Table or a datasets.Dataset")


def spool_path(rundir: Path, kind: str) -> Path:
    """Where an input of `kind` is spooled in `rundir`."""
    return rundir / ".pixelmill" / f"{SPOOL_NAME}.{'jsonl' if kind == 'rows' else 'parquet'}"


def write_spool(data: Any, kind: str, path: Path, *, limit: int | None = None) -> int:
    """Write `data` (of `kind`, from `kind_of`) to `path`, at most `limit` rows; returns the rows written.
    The caller holds the run's lock: no other process reads or writes this run directory meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if kind == "rows":
            count = _write_jsonl(iter(data), tmp, limit)
        else:
            count = _write_parquet(_batches(data, kind, limit), tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    # The spool of another kind, from an earlier call on this run directory, would only mislead.
    for other in ("rows", "table"):
        stale = spool_path(path.parent.parent, other)
        if stale != path:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
    return count


def _write_jsonl(rows: Iterator[Any], path: Path, limit: int | None) -> int:
    count = 0
    with path.open("wb") as f:
        for row in rows if limit is None else itertools.islice(rows, limit):
            # A row that is not a mapping is written as it is: reading it back makes it one failed row
            # ("not a JSON object"), never a gap in the output.
            f.write(jsonio.dumps(dict(row) if isinstance(row, Mapping) else row, newline=True))
            count += 1
    return count


def _batches(data: Any, kind: str, limit: int | None) -> Iterator[Any]:
    """Arrow record batches of at most BATCH_ROWS rows: views of the data where Arrow allows (a Table, a
    Dataset's memory-mapped Arrow files), one converted slice at a time for a DataFrame."""
    import pyarrow as pa

    if kind == "table":
        table = data if limit is None else data.slice(0, limit)
        yield from table.to_batches(max_chunksize=BATCH_ROWS)
    elif kind == "dataset":
        rows = len(data) if limit is None else min(limit, len(data))
        arrow = data.with_format("arrow")
        for start in range(0, rows, BATCH_ROWS):
            # Slicing a Dataset honours its indices (a select or shuffle) and reads only that slice.
            yield from arrow[start:min(start + BATCH_ROWS, rows)].to_batches()
    else:
        frame = data if limit is None else data.iloc[:limit]
        try:
            # One schema for the whole frame, so that every slice is written with the same column types (a
            # slice whose column holds only None would otherwise be typed `null`).
            schema = pa.Schema.from_pandas(frame, preserve_index=None)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ConfigError(f"the DataFrame cannot be read as a table: {exc}. Give each column one type, or "
                              "pass its rows as a list of dicts (df.to_dict('records'))") from None
        for start in range(0, len(frame), BATCH_ROWS):
            chunk = frame.iloc[start:start + BATCH_ROWS]
            try:
                yield pa.RecordBatch.from_pandas(chunk, schema=schema, preserve_index=None)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ConfigError(f"the DataFrame's rows {start}-{start + len(chunk) - 1} cannot be read as a "
                                  f"table: {exc}. Give each column one type, or pass its rows as a list of dicts "
                                  "(df.to_dict('records'))") from None


def _write_parquet(batches: Iterator[Any], path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    count = 0
    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = None
    try:
        for batch in batches:
            if writer is None:
                schema = batch.schema
                writer = pq.ParquetWriter(str(path), schema)
            writer.write_batch(batch.cast(schema) if not batch.schema.equals(schema) else batch)
            count += batch.num_rows
        if writer is None:  # no rows: an empty file the reader accepts
            pq.write_table(pa.table({}), str(path))
    finally:
        if writer is not None:
            writer.close()
    return count
