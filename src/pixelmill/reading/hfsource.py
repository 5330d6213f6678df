"""Hugging Face datasets as sources: `hf:name:split` from the hub (streamed), or a folder saved with
`save_to_disk`. Image columns arrive as {"bytes", "path"} dicts, which input-image loading understands.

A saved folder's rows are counted from its own metadata (`count_saved_rows`: `state.json` names the Arrow files,
whose record batch headers hold the row counts), never by loading the dataset a second time: `datasets` is not
safe to load from two threads at once (its progress bars share a lock that one load may delete while the other
uses it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pixelmill.errors import ConfigError, MissingDependency
from pixelmill.reading.rows import Record, checked

# What makes a folder a saved dataset (one split), or a saved dataset of several splits.
SAVED_DATASET_MARKS = ("dataset_info.json", "dataset_dict.json")
NEEDED_BY = "a Hugging Face dataset as the source"
INSTALL = "pixelmill[hf]"


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / mark).exists() for mark in SAVED_DATASET_MARKS)


def read_hf(source: str) -> Iterator[Record]:
    """Every row of the dataset, in order."""
    try:
        import datasets
    except ImportError:
        raise MissingDependency(NEEDED_BY, ("datasets",), INSTALL) from None
    if source.startswith("hf:"):
        name, _, split = source[3:].partition(":")
        try:
            data: Any = datasets.load_dataset(name, split=split or "train", streaming=True)
        except Exception as exc:  # the hub client raises many types; all mean "cannot read it"
            raise ConfigError(f"cannot load {name!r} (split {split or 'train'!r}) from the Hugging Face hub: "
                              f"{type(exc).__name__}: {exc}. Check the name and the network, or save the "
                              "dataset to disk and point `source` at that folder.") from None
    else:
        loaded = datasets.load_from_disk(source)
        if isinstance(loaded, datasets.DatasetDict):
            raise ConfigError(f"{source} holds several splits ({', '.join(loaded)}); point at one split's folder")
        data = loaded
    data = _images_as_dicts(data)
    for index, row in enumerate(data):
        yield checked(index, dict(row), f"row {index}")


def _images_as_dicts(data: Any) -> Any:
    """Keep `Image` columns undecoded ({"bytes", "path"}), so no pixels are decoded to read a row."""
    import datasets

    features = getattr(data, "features", None) or {}
    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            data = data.cast_column(name, datasets.Image(decode=False))
    return data


def count_saved_rows(folder: Path) -> int | None:
    """The rows of a dataset saved with `save_to_disk`, from its metadata alone (no `datasets` import, no load):
    the Arrow files `state.json` lists (its indices files when the dataset was saved with a selection), counted
    from their record batch headers through a memory map. None when the folder is not one saved split."""
    import pyarrow as pa

    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        files = state.get("_indices_data_files") or state["_data_files"]
        names = [str(entry["filename"]) for entry in files]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    total = 0
    for name in names:
        path = folder / name
        if path.parent != folder:  # a name that leaves the folder is not a saved dataset's
            return None
        try:
            with pa.memory_map(str(path)) as source:
                reader = pa.ipc.open_stream(source)
                for batch in reader:  # batches are views into the map: no data is copied
                    total += batch.num_rows
        except (OSError, pa.ArrowException):
            return None
    return total
