"""What a run of the Python API returns: its counts and numbers, and its rows back.

```python
report = pixelmill.generate(df, output="out/cats", provider="emulator")
report.exit_code, report.counts.done         # 0, 3
for row in report.iter_rows(): ...           # streamed from the output file, in input order
report.to_pandas()                           # a DataFrame, one row per input row
report.to_dataset()                          # a datasets.Dataset, output images as Image features
```

Every row method reads the run's output through one function, `output_rows(path)`: JSONL line by line,
Parquet batch by batch, a saved Hugging Face dataset row by row; the `pixelmill` object comes back as a dict
whichever way the output stores it (an object, a struct, or JSON text).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixelmill.config import RESERVED_FIELD, RunConfig
from pixelmill.engine.stats import RunStats
from pixelmill.errors import ConfigError, MissingDependency
from pixelmill.reading import jsonio
from pixelmill.writing.output import OutputCounts

if TYPE_CHECKING:
    import datasets
    import pandas

EXIT_OK, EXIT_FAILED_ROWS, EXIT_ABORTED, EXIT_UNCOLLECTED = 0, 1, 3, 4
EXIT_SUBMITTED = 4  # --batch --detach: submitted; the same command again collects


@dataclass(slots=True)
class RunReport:
    output: Path  # the output file (or folder, for --format hf)
    counts: OutputCounts
    stats: RunStats
    aborted: str | None  # why the run stopped early; its rows not done are pending in the output
    abort_kind: str | None
    config: RunConfig | None = None

    @property
    def exit_code(self) -> int:
        """The command line's exit status: 0 every row done, 1 some failed, 3 the run was aborted, 4 remote jobs
        or batches still running (journaled: running the same command again collects them)."""
        if self.abort_kind == "submitted":  # --batch: batches still run at the provider; the next run collects
            return EXIT_SUBMITTED
        if self.aborted is not None:
            return EXIT_ABORTED
        if self.stats.jobs_left:
            return EXIT_UNCOLLECTED
        return EXIT_FAILED_ROWS if self.counts.failed else EXIT_OK

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """Every output row, in input order: the input row, its output field(s) and the `pixelmill` object."""
        return output_rows(self.output)

    def to_pandas(self) -> pandas.DataFrame:
        """The output rows as a pandas DataFrame (image fields hold paths relative to the run directory)."""
        try:
            import pandas
        except ImportError:
            raise MissingDependency("report.to_pandas()", ("pandas",), "pandas") from None
        return pandas.DataFrame.from_records(list(self.iter_rows()))

    def to_dataset(self) -> datasets.Dataset:
        """The output rows as a Hugging Face `datasets.Dataset` whose output fields are `Image` features (a
        list of images per row), readable from any working directory. Built on disk, in the run directory
        (`.pixelmill/dataset/`), and memory-mapped from there, like any dataset `datasets` loads."""
        try:
            import datasets
        except ImportError:
            raise MissingDependency("report.to_dataset()", ("datasets",), "pixelmill[hf]") from None
        rundir = self.config.output if self.config is not None else self.output.parent
        fields = [s.out_field for s in self.config.steps] if self.config is not None else []
        if self.output.is_dir():  # --format hf: saved with Image features already
            loaded = datasets.load_from_disk(str(self.output))
            assert isinstance(loaded, datasets.Dataset)
            return loaded
        from pixelmill.writing.parquet import write_parquet_from

        work = rundir / ".pixelmill" / "dataset"
        shutil.rmtree(work, ignore_errors=True)  # an earlier call's: a Dataset still open keeps its own map
        work.mkdir(parents=True)

        def rows() -> Iterator[dict[str, Any]]:
            for row in self.iter_rows():
                for name in fields:
                    if name in row:
                        row[name] = [_image(rundir, value) for value in _listed(row[name])]
                yield row

        write_parquet_from(work / "rows.parquet", rows)
        data = datasets.Dataset.from_parquet(str(work / "rows.parquet"), cache_dir=str(work / "cache"))
        assert isinstance(data, datasets.Dataset)
        for name in fields:
            if name in data.column_names:
                data = data.cast_column(name, datasets.Sequence(datasets.Image()))
        return data


def output_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of an output (`output.jsonl`, `output.parquet`, or the `output.hf` folder), streamed; the
    `pixelmill` object as a dict."""
    if path.is_dir():
        yield from _saved_rows(path)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rundir = path.parent.resolve()
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield _object(_paths(row, rundir))
    elif path.suffix == ".jsonl":
        with path.open("rb") as f:
            for line in f:
                if line.strip():
                    yield jsonio.loads(line)
    else:
        raise ConfigError(f"{path} is not a pixelmill output (output.jsonl, output.parquet or output.hf)")


def _saved_rows(path: Path) -> Iterator[dict[str, Any]]:
    import datasets

    data = datasets.load_from_disk(str(path))
    assert isinstance(data, datasets.Dataset)
    for name, feature in data.features.items():  # images as {bytes, path}, never decoded to read a row
        if isinstance(feature, datasets.Image):
            data = data.cast_column(name, datasets.Image(decode=False))
        elif isinstance(getattr(feature, "feature", None), datasets.Image):  # a list of images
            data = data.cast_column(name, datasets.Sequence(datasets.Image(decode=False)))
    for row in data:
        yield _object(dict(row))


def _paths(row: dict[str, Any], rundir: Path) -> dict[str, Any]:
    """A Parquet row's `Image` structs (`{bytes, path}`: writing/image_columns.py) as the JSONL output holds
    images: paths relative to the run directory (absolute outside it), data URLs for bytes without a file."""
    from pixelmill.writing.export import image_reference

    for name, value in row.items():
        if isinstance(value, list) and value and all(_is_struct(v) for v in value):
            row[name] = [image_reference(v, rundir) for v in value]
        elif _is_struct(value):
            row[name] = image_reference(value, rundir)
    return row


def _is_struct(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"bytes", "path"}


def _object(row: dict[str, Any]) -> dict[str, Any]:
    value = row.get(RESERVED_FIELD)
    if isinstance(value, str):  # Parquet and saved datasets may keep the object as JSON text (DESIGN 2.7)
        row[RESERVED_FIELD] = jsonio.loads(value.encode())
    return row


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _image(rundir: Path, value: Any) -> dict[str, Any]:
    """An output image as the {bytes, path} an `Image` feature stores: a path relative to RUNDIR made
    absolute, a data URL (--embed-images) decoded, a struct (already {bytes, path}) kept."""
    if isinstance(value, dict):
        path = value.get("path")
        if value.get("bytes") is None and isinstance(path, str) and not Path(path).is_absolute():
            return {"bytes": None, "path": str((rundir / path).resolve())}
        return {"bytes": value.get("bytes"), "path": path}
    text = str(value)
    if text.startswith("data:"):
        import pybase64

        return {"bytes": pybase64.b64decode(text.partition(",")[2]), "path": None}
    return {"bytes": None, "path": str((rundir / text).resolve())}
