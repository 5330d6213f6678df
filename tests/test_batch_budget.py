"""`--batch --max-cost` against the emulator's Batch API over loopback: each line reserves its maximum at the batch
rate as it joins a batch, a batch is split where the next line would pass the budget, the rows left are sent once
collected batches' bills free budget, the run stops with the budget's line (exit 3) when nothing fits, and the
reservations of live batches count in the spend of every later run (engine/batch/budget.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelmill.testing import Emulator
from pixelmill.writing.batches import BatchBook
from pixelmill.writing.journal import Journal
from tests.runs import prompts, read_output, run_api, write_jsonl

FAST = {"batch_poll": 0.05, "batch_max_lines": 4}
# The most one line may cost: gpt-image-2 (the default model), quality low, 1024x1024, at the batch rate (half the
# synchronous maximum the table gives). The emulator bills less (its usage has fewer prompt tokens than the bound).
LINE_MAX = 0.00616
BUDGET = 10.5 * LINE_MAX  # two and a half batches of four lines at their maximum


@pytest.fixture
def emu(emulator_thread: Emulator) -> Emulator:
    emulator_thread.configure(batch_latency=0.3)
    return emulator_thread


def billed_cost(emu: Emulator, rundir: Path) -> float:
    """What the emulator billed: the lines it billed, each at the cost the run recorded for its row."""
    cost = {f"r{i + 1:09d}": row["pixelmill"].get("cost_usd") or 0.0 for i, row in enumerate(read_output(rundir))}
    billed = emu.batches.counters.billed("openai")
    assert all(cost[key] > 0 for key in billed)  # every billed line's row is done, with its bill
    return sum(cost[key] * n for key, n in billed.items())


def journal_numbers(rundir: Path) -> tuple[float, list[int], list[float]]:
    journal = Journal.open(rundir)
    try:
        lines = [b.lines for b in BatchBook(journal).batches()]
        reserved = [float(r[0]) for r in journal.db.execute("SELECT reserved FROM batch_lines ORDER BY seq, row")]
        return journal.spent(), lines, reserved
    finally:
        journal.close()


def test_a_batch_is_split_at_the_budget_and_the_rest_waits_for_the_bills(emu: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(20))
    report = run_api(emu, src, tmp_path / "run", quality="low", batch=True, max_cost=BUDGET, engine=FAST)
    assert report.exit_code == 3
    assert report.abort_kind == "budget" and report.aborted.startswith(f"budget of ${BUDGET:.2f} reached: ")
    out = read_output(tmp_path / "run")
    statuses = [r["pixelmill"]["status"] for r in out]
    spent, lines, reserved = journal_numbers(tmp_path / "run")
    assert reserved == [pytest.approx(LINE_MAX, rel=1e-3)] * len(reserved)  # longer prompts: a little more
    # The first round: ten lines fit the budget at their maximum: two full batches, then one cut at two lines.
    assert lines[:3] == [4, 4, 2]
    # Bills are below the maximum: the rows left went in later batches, created once the first ones were collected.
    done = statuses.count("done")
    assert done > 10 and statuses == ["done"] * done + ["pending"] * (20 - done)
    batches = sorted((b for b in emu.batches.batches.values() if b.api == "openai"), key=lambda b: b.created)
    first_round_end = max(min(t for s, t in b.times.items() if s == "completed") for b in batches[:3])
    assert all(b.created >= first_round_end for b in batches[3:])
    # Never passed: what the provider billed, and what the journal counts, stay within the budget; and the next line
    # at its maximum would not have fitted (the stop is honest).
    counters = emu.batches.counters
    assert sum(counters.billed("openai").values()) == done and not counters.billed_twice("openai")
    billed = billed_cost(emu, tmp_path / "run")
    assert billed == pytest.approx(spent) and billed <= BUDGET
    assert billed + LINE_MAX > BUDGET
    assert journal_numbers(tmp_path / "run")[0] == pytest.approx(sum(r["pixelmill"].get("cost_usd") or 0 for r in out))

    # The same command with the same budget counts what was spent: nothing is sent.
    created = counters.batches_created["openai"]
    again = run_api(emu, src, tmp_path / "run", quality="low", batch=True, max_cost=BUDGET, engine=FAST)
    assert again.exit_code == 3 and again.abort_kind == "budget"
    assert again.stats.spent_before == pytest.approx(billed) and again.stats.spent == 0
    assert counters.batches_created["openai"] == created
    assert [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")] == statuses


def test_live_batches_reserve_their_maximum_across_runs(emu: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(14))
    options = {"quality": "low", "batch": True, "max_cost": BUDGET, "engine": FAST}
    first = run_api(emu, src, tmp_path / "run", detach=True, **options)
    assert first.exit_code == 4
    spent, lines, _ = journal_numbers(tmp_path / "run")
    assert lines == [4, 4, 2] and spent == pytest.approx(10 * LINE_MAX)  # reserved, not yet billed
    # Another run while they are live: their reservations are in its spend, so it builds no new batch.
    second = run_api(emu, src, tmp_path / "run", detach=True, **options)
    assert second.exit_code == 4 and second.stats.spent_before == pytest.approx(10 * LINE_MAX)
    assert emu.batches.counters.batches_created["openai"] == 3
    # Collecting replaces the reservations by the bills, and the rows left fit in the budget freed.
    final = run_api(emu, src, tmp_path / "run", **options)
    assert final.exit_code == 0
    assert [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")] == ["done"] * 14
    spent, lines, _ = journal_numbers(tmp_path / "run")
    assert spent == pytest.approx(billed_cost(emu, tmp_path / "run")) and spent <= BUDGET
    # Every bill was collected by this run: its own spend, the reservations it settled gone from the earlier spend.
    assert final.stats.spent == pytest.approx(spent) and final.stats.spent_before == pytest.approx(0.0, abs=1e-9)
    assert not emu.batches.counters.billed_twice("openai")


def test_a_batch_a_killed_run_was_building_frees_its_reservations(emu: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(14))
    options = {"quality": "low", "batch": True, "max_cost": BUDGET, "engine": FAST}
    assert run_api(emu, src, tmp_path / "run", detach=True, **options).exit_code == 4
    # A run killed while it wrote its next batch (never uploaded) left these lines and their reservations.
    journal = Journal.open(tmp_path / "run")
    book = BatchBook(journal)
    entries = [int(r[0]) for r in journal.db.execute("SELECT row FROM records ORDER BY position")]
    seq = book.start("generate", "openai")
    book.add_lines(seq, "generate", [(row, f"r{row:09d}", LINE_MAX) for row in entries[10:14]])
    assert journal.spent() == pytest.approx(14 * LINE_MAX)
    journal.close()
    final = run_api(emu, src, tmp_path / "run", **options)
    assert final.exit_code == 0, final.aborted
    assert [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")] == ["done"] * 14
    spent, _, _ = journal_numbers(tmp_path / "run")
    assert spent == pytest.approx(billed_cost(emu, tmp_path / "run")) and spent <= BUDGET
