"""The budget holds against what a provider actually bills, and calls whose outcome is unknown are counted.

Against `BillingGateway` (tests/reliability/hostile_servers.py), a loopback provider that keeps its own bill and
charges every request it receives before it answers:
- a provider that bills 2.5 times what the model table predicts, at --concurrency 64: the budget is not passed
  (the first call of a model goes alone; the rest reserve what the bills have shown), the stop line says what
  the journal says, and the provider's bill equals the journal's spend;
- Gemini usage without a per-modality split (image, thinking drafts and text in one count): priced at the
  worst case, and the budget still holds;
- three SIGKILLs with calls in flight, then a resume: the calls the kills lost were billed, so they are charged
  (their intents) and the provider's bill over all the runs stays within the budget;
- requests sent and lost (reset, hang past --timeout) may have been billed: retried at most
  --max-billed-retries times, failed as `unknown_outcome`, charged at their reservation and said in `status` and
  in the summary; a connection that cannot be opened was never billed and is retried freely;
- the default --timeout comes from the model table (600 s for GPT image models) and --deadline leaves room for
  a retry after a full timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pixelmill.engine.plan import plan_run
from pixelmill.models.cost import expected_cost
from pixelmill.models.table import builtin_table
from pixelmill.options import build_config, job_options
from pixelmill.reports.status import read_status
from pixelmill.testing import ThreadRunner
from pixelmill.writing.journal import Journal
from tests.reliability.hostile_servers import BillingGateway
from tests.runs import TEST_KEY, cli, cli_process, read_output, write_jsonl

GEMINI_KEY = "AIzaTEST-0b5e2c9d4a7f1e3b6c8d0a2f4e6b"
HIGH = ("--quality", "high", "--size", "1024x1024")


@contextmanager
def serve(server: BillingGateway) -> Iterator[BillingGateway]:
    runner = ThreadRunner(server)  # type: ignore[arg-type]
    runner.start()
    try:
        yield server
    finally:
        runner.stop()


@pytest.fixture
def overbiller() -> Iterator[BillingGateway]:
    with serve(BillingGateway(factor=2.5, latency=0.2)) as server:
        yield server


@pytest.fixture
def gateway() -> Iterator[BillingGateway]:
    with serve(BillingGateway(factor=1.0, latency=0.1)) as server:
        yield server


def rows(n: int, prefix: str = "a lighthouse at dusk") -> list[dict[str, str]]:
    return [{"prompt": f"{prefix} {i}"} for i in range(n)]


def journal_spent(run: Path) -> float:
    journal = Journal.open(run)
    try:
        return journal.spent()
    finally:
        journal.close()


def stop_line_spend(output: str) -> float:
    """The spend the budget's stop line states ("budget of $2.00 reached: $1.8731 spent ...")."""
    marker = "reached: $"
    assert marker in output, output
    return float(output.split(marker, 1)[1].split(" ", 1)[0])


