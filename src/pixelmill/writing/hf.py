"""Hugging Face datasets output (`--format hf`): `RUNDIR/output.hf/`, saved with `save_to_disk`, the image
columns as `Image` features (a list of images per row). Images are referenced by path (absolute, into
RUNDIR/images), or embedded as bytes with `--embed-images`. The `pixelmill` column is a JSON string, as in
Parquet."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pixelmill.errors import MissingDependency


def write_hf(target: Path, rundir: Path, image_fields: list[str], embed: bool,
             make_rows: Callable[[], Iterable[dict[str, Any]]]) -> None:
    """Rows go through a Parquet file (streamed, flat memory), which `datasets` then reads and casts."""
    try:
        import datasets
    except ImportError:
        # engine/prerequisites.py checks this before anything is sent; here for callers that skip planning.
        raise MissingDependency("--format hf", ("datasets",), "pixelmill[hf]") from None
    from pixelmill.writing.parquet import write_parquet_from

    def rows() -> Iterable[dict[str, Any]]:
        for row in make_rows():
            row = dict(row)
            for name in image_fields:
                row[name] = [_image(rundir, value, embed) for value in row.get(name) or []]
            yield row

    work = rundir / ".pixelmill" / "hf-export"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        write_parquet_from(work / "rows.parquet", rows)
        data = datasets.Dataset.from_parquet(str(work / "rows.parquet"), cache_dir=str(work / "cache"))
        assert isinstance(data, datasets.Dataset)
        for name in image_fields:
            if name in data.column_names:
                data = data.cast_column(name, datasets.Sequence(datasets.Image()))
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        data.save_to_disk(str(tmp))
        del data
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _image(rundir: Path, value: str, embed: bool) -> dict[str, Any]:
    if value.startswith("data:"):
        import pybase64

        return {"bytes": pybase64.b64decode(value.partition(",")[2]), "path": None}
    path = rundir / value
    return {"bytes": path.read_bytes(), "path": path.name} if embed else {"bytes": None, "path": str(path)}
