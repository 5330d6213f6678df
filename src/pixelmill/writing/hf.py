"""Hugging Face datasets output (`--format hf`): `RUNDIR/output.hf/`, saved with `save_to_disk`. Rows go through
the Parquet writer (streamed, flat memory), whose `Image` columns and `huggingface` schema metadata `datasets`
reads as they are: every step's output field is a list of `Image`s, and the input images of edit steps are
`Image`s too, so (input, output) pairs are ready for training. Images are referenced by absolute path, or
embedded as bytes with `--embed-images` (`image_columns.py`). The `pixelmill` column is a JSON string, with the
flat `pixelmill_*` columns beside it, as in Parquet."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pixelmill.errors import MissingDependency
from pixelmill.writing.image_columns import ImageLayout


def write_hf(target: Path, rundir: Path, layout: ImageLayout,
             make_rows: Callable[[], Iterable[dict[str, Any]]]) -> None:
    try:
        import datasets
    except ImportError:
        # engine/prerequisites.py checks this before anything is sent; here for callers that skip planning.
        raise MissingDependency("--format hf", ("datasets",), "pixelmill[hf]") from None
    from pixelmill.writing.parquet import write_parquet_from

    work = rundir / ".pixelmill" / "hf-export"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        write_parquet_from(work / "rows.parquet", make_rows, layout)
        data = datasets.Dataset.from_parquet(str(work / "rows.parquet"), cache_dir=str(work / "cache"))
        assert isinstance(data, datasets.Dataset)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        data.save_to_disk(str(tmp))
        del data
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
