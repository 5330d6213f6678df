"""Parquet output. The `pixelmill` column holds the same object as JSONL, as a JSON string (DESIGN 2.7).

Rows are converted in batches; the schema is the union of every batch's schema (types promoted where they
differ), found in a first pass over the rows so that memory stays flat in the dataset's size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

BATCH = 1024


def _batches(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        row = dict(row)
        row["pixelmill"] = orjson.dumps(row.get("pixelmill"), default=str).decode()
        batch.append(row)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def write_parquet_from(target: Path, make_rows: Callable[[], Iterable[dict[str, Any]]]) -> None:
    """Write rows produced (twice) by `make_rows`: once to learn the schema, once to write."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema: Any = None
    for batch in _batches(make_rows()):
        found = pa.Table.from_pylist(batch).schema
        schema = found if schema is None else pa.unify_schemas([schema, found], promote_options="permissive")
    if schema is None:
        schema = pa.schema([("pixelmill", pa.string())])
    tmp = target.with_name(f".{target.name}.tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for batch in _batches(make_rows()):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    os.replace(tmp, target)
