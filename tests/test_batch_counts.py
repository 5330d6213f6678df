"""What a user sees of `--batch` resubmissions and batches: rows sent again after an expired, cancelled or failed
batch counted on the row (`pixelmill.resubmits`), in the final summary and in `pixelmill status`; a batch's age
counted from its creation at the provider and its expiry shown."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from pixelmill.testing import Emulator
from pixelmill.writing.batches import BatchBook
from pixelmill.writing.journal import Journal
from tests.runs import cli, prompts, read_output, write_jsonl


@pytest.fixture
def emu(emulator_thread: Emulator) -> Emulator:
    emulator_thread.configure(batch_latency=0.3)
    return emulator_thread


def test_rows_resubmitted_after_an_expired_batch_are_counted_and_shown(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_fates=("expire",), batch_window=0.3)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(6))
    result = cli("generate", src, "-o", tmp_path / "run", "--base-url", emu.openai_base_url, "--batch")
    assert result.code == 0, result.output
    out = read_output(tmp_path / "run")
    assert [r["pixelmill"]["status"] for r in out] == ["done"] * 6
    again = [r["pixelmill"].get("resubmits") for r in out]
    resubmitted = sum(1 for n in again if n)
    assert 0 < resubmitted < 6 and set(again) == {None, 1}
    # Exactly the rows the expired batch left unanswered: the lines of the second batch.
    _, second = sorted((b for b in emu.batches.batches.values() if b.api == "openai"), key=lambda b: b.created)
    second_ids = {f"r{i + 1:09d}" for i, n in enumerate(again) if n}
    assert {ln.split(b'"custom_id":"')[1][:10].decode() for ln in second.input_path.read_bytes().splitlines()} \
        == second_ids
    assert f"{resubmitted} row(s) resubmitted after an expired, cancelled or failed batch" in result.output
    shown = cli("status", tmp_path / "run")
    assert f"resubmitted: {resubmitted} row(s) sent again in a new batch ({resubmitted} time(s) in all)" \
        in shown.output


def test_status_shows_a_batch_age_from_its_creation_and_its_expiry(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_fates=("stall",), batch_window=7200.0)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    assert cli("generate", src, "-o", tmp_path / "run", "--base-url", emu.openai_base_url, "--batch", "--detach",
               "--quiet").code == 4
    shown = cli("status", tmp_path / "run")
    [line] = [ln for ln in shown.output.splitlines() if ln.startswith("batch 1 batch_")]
    age = re.search(r", (\d+)s old, expires in (\S+ \S+)$", line)
    assert age is not None, line
    assert int(age.group(1)) < 30 and age.group(2) == "2.0 h"


def test_a_batch_age_counts_from_its_creation_not_from_when_its_file_began(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    book = BatchBook(journal)
    seq = book.start("generate", "openai")
    journal.db.execute("UPDATE batches SET created = created - 3600 WHERE seq = ?", (seq,))  # a long upload
    book.uploaded(seq, "file-1")
    book.submitted(seq, "batch_1", {"status": "validating"})
    [entry] = book.batches()
    assert time.time() - entry.created < 60
    journal.close()
