"""Parquet output. The `pixelmill` column holds the same object as JSONL, as a JSON string (DESIGN 2.7).

Rows are converted in batches; the schema is the union of every batch's schema (types promoted where they
differ), found in a first pass over the rows so that memory stays flat in the dataset's size.

Every row must be written, whatever its values: a column whose values Arrow cannot hold in one type (a prompt
that is text in one row and a number in another, an integer beyond 64 bits, batches whose types cannot be
unified) becomes a text column, where text stays as it is and any other value is written as JSON. A failed row
thus never stops the output of the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pixelmill.reading import jsonio

BATCH = 1024


def _batches(rows: Iterable[dict[str, Any]], as_text: set[str]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        row = dict(row)
        row["pixelmill"] = jsonio.dumps(row.get("pixelmill")).decode()
        for name in as_text & row.keys():
            row[name] = _text(row[name])
        batch.append(row)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return jsonio.SURROGATE.sub("\ufffd", value)
    return jsonio.dumps(value).decode()


def _batch_schema(batch: list[dict[str, Any]], as_text: set[str]) -> Any:
    """The schema of one batch: every column any of its rows has (not only the first row's, as
    `Table.from_pylist` would: a failed row holds only `pixelmill`), adding to `as_text` each column Arrow cannot
    convert as it is."""
    import pyarrow as pa

    fields = []
    for name in dict.fromkeys(name for row in batch for name in row):
        try:
            fields.append(pa.field(name, pa.array([row.get(name) for row in batch]).type))
        except (pa.ArrowException, OverflowError, ValueError, TypeError):
            as_text.add(name)
            fields.append(pa.field(name, pa.string()))
    return pa.schema(fields)


def _unify(schema: Any, found: Any, as_text: set[str]) -> Any:
    import pyarrow as pa

    try:
        return pa.unify_schemas([schema, found], promote_options="permissive")
    except (pa.ArrowException, TypeError):
        fields = {f.name: f for f in schema}
        for f in found:
            if f.name not in fields:
                fields[f.name] = f
                continue
            try:
                fields[f.name] = pa.unify_schemas([pa.schema([fields[f.name]]), pa.schema([f])],
                                                  promote_options="permissive").field(0)
            except (pa.ArrowException, TypeError):
                as_text.add(f.name)
                fields[f.name] = pa.field(f.name, pa.string())
        return pa.schema(list(fields.values()))


def write_parquet_from(target: Path, make_rows: Callable[[], Iterable[dict[str, Any]]]) -> None:
    """Write rows produced (twice) by `make_rows`: once to learn the schema, once to write."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema: Any = None
    as_text: set[str] = set()
    for batch in _batches(make_rows(), set()):
        found = _batch_schema(batch, as_text)
        schema = found if schema is None else _unify(schema, found, as_text)
    if schema is None:
        schema = pa.schema([("pixelmill", pa.string())])
    # A column found to need text in a later batch is text in every batch.
    schema = pa.schema([pa.field(f.name, pa.string()) if f.name in as_text else f for f in schema])
    tmp = target.with_name(f".{target.name}.tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for batch in _batches(make_rows(), as_text):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    os.replace(tmp, target)
