"""Results are found by a row's identity (its id when given, else its content), never by its position: editing
the input between runs (inserting, deleting, sorting rows) re-sends only rows that are new or changed, and every
row keeps its own images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from pixelmill.testing import Emulator
from tests.runs import cli, read_output, write_jsonl


def _run(emu: Emulator, src: Path, run: Path, *extra: str) -> list[dict[str, Any]]:
    result = cli("generate", src, "-o", run, "--base-url", emu.openai_base_url, "--size", "512x512", "-q", *extra)
    assert result.code == 0, result.output
    return read_output(run)


def _sent(emu: Emulator) -> list[str]:
    return [r.prompt for r in emu.records(endpoint="generations")]


def _images_by_prompt(rows: list[dict[str, Any]], run: Path) -> dict[str, bytes]:
    return {r["prompt"]: (run / r["images"][0]).read_bytes() for r in rows}


@pytest.mark.parametrize("id_field", [None, "id"])
@pytest.mark.parametrize("edit", ["insert at the top", "delete the first", "sort", "reverse"])
def test_editing_the_input_resends_only_new_rows(emulator_thread: Emulator, tmp_path: Path, edit: str,
                                                 id_field: str | None) -> None:
    rows = [{"id": f"item-{i:02d}", "prompt": f"a photo of thing {(i * 7) % 20}"} for i in range(20)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    run = tmp_path / "run"
    extra = ("--id-field", id_field) if id_field else ()
    first = _run(emulator_thread, src, run, *extra)
    images = _images_by_prompt(first, run)
    assert len(_sent(emulator_thread)) == 20

    new = {"id": "item-new", "prompt": "a photo of the new thing"}
    edited = {"insert at the top": [new, *rows], "delete the first": rows[1:],
              "sort": sorted(rows, key=lambda r: r["prompt"]), "reverse": rows[::-1]}[edit]
    write_jsonl(src, edited)
    second = _run(emulator_thread, src, run, *extra)

    expected_new = ["a photo of the new thing"] if edit == "insert at the top" else []
    assert _sent(emulator_thread)[20:] == expected_new  # only the new row was paid for
    assert [r["prompt"] for r in second] == [r["prompt"] for r in edited]  # input order, every row once
    assert all(r["pixelmill"]["status"] == "done" for r in second)
    again = _images_by_prompt(second, run)
    for prompt, data in images.items():  # every earlier row kept its own image, untouched
        if prompt in again:
            assert again[prompt] == data, prompt
    assert len({tuple(r["images"]) for r in second}) == len(second)  # no two rows share a file
    status = orjson.loads(cli("status", run, "--json").output)  # the deleted row is no longer counted
    assert (status["rows"], status["done"], status["steps"][0]["done"]) == (len(edited),) * 3


def test_identical_rows_without_an_id_each_get_their_own_result(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "the same"}, {"prompt": "other"}, {"prompt": "the same"}])
    run = tmp_path / "run"
    out = _run(emulator_thread, src, run)
    assert len(_sent(emulator_thread)) == 3 and len({r["images"][0] for r in out}) == 3
    _run(emulator_thread, src, run)
    assert len(_sent(emulator_thread)) == 3  # a resume pays for nothing
    write_jsonl(src, [{"prompt": "the same"}] * 3 + [{"prompt": "other"}])
    out = _run(emulator_thread, src, run)
    assert _sent(emulator_thread)[3:] == ["the same"]  # only the third copy is new
    assert len({r["images"][0] for r in out}) == 4


def test_a_changed_row_with_the_same_id_is_sent_again_and_its_spend_kept(emulator_thread: Emulator,
                                                                         tmp_path: Path) -> None:
    rows = [{"id": f"p{i}", "prompt": f"first version {i}"} for i in range(4)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    run = tmp_path / "run"
    _run(emulator_thread, src, run, "--id-field", "id")
    spent = _spent(run)
    rows[2] = {"id": "p2", "prompt": "second version 2"}
    write_jsonl(src, rows)
    out = _run(emulator_thread, src, run, "--id-field", "id")
    assert _sent(emulator_thread)[4:] == ["second version 2"]
    assert out[2]["pixelmill"]["status"] == "done"
    assert _spent(run) > spent  # the first version's images were paid: that stays in the RUNDIR's spend


def _spent(run: Path) -> float:
    result = cli("status", run, "--json")
    return float(orjson.loads(result.output)["spent"])


def test_a_journal_of_the_first_layout_is_adopted_without_paying_again(emulator_thread: Emulator,
                                                                        tmp_path: Path) -> None:
    """RUNDIRs written before rows were found by identity (results keyed by position) resume as they were."""
    import sqlite3

    rows = [{"prompt": f"old layout {i}"} for i in range(6)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    run = tmp_path / "run"
    _run(emulator_thread, src, run)
    db = sqlite3.connect(run / ".pixelmill" / "journal.sqlite")
    # The first layout numbered entries by position and had no identity: renumber, then drop the new columns.
    for slot, position in db.execute("SELECT row, position FROM records ORDER BY row").fetchall():
        db.execute("UPDATE records SET row = ? WHERE row = ?", (-1 - position, slot))
        db.execute("UPDATE results SET row = ? WHERE row = ?", (-1 - position, slot))
    db.execute("UPDATE records SET row = -1 - row")
    db.execute("UPDATE results SET row = -1 - row")
    for statement in ("DROP INDEX records_identity", "DROP INDEX records_position",
                      "ALTER TABLE records DROP COLUMN identity", "ALTER TABLE records DROP COLUMN position",
                      "ALTER TABLE records DROP COLUMN claimed"):
        db.execute(statement)
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    db.commit()
    db.close()
    out = _run(emulator_thread, src, run)
    assert len(_sent(emulator_thread)) == 6  # nothing sent again
    assert all(r["pixelmill"]["status"] == "done" for r in out)
