"""What a run directory must hold at any moment, even right after a SIGKILL: whole images under final names,
a consistent journal, and (once the output is written) every input row exactly once, in order."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from PIL import Image

from pixelmill.reading.images import EXTENSIONS, sniff
from pixelmill.writing.store import TMP_MARK

EXTENSION_OF = {ext: mime for mime, ext in EXTENSIONS.items()}


def image_files(rundir: Path) -> tuple[list[Path], list[Path]]:
    """(final image files, temporary files left by a killed write) below RUNDIR/images."""
    root = rundir / "images"
    if not root.is_dir():
        return [], []
    files = [p for p in root.rglob("*") if p.is_file()]
    temporaries = [p for p in files if p.name.endswith(TMP_MARK)]
    return [p for p in files if not p.name.endswith(TMP_MARK)], temporaries


def assert_whole_image(path: Path) -> None:
    """The file is a complete image of the format its extension names (CRCs and every pixel decoded)."""
    data = path.read_bytes()
    assert sniff(data) == EXTENSION_OF[path.suffix.lstrip(".")], f"{path}: bytes do not match the extension"
    with Image.open(path) as img:
        img.verify()  # chunk CRCs, structure
    with Image.open(path) as img:
        img.load()  # every pixel: a truncated file fails here


def assert_no_corrupt_image(rundir: Path, checked: dict[Path, tuple[int, int]] | None = None) -> int:
    """Every image under a final name is whole. Returns how many temporary files a killed write left.
    `checked` remembers files found whole (by size and modification time), so repeated checks stay cheap."""
    finals, temporaries = image_files(rundir)
    for path in finals:
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        if checked is not None and checked.get(path) == stamp:
            continue
        assert_whole_image(path)
        if checked is not None:
            checked[path] = stamp
    return len(temporaries)


def journal_rows(rundir: Path, step: str = "generate") -> dict[int, tuple[str, list[str]]]:
    """source position -> (status, outputs) of one step, read with plain sqlite (not through pixelmill's own code):
    results are saved under each row's entry, which records where the row stood."""
    db = sqlite3.connect(rundir / ".pixelmill" / "journal.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        keys = db.execute("SELECT row, key FROM records").fetchall()
        assert len({k for _, k in keys}) == len(keys), "two rows share a record key"
        rows = db.execute("SELECT r.position, s.status, s.outputs FROM results s JOIN records r ON r.row = s.row "
                          "WHERE s.step = ? AND r.position IS NOT NULL", (step,)).fetchall()
    finally:
        db.close()
    return {row: (status, orjson.loads(outputs)) for row, status, outputs in rows}


def assert_journal_consistent(rundir: Path, step: str = "generate", *, decode: bool = True
                              ) -> dict[int, tuple[str, list[str]]]:
    """The journal is sound, and every image it records is on disk (whole, unless `decode` is off because the
    caller checks every file itself) and belongs to one row only."""
    rows = journal_rows(rundir, step)
    owners: Counter[str] = Counter()
    for status, outputs in rows.values():
        if status == "done":
            assert outputs, "a done row without images"
        for path in outputs:
            owners[path] += 1
            if decode:
                assert_whole_image(rundir / path)
            else:
                assert (rundir / path).is_file(), f"{path} is recorded but not on disk"
    shared = [p for p, n in owners.items() if n > 1]
    assert not shared, f"files shared by two rows: {shared[:5]}"
    return rows


def read_output_rows(rundir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (rundir / "output.jsonl").read_bytes().splitlines()]


def assert_every_row_once(rows: list[dict[str, Any]], sources: list[dict[str, Any]], field: str = "images") -> None:
    """The output holds each input row once, unchanged, in input order, with a status."""
    assert len(rows) == len(sources), f"{len(rows)} output rows for {len(sources)} input rows"
    for row, source in zip(rows, sources, strict=True):
        assert {k: row[k] for k in source} == source
        assert row["pixelmill"]["status"] in ("done", "failed", "pending")
        assert isinstance(row[field], list)
        if row["pixelmill"]["status"] != "done":
            assert row[field] == []
