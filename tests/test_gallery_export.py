"""`pixelmill export RUNDIR --keep MARKS -o DIR`: the marks the gallery exports, applied to a real run. Rows are
found by their identity (id, else content), never by position: the source is reordered and grown between the
review and the export, and the kept subset is still the marked rows, with their images (copied or linked).
The marks file is the gallery's own format (test_gallery_browser.py downloads one from the page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from pixelmill.reports.gallery.page import write_gallery
from pixelmill.testing import Emulator
from tests.runs import cli, read_output, run_api, write_jsonl
from tests.test_gallery import Page

ROWS = [{"id": name, "prompt": f"a {name} on a table"} for name in ("cup", "vase", "bowl", "lamp", "clock")]


def marks_file(path: Path, marks: list[tuple[dict[str, Any], str]]) -> Path:
    """Marks as the gallery writes them, from the page's own rows."""
    return write_jsonl(path, [{"identity": row["id"], "key": row["k"], "row": row["i"], "name": row["n"],
                               "mark": mark} for row, mark in marks])


def page_rows(run: Path) -> dict[str, dict[str, Any]]:
    return {row["n"]: row for row in Page(write_gallery(run).path.read_text()).rows}


def test_export_finds_rows_by_id_after_the_source_moved(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    run = tmp_path / "run"
    assert run_api(emulator_thread, src, run, quality="low", id_field="id").exit_code == 0
    rows = page_rows(run)
    marks = marks_file(tmp_path / "marks.jsonl", [(rows["cup"], "keep"), (rows["vase"], "reject"),
                                                  (rows["lamp"], "keep"), (rows["clock"], "keep")])
    # After the review the source is reversed and gains a row, and the run resumed: positions all changed.
    write_jsonl(src, [{"id": "new", "prompt": "a new thing"}, *reversed(ROWS)])
    assert run_api(emulator_thread, src, run, quality="low", id_field="id").stats.requests == 1
    result = cli("export", run, "--keep", marks, "-o", tmp_path / "kept")
    assert result.code == 0, result.output
    assert f"export: 3 of 6 rows kept, 3 images copied: {(tmp_path / 'kept' / 'output.jsonl').resolve()}" in \
        result.output
    kept = read_output(tmp_path / "kept")
    assert [r["id"] for r in kept] == ["clock", "lamp", "cup"]  # the run's order now
    before = {r["id"]: r for r in read_output(run)}
    for row in kept:
        assert row == before[row["id"]]  # the row as the run's output has it
        image = row["images"][0]
        assert (tmp_path / "kept" / image).read_bytes() == (run / image).read_bytes()
    assert sorted(p.name for p in (tmp_path / "kept" / "images" / "generate").iterdir()) == \
        ["clock_0.png", "cup_0.png", "lamp_0.png"]
    # Rows without a mark stay too with --unmarked keep: only the rejected row (and nothing else) goes; linked.
    result = cli("export", run, "--keep", marks, "-o", tmp_path / "all-but", "--unmarked", "keep", "--link")
    assert result.code == 0 and "export: 5 of 6 rows kept, 5 images linked" in result.output
    assert [r["id"] for r in read_output(tmp_path / "all-but")] == ["new", "clock", "lamp", "bowl", "cup"]
    linked = tmp_path / "all-but" / kept[0]["images"][0]
    assert linked.stat().st_ino == (run / kept[0]["images"][0]).stat().st_ino


def test_export_finds_rows_by_content_without_ids(emulator_thread: Emulator, tmp_path: Path) -> None:
    plain = [{"prompt": row["prompt"]} for row in ROWS]
    src = write_jsonl(tmp_path / "in.jsonl", plain)
    run = tmp_path / "run"
    assert run_api(emulator_thread, src, run, quality="low").exit_code == 0
    rows = sorted(Page(write_gallery(run).path.read_text()).rows, key=lambda r: r["i"])
    assert all(r["id"].startswith("content:") for r in rows)
    marks = marks_file(tmp_path / "marks.jsonl", [(rows[1], "keep"), (rows[3], "keep")])
    write_jsonl(src, [plain[3], plain[0], plain[1], plain[2], plain[4]])  # moved
    assert run_api(emulator_thread, src, run, quality="low").stats.requests == 0
    result = cli("export", run, "--keep", marks, "-o", tmp_path / "kept")
    assert result.code == 0, result.output
    assert [r["prompt"] for r in read_output(tmp_path / "kept")] == [plain[3]["prompt"], plain[1]["prompt"]]


def test_export_of_a_parquet_run(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:3])
    run = tmp_path / "run"
    assert run_api(emulator_thread, src, run, quality="low", id_field="id", format="parquet").exit_code == 0
    rows = page_rows(run)
    marks = marks_file(tmp_path / "marks.jsonl", [(rows["bowl"], "keep")])
    result = cli("export", run, "--keep", marks, "-o", tmp_path / "kept")
    assert result.code == 0, result.output
    table = pq.read_table(tmp_path / "kept" / "output.parquet").to_pylist()
    assert [r["id"] for r in table] == ["bowl"] and (tmp_path / "kept" / "images" / "generate" / "bowl_0.png").is_file()


