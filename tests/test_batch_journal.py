"""The journal's batch tables (writing/batches.py): lines recorded before anything waits, a row in at most one
live batch, states kept across a reopened journal."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelmill.writing.batches import BatchBook, RowAlreadyLive
from pixelmill.writing.journal import Journal


def test_lines_and_states_survive_a_reopened_journal(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    book = BatchBook(journal)
    seq = book.start("generate", "openai")
    book.add_lines(seq, "generate", [(r, f"r{r:08d}") for r in range(3)])
    book.uploaded(seq, "file-1")
    book.submitted(seq, "batch_1", {"status": "validating"})
    journal.close()

    book = BatchBook(Journal.open(tmp_path))
    [entry] = book.batches(live_only=True)
    assert (entry.seq, entry.state, entry.file_id, entry.batch_id, entry.lines) == (seq, "submitted", "file-1",
                                                                                     "batch_1", 3)
    assert list(book.lines(seq)) == [("r00000000", 0), ("r00000001", 1), ("r00000002", 2)]
    assert book.live_rows("generate", [0, 2, 5]) == {0, 2}
    assert book.row_of(seq, "r00000001") == 1


def test_a_row_is_in_at_most_one_live_batch(tmp_path: Path) -> None:
    book = BatchBook(Journal.open(tmp_path))
    first = book.start("generate", "openai")
    book.add_lines(first, "generate", [(0, "r0"), (1, "r1")])
    second = book.start("generate", "openai")
    with pytest.raises(RowAlreadyLive):
        book.add_lines(second, "generate", [(2, "r2"), (1, "r1")])
    assert list(book.lines(second)) == []  # nothing of the refused lines was recorded
    assert book.live_rows("generate", [1, 2]) == {1}
    # Another step's batch may hold the same row; a collected batch frees its rows.
    book.add_lines(second, "edit", [(1, "r1")])
    book.collected(first, {"status": "completed"})
    assert book.live_rows("generate", [0, 1]) == set()
    third = book.start("generate", "openai")
    book.add_lines(third, "generate", [(1, "r1")])
    assert [b.seq for b in book.batches(live_only=True)] == [second, third]


def test_a_batch_still_building_is_dropped_and_frees_its_rows(tmp_path: Path) -> None:
    book = BatchBook(Journal.open(tmp_path))
    seq = book.start("generate", "openai")
    book.add_lines(seq, "generate", [(0, "r0")])
    book.drop(seq)
    assert book.batches() == []
    assert book.live_rows("generate", [0]) == set()
