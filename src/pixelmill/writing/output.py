"""The output dataset, rebuilt from the source and the journal at any time.

The source is read again beside the journal's rows (both in row order: a merge, memory flat in the dataset's
size), and every input row is written: unchanged, plus its output field(s) and the `pixelmill` object. The file
is written under a temporary name and renamed, so a crash never leaves a half output.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelmill.config import RunConfig
from pixelmill.reading import jsonio
from pixelmill.reading.images import data_url
from pixelmill.reading.records import Record, read_records
from pixelmill.writing.journal import Journal, StepState

_PRIVATE = ("calls", "_usages", "target")  # journal bookkeeping, not for the user


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


def output_rows(config: RunConfig, journal: Journal, counts: OutputCounts) -> Iterator[dict[str, Any]]:
    steps = [s.name for s in config.steps]
    results = journal.iter_results(steps)
    pending_result = next(results, None)
    for record in _records(config):
        while pending_result is not None and pending_result[0] < record.index:
            pending_result = next(results, None)
        states: dict[str, StepState] = {}
        if pending_result is not None and pending_result[0] == record.index \
                and pending_result[1] == record.digest():  # results of a row that has changed are not its own
            states = pending_result[2]
        counts.rows += 1
        yield _row(config, record, states, counts)


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
    counts = OutputCounts()
    rundir = config.output
    rundir.mkdir(parents=True, exist_ok=True)
    if config.format == "parquet":
        from pixelmill.writing.parquet import write_parquet_from

        target = rundir / "output.parquet"
        passes: list[OutputCounts] = []

        def rows() -> Iterator[dict[str, Any]]:
            passes.append(OutputCounts())
            return output_rows(config, journal, passes[-1])

        write_parquet_from(target, rows)
        return target, passes[-1]
    if config.format == "hf":
        from pixelmill.writing.hf import write_hf

        hf_passes: list[OutputCounts] = []

        def hf_rows() -> Iterator[dict[str, Any]]:
            hf_passes.append(OutputCounts())
            rows_config = config.model_copy(update={"embed_images": False})
            return output_rows(rows_config, journal, hf_passes[-1])

        target = rundir / "output.hf"
        write_hf(target, rundir, [s.out_field for s in config.steps], config.embed_images, hf_rows)
        return target, hf_passes[-1]
    target = rundir / "output.jsonl"
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as f:
        for row in output_rows(config, journal, counts):
            f.write(jsonio.dumps(row, newline=True))
    os.replace(tmp, target)
    return target, counts
