"""`--max-cost`: every call reserves the most it can cost before it is sent, so the budget is never passed,
however many calls are in flight; a call that does not fit waits for calls in flight to settle rather than
stopping the run early; when nothing more fits the run stops (exit 3), says what it spent and how to go on,
and a re-run with a larger budget resumes (spend is counted across resumes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pixelmill.engine.budget import Budget
from pixelmill.errors import BudgetReached, ConfigError
from pixelmill.models.cost import expected_cost
from pixelmill.models.table import builtin_table
from pixelmill.reports.status import read_status
from pixelmill.testing import Emulator
from tests.runs import cli, prompts, read_output, run_api, write_jsonl

GPT2 = builtin_table().get("gpt-image-2")
assert GPT2 is not None


def statuses(run: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in read_output(run):
        out[row["pixelmill"]["status"]] = out.get(row["pixelmill"]["status"], 0) + 1
    return out


def test_budget_is_never_passed_under_concurrency(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(latency=0.05, latency_sigma=0.5, seed=5)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(300))
    budget = 0.5
    report = run_api(emulator_thread, src, tmp_path / "run", quality="low", size="1024x1024", concurrency=32,
                     max_cost=budget)
    assert report.exit_code == 3 and report.abort_kind == "budget"
    assert "Raise --max-cost" in (report.aborted or "")
    rows = read_output(tmp_path / "run")
    spent = sum(r["pixelmill"].get("cost_usd", 0.0) for r in rows)
    assert spent <= budget
    assert read_status(tmp_path / "run").spent <= budget
    # Every answered request was paid and recorded: nothing was sent beyond what the budget covers.
    answered = emulator_thread.count(endpoint="generations", status=200)
    done = statuses(tmp_path / "run")["done"]
    assert answered == done
    per_call = 272 * 30.0 / 1e6
    assert answered * per_call <= budget
    # ... and the run went as far as the budget allowed (it stopped within one call's reservation).
    reservation = expected_cost(GPT2, {"quality": "low", "size": "1024x1024"}, 1, len("prompt number 299")).high
    assert spent > budget - reservation - per_call
    assert statuses(tmp_path / "run")["pending"] == 300 - done


def test_a_call_that_does_not_fit_waits_for_calls_in_flight(emulator_thread: Emulator, tmp_path: Path) -> None:
    """quality high, size auto: each call reserves the dearest size (6,240 tokens) but costs the square
    (4,160). The run must use the budget freed by cheaper calls, not stop when the reservations first fill it."""
    emulator_thread.configure(latency=0.05)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(40))
    budget = 1.0
    report = run_api(emulator_thread, src, tmp_path / "run", quality="high", concurrency=16, max_cost=budget)
    assert report.exit_code == 3
    reservation = expected_cost(GPT2, {"quality": "high"}, 1, 20).high
    per_call = 4160 * 30.0 / 1e6
    assert reservation > 1.4 * per_call
    spent = read_status(tmp_path / "run").spent
    assert spent <= budget
    # Stopped only when the next call's reservation could not fit even with nothing in flight.
    assert spent + reservation > budget
    assert statuses(tmp_path / "run")["done"] == 7  # 5 would fit the reservations alone


def test_raise_the_budget_and_resume(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(30))
    run = tmp_path / "run"
    first = run_api(emulator_thread, src, run, quality="low", size="1024x1024", concurrency=8, max_cost=0.1)
    assert first.exit_code == 3
    done_first = statuses(run)["done"]
    assert 0 < done_first < 30
    again = run_api(emulator_thread, src, run, quality="low", size="1024x1024", concurrency=8, max_cost=0.1)
    assert again.exit_code == 3 and again.stats.requests == 0  # the budget of the RUNDIR is spent
    assert "budget of $0.10 reached" in (again.aborted or "")
    final = run_api(emulator_thread, src, run, quality="low", size="1024x1024", concurrency=8, max_cost=1.0)
    assert final.exit_code == 0
    assert emulator_thread.count(endpoint="generations", status=200) == 30  # done rows were not paid twice
    assert read_status(run).spent == pytest.approx(30 * 272 * 30.0 / 1e6, rel=0.01)
    assert final.stats.spent_before == pytest.approx(read_status(run).spent - final.stats.spent)


def test_the_command_line_says_what_was_spent_and_how_to_continue(emulator_thread: Emulator,
                                                                  tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(20))
    run = tmp_path / "run"
    args = ("generate", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "--quality", "low",
            "--size", "1024x1024", "--quiet")
    result = cli(*args, "--max-cost", "0.05")
    assert result.code == 3
    assert "budget of $0.05 reached" in result.output
    assert "spent" in result.output and "--max-cost" in result.output
    assert "to continue, raise the budget" in result.output
    spent = read_status(run).spent
    assert 0 < spent <= 0.05
    assert cli(*args, "--max-cost", "1").code == 0
    assert statuses(run) == {"done": 20}


def test_a_model_without_a_price_cannot_have_a_budget(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    with pytest.raises(ConfigError, match="no price is known"):
        run_api(emulator_thread, src, tmp_path / "run", provider="openai-compatible", model="my-own-model",
                max_cost=1.0)
    assert emulator_thread.count() == 0


async def test_budget_reservations() -> None:
    budget = Budget(1.0)
    await budget.reserve(0.6)
    waiting = asyncio.create_task(budget.reserve(0.6))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # 0.6 + 0.6 would pass the budget while the first call is in flight
    budget.settle(0.6, 0.3)  # the first call cost less than it reserved
    await asyncio.wait_for(waiting, 1)
    assert budget.spent == pytest.approx(0.3) and budget.reserved == pytest.approx(0.6)
    budget.settle(0.6, 0.6)
    with pytest.raises(BudgetReached, match=r"budget of \$1.00 reached: \$0.9000 spent"):
        await budget.reserve(0.2)  # cannot fit even with nothing in flight
    unlimited = Budget(None)
    await unlimited.reserve(1e9)
    unlimited.settle(1e9, 5.0)
    assert unlimited.spent == 5.0


async def test_reservations_follow_the_bills_and_a_cold_model_sends_one_call() -> None:
    """Until a model's first bill settles, one call of it is in flight; then each call reserves its table bound
    scaled by the highest bill/bound ratio seen (with the margin), per plan, else per model."""
    from pixelmill.engine.budget import MARGIN

    budget = Budget(10.0)
    plan = ("gpt-image-2", "high")
    first = await budget.reserve(1.0, plan)
    assert first == 1.0
    second = asyncio.create_task(budget.reserve(1.0, plan))
    await asyncio.sleep(0.01)
    assert not second.done()  # the model has no bill yet: its first call goes alone
    other = await budget.reserve(1.0, ("gemini-3-pro-image", "1K"))  # another model probes on its own
    budget.settle(other, 0.5, ("gemini-3-pro-image", "1K"), bound=1.0)
    budget.settle(first, 2.0, plan, bound=1.0)  # billed twice the table's bound
    assert await asyncio.wait_for(second, 1) == pytest.approx(2.0 * (1 + MARGIN))
    assert budget.reservation(1.0, ("gpt-image-2", "low")) == pytest.approx(2.0 * (1 + MARGIN))  # the model's
    assert budget.reservation(1.0, ("gemini-3-pro-image", "1K")) == 1.0  # billed within its bound
    assert budget.spent == pytest.approx(2.5)
    assert Budget(None).reservation(1.0, plan) == 1.0