def test_export_of_a_parquet_run_whose_source_is_gone(emulator_thread: Emulator, tmp_path: Path) -> None:
    # Without the source, rows come from output.parquet, whose images are `Image` structs: the page and the
    # export must still see the files, and the exported Parquet must hold images of the export's own folder.
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:3])
    run = tmp_path / "run"
    assert run_api(emulator_thread, src, run, quality="low", id_field="id", format="parquet").exit_code == 0
    src.unlink()
    rows = page_rows(run)
    assert all(row["s"] == "done" for row in rows.values()), rows
    marks = marks_file(tmp_path / "marks.jsonl", [(rows["bowl"], "keep")])
    result = cli("export", run, "--keep", marks, "-o", tmp_path / "kept")
    assert result.code == 0, result.output
    (kept,) = pq.read_table(tmp_path / "kept" / "output.parquet").to_pylist()
    (image,) = kept["images"]
    assert Path(image["path"]) == (tmp_path / "kept" / "images" / "generate" / "bowl_0.png").resolve()
    assert Path(image["path"]).read_bytes() == (run / "images" / "generate" / "bowl_0.png").read_bytes()
    assert orjson.loads(kept["pixelmill"])["status"] == "done" and kept["pixelmill_status"] == "done"


def test_export_refuses_what_it_cannot_do_cleanly(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:2])
    run = tmp_path / "run"
    assert run_api(emulator_thread, src, run, quality="low", id_field="id").exit_code == 0
    rows = page_rows(run)
    good = marks_file(tmp_path / "marks.jsonl", [(rows["cup"], "keep")])
    # A folder that holds something: the export would mix with it.
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    result = cli("export", run, "--keep", good, "-o", tmp_path / "full")
    assert result.code == 2 and "is not empty: give a new or empty folder to --output" in result.output
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["notes.txt"]
    result = cli("export", run, "--keep", good, "-o", run)
    assert result.code == 2 and "is the run itself" in result.output
    # A marks file with a line that is not a mark says which line.
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(good.read_bytes() + b'{"identity": "id:\\"vase\\"", "mark": "maybe"}\n')
    result = cli("export", run, "--keep", bad, "-o", tmp_path / "out")
    assert result.code == 2 and f"{bad} line 2: not a mark" in result.output and not (tmp_path / "out").exists()
    assert cli("export", run, "--keep", tmp_path / "none.jsonl", "-o", tmp_path / "out").code == 2
    assert cli("export", run, "--keep", good, "-o", tmp_path / "out", "--unmarked", "maybe").code == 2
    assert cli("export", tmp_path / "nothing", "--keep", good, "-o", tmp_path / "out").code == 2
    # Marks of another run: said, and left out.
    other = write_jsonl(tmp_path / "other.jsonl", [{"identity": 'id:"cup"', "mark": "keep"},
                                                   {"identity": 'id:"elsewhere"', "mark": "keep"}])
    result = cli("export", run, "--keep", other, "-o", tmp_path / "out")
    assert result.code == 0 and "1 of 2 marks name no row of" in result.output
    assert [r["id"] for r in read_output(tmp_path / "out")] == ["cup"]
    assert orjson.loads((tmp_path / "out" / "output.jsonl").read_bytes().splitlines()[0])["images"]


def test_reports_find_results_by_identity_when_the_source_changed_without_a_rerun(
        emulator_thread: Emulator, tmp_path: Path) -> None:
    """The source reordered, one row gone and one new, and no run since: the gallery, export and status attach
    every result to its own row (by id, and by content for rows without one), never by where rows stood."""
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:3])
    run = tmp_path / "run"
    assert run_api(emulator_thread, src, run, quality="low", id_field="id").exit_code == 0
    images = {r["id"]: r["images"] for r in read_output(run)}
    write_jsonl(src, [ROWS[2], {"id": "new", "prompt": "a new thing"}, ROWS[0]])  # "vase" gone
    for _ in range(2):  # and the same again: a report changes nothing a later report reads
        rows = page_rows(run)
        assert {n: r["s"] for n, r in rows.items()} == {"bowl": "done", "new": "pending", "cup": "done"}
        assert rows["bowl"]["g"][0]["im"][0]["h"].endswith(images["bowl"][0])
        assert rows["cup"]["g"][0]["im"][0]["h"].endswith(images["cup"][0])
    marks = marks_file(tmp_path / "marks.jsonl", [(rows["bowl"], "keep"), (rows["cup"], "keep")])
    result = cli("export", run, "--keep", marks, "-o", tmp_path / "kept")
    assert result.code == 0, result.output
    assert [(r["id"], r["images"]) for r in read_output(tmp_path / "kept")] == \
        [("bowl", images["bowl"]), ("cup", images["cup"])]
    status = cli("status", run, "--json")
    assert status.code == 0, status.output
    counted = orjson.loads(status.output)
    assert (counted["rows"], counted["done"], counted["failed"], counted["pending"]) == (3, 2, 0, 1)
    assert [(s["done"], s["pending"]) for s in counted["steps"]] == [(2, 1)]
    assert "changed since the last run" in counted["source_note"]
    # A re-run then sends exactly the one new row: nothing the reports did made a done row look new.
    assert run_api(emulator_thread, src, run, quality="low", id_field="id").stats.requests == 1