# ---------------------------------------------------------------- a provider that bills more than the table says
def test_a_provider_billing_over_the_table_cannot_pass_the_budget(overbiller: BillingGateway,
                                                                  tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", rows(200))
    run = tmp_path / "run"
    proc = cli_process("generate", src, "-o", run, "--base-url", overbiller.url, "--model", "gpt-image-2", *HIGH,
                       "--concurrency", "64", "--max-cost", "2", "--quiet")
    _, err = proc.communicate(timeout=120)
    text = err.decode()
    assert proc.returncode == 3, text
    spent = journal_spent(run)
    assert overbiller.billed <= 2.0, f"the provider billed ${overbiller.billed:.4f} on a $2 budget"
    assert spent == pytest.approx(overbiller.billed, abs=1e-6)  # every bill is in the journal, at its amount
    assert stop_line_spend(text) == pytest.approx(spent, abs=1e-4)  # the stop line and the journal agree
    assert read_status(run).spent == pytest.approx(spent, abs=1e-9)
    # A cold start sends one call until a bill has settled; then the budget is used, not abandoned early.
    assert overbiller.first_answer_in_flight == 1
    per_call = overbiller.billed / overbiller.bills
    assert spent > 2.0 - 2 * 1.15 * per_call


def test_gemini_usage_without_a_split_is_priced_at_the_worst_case_within_the_budget(tmp_path: Path) -> None:
    with serve(BillingGateway(factor=1.0, latency=0.2)) as server:
        src = write_jsonl(tmp_path / "in.jsonl", rows(100))
        run = tmp_path / "run"
        result = cli("generate", src, "-o", run, "--provider", "gemini", "--model", "gemini-3-pro-image",
                     "--base-url", server.url, "--concurrency", "32", "--max-cost", "2", "--quiet",
                     env={"GEMINI_API_KEY": GEMINI_KEY})
        assert result.code == 3, result.output
        spent = journal_spent(run)
        assert server.billed <= 2.0, f"the provider billed ${server.billed:.4f} on a $2 budget"
        assert spent == pytest.approx(server.billed, abs=1e-6)
        assert stop_line_spend(result.output) == pytest.approx(spent, abs=1e-4)
        spec = builtin_table().get("gemini-3-pro-image")
        assert spec is not None
        bound = expected_cost(spec, {}, 1, len("a lighthouse at dusk 10")).high  # type: ignore[union-attr]
        done = [r for r in read_output(run) if r["pixelmill"]["status"] == "done"]
        assert done and all(r["pixelmill"]["cost_usd"] > bound for r in done)  # billed over the table's bound


# ---------------------------------------------------------------- calls in flight at a SIGKILL
def test_calls_lost_to_kills_are_charged_and_the_budget_holds_across_resumes(tmp_path: Path) -> None:
    with serve(BillingGateway(factor=1.0, latency=1.0)) as server:
        src = write_jsonl(tmp_path / "in.jsonl", rows(80))
        run = tmp_path / "run"
        args = ("generate", src, "-o", run, "--base-url", server.url, "--model", "gpt-image-2", *HIGH,
                "--concurrency", "8", "--max-cost", "2", "--quiet")
        for _ in range(3):
            seen = server.bills
            proc = cli_process(*args)
            deadline = time.monotonic() + 30
            while server.bills < seen + 4 and proc.poll() is None:  # a few calls in flight, billed, unanswered
                assert time.monotonic() < deadline, "the run sent nothing"
                time.sleep(0.01)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
            while server.in_flight:  # the provider finishes (and has billed) what the dead client sent
                time.sleep(0.01)
        # The kills' calls are charged even before a resume: the journal's spend covers the provider's bill.
        assert journal_spent(run) >= server.billed - 1e-9, (journal_spent(run), server.billed)
        final = cli_process(*args)
        _, err = final.communicate(timeout=120)
        assert final.returncode == 3, err.decode()
        spent = journal_spent(run)
        assert server.billed <= 2.0, f"the provider billed ${server.billed:.4f} on a $2 budget over the runs"
        assert spent >= server.billed - 1e-9  # every call billed is charged: recorded, or at its reservation
        status = read_status(run)
        done = status.done
        recorded = sum(r["pixelmill"]["cost_usd"] for r in read_output(run) if r["pixelmill"]["status"] == "done")
        assert server.bills == done + status.unanswered_calls  # each bill: a done row or a call charged blind
        assert spent == pytest.approx(recorded + status.unanswered_cost, abs=1e-5)
        unanswered = [r["pixelmill"]["unanswered"] for r in read_output(run) if "unanswered" in r["pixelmill"]]
        assert sum(u["calls"] for u in unanswered) == status.unanswered_calls


# ---------------------------------------------------------------- unknown outcomes
def test_lost_answers_are_retried_once_failed_as_unknown_and_charged(gateway: BillingGateway,
                                                                      tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [*rows(3), {"prompt": "reset me [lose]"},
                                              {"prompt": "never answered [hang]"}, {"prompt": "bad [refuse]"}])
    run = tmp_path / "run"
    result = cli("generate", src, "-o", run, "--base-url", gateway.url, "--model", "gpt-image-2", *HIGH,
                 "--timeout", "1", "--max-retries", "5")
    assert result.code == 1, result.output
    out = {r["prompt"]: r["pixelmill"] for r in read_output(run)}
    spec = builtin_table().get("gpt-image-2")
    assert spec is not None
    for prompt in ("reset me [lose]", "never answered [hang]"):
        meta = out[prompt]
        assert gateway.requests.count(prompt) == 2  # sent, lost, retried once (--max-billed-retries 1)
        assert meta["status"] == "failed" and meta["error"]["kind"] == "unknown_outcome", meta
        assert meta["attempts"] == 2
        bound = expected_cost(spec, {"quality": "high", "size": "1024x1024"}, 1, len(prompt)).high  # type: ignore
        assert meta["unanswered"] == {"calls": 2, "cost_usd_max": pytest.approx(2 * bound, abs=1e-6)}
    assert out["bad [refuse]"]["error"]["kind"] == "rejected" and "unanswered" not in out["bad [refuse]"]
    status = read_status(run)
    assert status.unanswered_calls == 4
    assert status.unanswered_cost == pytest.approx(sum(out[p]["unanswered"]["cost_usd_max"] for p in
                                                       ("reset me [lose]", "never answered [hang]")))
    assert status.spent == pytest.approx(status.unanswered_cost + sum(
        m["cost_usd"] for m in out.values() if m["status"] == "done"), abs=1e-6)
    line = f"unanswered: 4 calls may have been billed without an answer, at most ${status.unanswered_cost:.4f}"
    assert line in result.output  # the summary
    assert line in cli("status", run).output


def test_max_billed_retries_0_a_lost_answer_is_not_retried_a_connection_never_opened_is(
        gateway: BillingGateway, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "reset me [lose]"}])
    run = tmp_path / "run"
    result = cli("generate", src, "-o", run, "--base-url", gateway.url, "--max-billed-retries", "0", *HIGH,
                 "--quiet")
    assert result.code == 1, result.output
    [row] = read_output(run)
    assert gateway.requests == ["reset me [lose]"]
    assert row["pixelmill"]["error"]["kind"] == "unknown_outcome"
    assert row["pixelmill"]["unanswered"]["calls"] == 1
    assert "unanswered: 1 call may have been billed" in result.output  # kept by --quiet: it is money

    with socket.socket() as sock:  # a port that refuses: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        src = write_jsonl(tmp_path / "refused.jsonl", rows(1))
        run = tmp_path / "refused"
        result = cli("generate", src, "-o", run, "--base-url", f"http://127.0.0.1:{port}", "--max-retries", "2",
                     "--max-billed-retries", "0", *HIGH)
    assert result.code == 1, result.output
    [row] = read_output(run)
    assert row["pixelmill"]["error"]["kind"] == "transient"
    assert row["pixelmill"]["attempts"] == 3  # not limited by --max-billed-retries 0: nothing was sent
    assert "unanswered" not in row["pixelmill"]
    assert journal_spent(run) == 0.0
    assert "unanswered" not in result.output


# ---------------------------------------------------------------- timeouts that suit the slowest models
def test_the_default_timeout_is_the_models_and_the_deadline_allows_a_retry(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", rows(1))

    def plan(model: str, **options: object) -> tuple[float, float]:
        config = build_config("generate", src, job_options(output=tmp_path / "run", model=model, api_key=TEST_KEY,
                                                           **options))
        planned = plan_run(config, env={})
        return planned.steps[0].timeout, planned.deadline

    timeout, deadline = plan("gpt-image-2")
    assert timeout == 600  # models.toml: GPT image models at high quality take minutes
    assert deadline >= 2 * timeout + 30  # a full timeout, a backoff, and a second full attempt fit
    assert plan("dall-e-3") == (300, 660)  # no timeout in the table: the default, and room for one retry
    assert plan("gpt-image-2", timeout=20.0) == (20, 600)  # --timeout wins; the deadline keeps its floor
    assert plan("gpt-image-2", timeout=20.0, deadline=45.0) == (20, 45)
