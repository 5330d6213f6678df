"""`FileStorage`: DataFlow's step files.

Step 0 reads the first entry file (jsonl, json, csv, parquet, or an `hf:` dataset); step N > 0 reads
`{cache_path}/{file_name_prefix}_step{N}.{cache_type}`; what step N writes is step N + 1's file. `step()`
moves to the next step and returns the storage itself, as in DataFlow, so that
`op.run(storage=self.storage.step(), ...)` chains operators.

Differences from DataFlow, on purpose: files are read as a stream and written under a temporary name then
renamed (a crash never leaves half a step file); pickle is refused (loading a pickle runs code); a line that
cannot be parsed is reported with its number instead of failing the whole read.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from pixelmill.errors import ConfigError
from pixelmill.reading.records import Record, read_records

CACHE_TYPES = ("jsonl", "json", "csv", "parquet")


class DataFlowConfigError(ConfigError, ValueError):
    """A configuration error of the DataFlow layer. Also a `ValueError`, which is what DataFlow raised, so that
    code written against it keeps catching it."""


class FileStorage:
    def __init__(
        self,
        first_entry_file_name: str,
        cache_path: str = "./cache",
        file_name_prefix: str = "dataflow_cache",
        cache_type: str = "jsonl",
    ) -> None:
        if cache_type not in CACHE_TYPES:
            hint = " (pickle is not supported: loading a pickle runs code; use jsonl or parquet)" \
                if cache_type == "pickle" else ""
            raise DataFlowConfigError(f"cache_type {cache_type!r} is not one of {', '.join(CACHE_TYPES)}{hint}")
        self.first_entry_file_name = first_entry_file_name
        self.cache_path = cache_path
        self.file_name_prefix = file_name_prefix
        self.cache_type = cache_type
        self.operator_step = -1

    def step(self) -> FileStorage:
        """Move to the next step (the first call moves to step 0, which reads the first entry file)."""
        self.operator_step += 1
        return self

    def reset(self) -> FileStorage:
        self.operator_step = -1
        return self

    # ------------------------------------------------------------ where the current step reads and writes
    def current_step(self) -> int:
        """The step an operator runs as (0: it reads the first entry file)."""
        if self.operator_step < 0:
            raise DataFlowConfigError("the storage has no current step: pass `storage.step()` to the operator "
                                      "(the first call selects the first entry file)")
        return self.operator_step

    def step_file(self, step: int) -> Path:
        if step == 0:
            return Path(self.first_entry_file_name)
        return Path(self.cache_path) / f"{self.file_name_prefix}_step{step}.{self.cache_type}"

    def input_path(self) -> Path:
        """The file the current step reads."""
        return self.step_file(self.current_step())

    def output_path(self) -> Path:
        """The file the current step writes (the next step's input)."""
        return self.step_file(self.current_step() + 1)

    # ------------------------------------------------------------ reading
    def iter_records(self) -> Iterator[Record]:
        """The current step's rows as a stream, bad lines included (`record.data` is None, `record.error` says
        why)."""
        path = self.input_path()
        if not str(path).startswith("hf:") and not path.exists():
            if self.operator_step == 0:
                raise DataFlowConfigError(f"the first entry file {path} does not exist")
            raise DataFlowConfigError(f"step {self.operator_step}'s file {path} does not exist: run the steps "
                                      "before it first")
        return read_records(path)

    def read(self, output_type: str = "dataframe") -> Any:
        """The current step's rows, whole: a pandas DataFrame (`"dataframe"`) or a list of dicts (`"dict"`)."""
        if output_type not in ("dataframe", "dict"):
            raise DataFlowConfigError(f"output_type {output_type!r}: use 'dataframe' or 'dict'")
        rows = []
        for record in self.iter_records():
            if record.data is None:
                raise DataFlowConfigError(f"{self.input_path()}: {record.error}")
            rows.append(record.data)
        if output_type == "dict":
            return rows
        try:
            import pandas as pd  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            raise DataFlowConfigError("read(output_type='dataframe') needs pandas: pip install pandas, or use "
                                      "output_type='dict'") from None
        return pd.DataFrame(rows)

    # ------------------------------------------------------------ writing
    def write(self, data: Any) -> str:
        """Write the next step's file from a list of dicts or a pandas DataFrame; returns its path."""
        if hasattr(data, "to_dict") and not isinstance(data, dict):
            rows = data.to_dict(orient="records")
        elif isinstance(data, list) and all(isinstance(r, dict) for r in data):
            rows = data
        else:
            raise DataFlowConfigError(f"write() takes a list of dicts or a pandas DataFrame, not {type(data).__name__}")
        return str(self.write_rows(lambda: rows))

    def write_rows(self, make_rows: Callable[[], Iterable[dict[str, Any]]], *,
                   json_columns: Collection[str] = ()) -> Path:
        """Write the next step's file from rows that `make_rows` yields (called twice for csv and parquet, which
        need every column before the first row). Atomic: a temporary file, then a rename. In Parquet,
        `json_columns` hold JSON text (objects whose shape varies from row to row)."""
        target = self.output_path()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        if self.cache_type == "parquet":
            _write_parquet(tmp, make_rows, set(json_columns))
        else:
            {"jsonl": _write_jsonl, "json": _write_json, "csv": _write_csv}[self.cache_type](tmp, make_rows)
        os.replace(tmp, target)
        return target


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def _write_jsonl(path: Path, make_rows: Callable[[], Iterable[dict[str, Any]]]) -> None:
    with open(path, "wb") as f:
        for row in make_rows():
            f.write(_dumps(row) + b"\n")


def _write_json(path: Path, make_rows: Callable[[], Iterable[dict[str, Any]]]) -> None:
    with open(path, "wb") as f:
        f.write(b"[")
        for i, row in enumerate(make_rows()):
            f.write((b",\n" if i else b"\n") + _dumps(row))
        f.write(b"\n]\n")


def _flat(value: Any) -> Any:
    """A cell for a flat format: lists and objects as JSON text (read back as such)."""
    if isinstance(value, list | tuple | dict):
        return _dumps(value).decode()
    return value


def _write_csv(path: Path, make_rows: Callable[[], Iterable[dict[str, Any]]]) -> None:
    columns: dict[str, None] = {}
    for row in make_rows():
        columns.update(dict.fromkeys(row))
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in make_rows():
            writer.writerow({k: _flat(v) for k, v in row.items()})


def _write_parquet(path: Path, make_rows: Callable[[], Iterable[dict[str, Any]]], json_columns: set[str]) -> None:
    """Parquet with the union schema of every row (a first pass); `json_columns` as JSON text, as the
    `pixelmill` column always is in Parquet (DESIGN 2.7)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def batches() -> Iterator[list[dict[str, Any]]]:
        batch: list[dict[str, Any]] = []
        for row in make_rows():
            row = {k: (_dumps(v).decode() if k in json_columns and v is not None else v) for k, v in row.items()}
            batch.append(row)
            if len(batch) >= 1024:
                yield batch
                batch = []
        if batch:
            yield batch

    schema: Any = None
    for batch in batches():
        found = pa.Table.from_pylist(batch).schema
        schema = found if schema is None else pa.unify_schemas([schema, found], promote_options="permissive")
    if schema is None:
        schema = pa.schema([])
    with pq.ParquetWriter(path, schema) as writer:
        for batch in batches():
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
