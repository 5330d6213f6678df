"""Parquet output. The `pixelmill` column holds the same object as JSONL, as a JSON string (DESIGN 2.7); flat
`pixelmill_*` columns beside it (`meta_columns.py`) say each row's status, cost and error kind for SQL and pandas.

Image columns (`image_columns.py`: every step's output, and the input images of edit steps) are `Image` structs
`{bytes, path}` with the `huggingface` schema metadata that `datasets` writes, so `load_dataset("parquet")`, the
Hub's viewer and `datasets.Dataset.from_parquet` decode them as images; embedded or referenced per
`--embed-images`.

Rows are converted in batches; the schema is the union of every batch's schema (types promoted where they
differ), found in a first pass over the rows so that memory stays flat in the dataset's size. Image columns have a
fixed type, so the first pass reads no image file; the second reads them a batch at a time, and a batch closes
early once its embedded bytes pass `BATCH_BYTES`.

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

import orjson

from pixelmill.reading import jsonio
from pixelmill.writing.image_columns import ImageColumn, ImageLayout, arrow_type, features_metadata, is_image_ref
from pixelmill.writing.meta_columns import flat_meta, meta_names

BATCH = 1024
BATCH_BYTES = 64 * 1024 * 1024  # embedded image bytes held at once


def _rows(rows: Iterable[dict[str, Any]], as_text: set[str], layout: ImageLayout | None) -> Iterator[dict[str, Any]]:
    """Rows as Parquet takes them: `pixelmill` as JSON text (and the flat columns from it), text columns as
    text. Image columns are left as they are."""
    for row in rows:
        row = dict(row)
        meta = row.get("pixelmill")
        if isinstance(meta, str):  # a row read back from Parquet: the object is JSON text already
            text, meta = meta, _parsed(meta)
        else:
            text = jsonio.dumps(meta).decode()
        row["pixelmill"] = text
        if layout is not None:
            row.update(flat_meta(meta, layout.steps))
        for name in as_text & row.keys():
            row[name] = _text(row[name])
        yield row


def _parsed(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _batches(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _image_batches(rows: Iterable[dict[str, Any]], columns: list[ImageColumn],
                   embed: bool) -> Iterator[list[dict[str, Any]]]:
    """Batches with their image columns as `Image` structs, files read for this batch only: a batch closes at
    `BATCH` rows or once its embedded bytes pass `BATCH_BYTES`."""
    batch: list[dict[str, Any]] = []
    held = 0
    for row in rows:
        for column in columns:
            if column.name in row:
                row[column.name] = cell = column.cell(row[column.name], embed)
                held += _bytes_of(cell)
        batch.append(row)
        if len(batch) >= BATCH or held >= BATCH_BYTES:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


def _bytes_of(cell: Any) -> int:
    cells = cell if isinstance(cell, list) else [cell]
    return sum(len(c["bytes"]) for c in cells if c is not None and c["bytes"] is not None)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return jsonio.SURROGATE.sub("\ufffd", value)
    return jsonio.dumps(value).decode()


def _batch_schema(batch: list[dict[str, Any]], as_text: set[str], fixed: set[str]) -> Any:
    """The schema of one batch: every column any of its rows has (not only the first row's, as
    `Table.from_pylist` would: a failed row holds only `pixelmill`), adding to `as_text` each column Arrow cannot
    convert as it is. Columns in `fixed` get a placeholder (their type is set by the caller)."""
    import pyarrow as pa

    fields = []
    for name in dict.fromkeys(name for row in batch for name in row):
        if name in fixed:
            fields.append(pa.field(name, pa.null()))
            continue
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


def _survey_inputs(batch: list[dict[str, Any]], inputs: dict[str, ImageColumn], seen_list: set[str],
                   not_images: set[str]) -> None:
    """What the first pass learns of input image columns: whether any row holds a list (then the column is a list
    of images) and whether any value cannot stand for images (then the column is left as it is)."""
    for row in batch:
        for name in inputs.keys() - not_images:
            if name in row:
                value = row[name]
                if not is_image_ref(value):
                    not_images.add(name)
                elif isinstance(value, list | tuple):
                    seen_list.add(name)


def write_parquet_from(target: Path, make_rows: Callable[[], Iterable[dict[str, Any]]],
                       layout: ImageLayout | None = None) -> None:
    """Write rows produced (twice) by `make_rows`: once to learn the schema, once to write. With a `layout`,
    its image columns are written as `Image` structs and the flat `pixelmill_*` columns are added."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    outputs = {c.name: c for c in layout.outputs} if layout is not None else {}
    inputs = {c.name: c for c in layout.inputs if c.name not in outputs} if layout is not None else {}
    meta = dict(meta_names(layout.steps)) if layout is not None else {}
    schema: Any = None
    as_text: set[str] = set()
    seen_list: set[str] = set()
    not_images: set[str] = set()
    for batch in _batches(_rows(make_rows(), set(), layout)):
        _survey_inputs(batch, inputs, seen_list, not_images)
        found = _batch_schema(batch, as_text, {*outputs, *inputs.keys() - not_images, *meta})
        schema = found if schema is None else _unify(schema, found, as_text)
    if schema is None:
        schema = pa.schema([("pixelmill", pa.string())])
    columns = [*outputs.values()]
    for name in inputs.keys() - not_images:
        if name in schema.names:
            columns.append(ImageColumn(inputs[name].name, inputs[name].base, inputs[name].policy,
                                       many=name in seen_list))
    types = {c.name: arrow_type(c) for c in columns if c.name in schema.names}
    types.update({name: getattr(pa, kind)() for name, kind in meta.items()})
    # A column found to need text in a later batch is text in every batch.
    schema = pa.schema([pa.field(f.name, types[f.name]) if f.name in types else
                        pa.field(f.name, pa.string()) if f.name in as_text else f for f in schema])
    images = [c for c in columns if c.name in schema.names]
    if images:
        import json

        # As `datasets` writes it (`Features.arrow_schema`): json.dumps, read back with json.loads.
        schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": features_metadata(images)}})})
    embed = layout.embed if layout is not None else False
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in _image_batches(_rows(make_rows(), as_text - types.keys(), layout), images, embed):
                table = pa.Table.from_pylist(batch, schema=schema)
                batch.clear()  # its bytes are in the table now: not held while the next batch is read
                writer.write_table(table)
                del table
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half output holds space, and is never the output
        raise
