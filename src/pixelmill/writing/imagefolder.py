"""`RUNDIR/metadata.jsonl`, written beside `output.jsonl`: the same rows in the layout of Hugging Face's
`imagefolder` loader, so that `load_dataset("imagefolder", data_dir=RUNDIR)` gives every row with its images
decoded, from any working directory (the loader resolves `file_name`s against the metadata file's folder).

One line per input row, not per image: a row's n images stay together. Each output field `F` becomes
`F_file_names` (the loader's `*_file_names` key: a list of paths relative to RUNDIR, read back as column `F`, a list
of images; empty for a failed or pending row, which is still there with its status). The `pixelmill` object is
JSON text, as in Parquet, with the flat `pixelmill_*` columns beside it (`meta_columns.py`): the loader infers one
Arrow type per column from the lines, and an object whose keys differ between done and failed rows would not
hold one. Input columns are written as they are; a column whose values mix types (text in one row, a number in
another) is one Arrow's JSON reader refuses, so such a run is read from `output.jsonl` instead.
"""

from __future__ import annotations

from typing import Any

from pixelmill.reading import jsonio
from pixelmill.writing.meta_columns import flat_meta

SUFFIX = "_file_names"


def imagefolder_row(row: dict[str, Any], image_fields: list[str], steps: tuple[str, ...] | None) -> dict[str, Any]:
    """One output row (image paths relative to RUNDIR, not embedded) as a line of metadata.jsonl."""
    line = {k: v for k, v in row.items() if k not in image_fields and k != "pixelmill"}
    for name in image_fields:
        line[name + SUFFIX] = [p for p in row.get(name) or [] if isinstance(p, str) and not p.startswith("data:")]
    meta = row.get("pixelmill")
    line["pixelmill"] = jsonio.dumps(meta).decode()
    line.update(flat_meta(meta, steps))
    return line
