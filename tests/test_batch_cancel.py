"""`pixelmill cancel RUNDIR` on a `--batch` run, against the emulator's Batch API over loopback: each live batch is
cancelled at the provider and collected (lines answered before the cancel kept and billed once, the rest pending
and not billed), a re-run submits the rest anew, and a run holding the RUNDIR makes cancel refuse."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pixelmill.testing import Emulator
from pixelmill.writing.batches import BatchBook
from pixelmill.writing.journal import Journal
from pixelmill.writing.lock import RunLock
from tests.runs import cli, prompts, read_output, write_jsonl


@pytest.fixture
def emu(emulator_thread: Emulator) -> Emulator:
    emulator_thread.configure(batch_latency=0.5, batch_fates=("slow",))  # lines answered over 4 s
    return emulator_thread


def test_cancel_keeps_what_the_batch_answered_and_a_rerun_submits_the_rest(emu: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(12))
    args = ("generate", src, "-o", tmp_path / "run", "--base-url", emu.openai_base_url, "--batch", "--quiet")
    assert cli(*args, "--detach").code == 4
    [batch] = emu.batches.batches.values()
    deadline = time.monotonic() + 30
    while batch.answered < 2 and time.monotonic() < deadline:  # a few lines answered, most not
        emu.batches.advance(batch)
        time.sleep(0.05)
    assert 2 <= batch.answered < 12

    result = cli("cancel", tmp_path / "run")
    assert result.code == 0, result.output
    assert batch.status == "cancelled"
    billed = emu.batches.counters.billed("openai")
    kept = len(billed)
    statuses = [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")]
    assert statuses.count("done") == kept and statuses.count("pending") == 12 - kept
    assert (f"cancelled 1 live batch(es): {kept} line(s) answered before the cancel are kept (paid when done); "
            f"{12 - kept} row(s) are pending again (not billed)") in result.output
    journal = Journal.open(tmp_path / "run")
    assert BatchBook(journal).batches(live_only=True) == []
    journal.close()
    assert cli("cancel", tmp_path / "run").output.strip().endswith("no live batches to cancel")

    emu.configure(batch_latency=0.3, batch_fates=())
    again = cli(*args)
    assert again.code == 0, again.output
    out = read_output(tmp_path / "run")
    assert [r["pixelmill"]["status"] for r in out] == ["done"] * 12
    assert sum(1 for r in out if r["pixelmill"].get("resubmits") == 1) == 12 - kept
    counters = emu.batches.counters
    assert counters.batches_created["openai"] == 2
    assert sum(counters.billed("openai").values()) == 12 and not counters.billed_twice("openai")


def test_cancel_is_refused_while_a_run_holds_the_rundir(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_fates=("stall",))
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    assert cli("generate", src, "-o", tmp_path / "run", "--base-url", emu.openai_base_url, "--batch", "--detach",
               "--quiet").code == 4
    with RunLock(tmp_path / "run"):
        result = cli("cancel", tmp_path / "run")
    assert result.code == 2 and "cannot cancel the jobs or batches of a run in progress" in result.output
    [batch] = emu.batches.batches.values()
    assert batch.cancel_requested is None


def test_cancel_of_a_gemini_batch_then_a_rerun_submits_its_rows_anew(emu: Emulator, tmp_path: Path) -> None:
    """Gemini Batch Mode through `pixelmill cancel`: the batch is cancelled at the provider (`:cancel`), the rows it
    did not answer are pending again and not billed, and the same command submits them in a new batch."""
    emu.configure(batch_fates=("stall",))  # nothing answered until it is cancelled
    key = {"GEMINI_API_KEY": "gemini-test-key-0123456789"}
    src = write_jsonl(tmp_path / "in.jsonl", prompts(4))
    args = ("generate", src, "-o", tmp_path / "run", "--provider", "gemini", "--model", "gemini-3.1-flash-image",
            "--base-url", emu.gemini_base_url, "--batch", "--quiet")
    assert cli(*args, "--detach", env=key).code == 4
    [batch] = emu.batches.batches.values()
    result = cli("cancel", tmp_path / "run", env=key)
    assert result.code == 0, result.output
    assert batch.cancel_requested is not None
    assert "4 row(s) are pending again (not billed)" in " ".join(result.output.split())
    assert [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")] == ["pending"] * 4
    assert not emu.batches.counters.billed("gemini")

    emu.configure(batch_latency=0.3, batch_fates=())
    again = cli(*args, env=key)
    assert again.code == 0, again.output
    out = read_output(tmp_path / "run")
    assert [r["pixelmill"]["status"] for r in out] == ["done"] * 4
    assert all(r["pixelmill"].get("resubmits") == 1 for r in out)
    assert emu.batches.counters.batches_created["gemini"] == 2
    assert sum(emu.batches.counters.billed("gemini").values()) == 4 and not emu.batches.counters.billed_twice("gemini")
