"""CSV sources, streamed row by row: the first row names the columns; each later row is one record.

A row that cannot be a record is a failed record naming its row and line, and the rows after it are read:
more values than the header has columns, text that is not UTF-8 (kept as surrogates while reading), a line
longer than `MAX_LINE_CHARS` or a field the csv module refuses. Fields may be as long as a line (a data URL of
a large image in a cell is ordinary), so the csv module's own field limit (128 KiB) is raised to that bound.
A row with fewer values than the header gets None for the missing columns, as `csv.DictReader` does. Only a
header row that cannot be read is a `ConfigError` (found before any row is sent).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pixelmill.errors import ConfigError
from pixelmill.reading.rows import Record, checked

MAX_LINE_CHARS = 256 * 1024 * 1024  # as JSONL's MAX_LINE_BYTES: longer is a failed row, not a memory blow-up


def read_csv(path: Path) -> Iterator[Record]:
    if csv.field_size_limit() < MAX_LINE_CHARS:  # process-wide; only ever raised, never lowered
        csv.field_size_limit(MAX_LINE_CHARS)
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        lines = _BoundedLines(f)
        reader = csv.reader(lines)
        header: list[str] | None = None
        index = 0
        while True:
            lines.too_long = False
            try:
                values = next(reader)
                problem = None
            except StopIteration:
                return
            except csv.Error as exc:
                values, problem = [], f"cannot be read as CSV ({exc})"
            if lines.too_long:
                problem = f"longer than {MAX_LINE_CHARS} characters"
            if header is None:
                if problem is not None:  # found before any row is read, so before anything is sent
                    raise ConfigError(f"{path}: the header row {problem}")
                header = values or None  # blank lines before the header are skipped
                continue
            if not values and problem is None:
                continue  # a blank line is not a row, as in csv.DictReader
            where = f"row {index} (line {reader.line_num})"  # 0-based, as record keys (row000001)
            if problem is None and len(values) > len(header):
                problem = (f"has {len(values)} values but the header names {len(header)} columns "
                           "(a comma in a value that is not quoted?)")
            if problem is not None:
                yield Record(index, None, reader.line_num, f"{where}: {problem}")
            else:
                row: dict[str, str | None] = dict(zip(header, values, strict=False))
                for name in header[len(values) :]:
                    row.setdefault(name, None)
                yield checked(index, row, where, reader.line_num)
            index += 1


class _BoundedLines:
    """The lines of a text file for the csv reader, none longer than MAX_LINE_CHARS: the rest of an oversized
    line is skipped (never held in memory) and `too_long` is set, so the row it belongs to fails."""

    def __init__(self, f: IO[str]) -> None:
        self.f = f
        self.too_long = False

    def __iter__(self) -> _BoundedLines:
        return self

    def __next__(self) -> str:
        line = self.f.readline(MAX_LINE_CHARS + 1)
        if not line:
            raise StopIteration
        if len(line) > MAX_LINE_CHARS and not line.endswith(("\n", "\r")):
            self.too_long = True
            while True:
                rest = self.f.readline(1024 * 1024)
                if not rest or rest.endswith(("\n", "\r")):
                    break
            return "\n"
        return line
