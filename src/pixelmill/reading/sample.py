"""A bounded sample of a source's first rows: what the preflight (engine/preflight.py) checks the configuration
against before anything is sent.

The sample is read the way a run reads (`read_records`, streamed) and stops at `SAMPLE_ROWS` rows or
`SAMPLE_BYTES` of row content, whichever comes first (always at least one row): a large file is never read
whole, and a file of rows carrying embedded images stops after a few of them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelmill.reading import jsonio
from pixelmill.reading.records import read_records

SAMPLE_ROWS = 100
SAMPLE_BYTES = 1 << 20


@dataclass(slots=True)
class Sample:
    """The readable rows among the first records of a source."""

    source: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0  # records read, unreadable ones included
    complete: bool = False  # the source (or its --limit) ended within the sample

    def fields(self) -> list[str]:
        """Every field of the sampled rows, in the order first seen."""
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def none_of(self) -> str:
        """How a message says "not in any sampled row": "no row of data.csv" when the sample is the whole
        source, else "none of the first 100 rows of data.csv"."""
        name = self.source.name or str(self.source)
        if self.complete:
            return f"no row of {name}"
        n = len(self.rows)
        return f"none of the first {n} row{'s' if n != 1 else ''} of {name}"


def first_rows(source: Path, fmt: str | None = None, *, limit: int | None = None, max_rows: int = SAMPLE_ROWS,
               max_bytes: int = SAMPLE_BYTES) -> Sample:
    """The first rows of `source` (at most `limit`, the run's --limit), within the bounds. Raises the reader's
    `ConfigError` when the source cannot be opened."""
    sample = Sample(source)
    cap = max_rows if limit is None else min(max_rows, limit)
    size = 0
    records = read_records(source, fmt)
    with contextlib.closing(records):
        if cap <= 0:
            sample.complete = True
            return sample
        for record in records:
            sample.records += 1
            if record.data is not None:
                sample.rows.append(record.data)
                size += len(jsonio.dumps(record.data))
            if sample.records >= cap or size >= max_bytes:
                sample.complete = limit is not None and sample.records >= limit
                return sample
        sample.complete = True
    return sample
