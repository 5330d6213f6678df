"""`pixelmill status RUNDIR` on finished, failed, budget-stopped, interrupted and killed runs: per step counts,
spend, failures grouped with an example row, how the last run ended, and a resume command that works. The
same numbers end every run."""

from __future__ import annotations

import shlex
import signal
import time
from pathlib import Path

import orjson

from pixelmill.options import command_line, with_option
from pixelmill.reports.status import read_status
from pixelmill.testing import Emulator
from tests.runs import TEST_KEY, cli, cli_process, prompts, read_output, run_api, write_jsonl


def _status(run: Path) -> tuple[int, str]:
    result = cli("status", run)
    return result.code, result.output


def _step_line(output: str, step: str) -> list[str]:
    return next(line.split() for line in output.splitlines() if line.strip().startswith(step + " "))


def test_finished_run(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(6))
    run = tmp_path / "run"
    result = cli("generate", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "--quality", "low",
                 "--size", "1024x1024", "--n", "2")
    assert result.code == 0
    # The run ends with the status's numbers and says where the output is.
    assert "6 rows: 6 done, 0 failed, 0 pending" in result.output
    assert f"output: {run / 'output.jsonl'}" in result.output
    code, out = _status(run)
    assert code == 0
    assert "6 rows: 6 done, 0 failed, 0 pending" in out
    # step, model (two words), done, failed, pending, images, spent
    assert _step_line(out, "generate")[1:7] == ["openai", "gpt-image-2", "6", "0", "0", "12"]
    spent = sum(r["pixelmill"]["cost_usd"] for r in read_output(run))
    assert f"spent: ${spent:.4f}" in out
    assert "last run: finished" in out
    assert "to continue" not in out and "failures" not in out
    state = orjson.loads(cli("status", run, "--json").output)
    assert state["done"] == 6 and state["steps"][0]["images"] == 12 and state["last_run"]["aborted"] is None


def test_failed_rows_are_grouped_with_an_example(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(faults={"moderation": 0.3}, seed=4)
    rows = [*prompts(20), {"no_prompt": "x"}, b"{not json"]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    run = tmp_path / "run"
    report = run_api(emulator_thread, src, run, quality="low")
    assert report.exit_code == 1
    refused = emulator_thread.count(fault="moderation")
    assert refused > 0
    state = read_status(run)
    assert state.rows == 22 and state.failed == refused + 2 and state.done == 20 - refused and state.pending == 0
    groups = {(g.kind, g.code): g for g in state.failures}
    moderation = groups[("refused", "moderation_blocked")]
    assert moderation.count == refused
    first_refused = next(i for i, r in enumerate(read_output(run)) if r["pixelmill"].get("error", {})
                         .get("kind") == "refused")
    assert moderation.example_row == first_refused
    assert moderation.example_key == f"row{first_refused:06d}"
    assert groups[("input", None)].count == 2  # the row without a prompt and the line that is not JSON
    code, out = _status(run)
    assert code == 0
    assert f"refused moderation_blocked x{refused}; e.g. row {first_refused} (row{first_refused:06d})" in out
    assert "input x2" in out
    # Neither a moderation block nor a row without a prompt passes on a retry: what to change, not --retry-failed.
    assert f"safety refusals in {refused} row-step" in out and "rephrase those prompts" in out
    assert "input errors in 2 row-steps" in out and "--retry-failed" not in out


def test_budget_stopped_run_says_how_to_continue(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(30))
    run = tmp_path / "run"
    args = ["generate", str(src), "-o", str(run), "--base-url", emulator_thread.openai_base_url, "--quality", "low",
            "--size", "1024x1024", "--quiet"]
    assert cli(*args, "--max-cost", "0.1").code == 3
    code, out = _status(run)
    assert code == 0
    assert "last run: stopped" in out and "budget of $0.10 reached" in out
    assert "of a $0.10 budget" in out
    line = next(line for line in out.splitlines() if line.startswith("to continue, raise the budget"))
    command = shlex.split(line.split(": ", 1)[1])
    assert command[:2] == ["pixelmill", "generate"]
    new_budget = float(command[command.index("--max-cost") + 1])
    assert new_budget > 0.1
    # The proposed budget covers the pending rows at this run's cost per row: running it completes the run.
    result = cli(*command[1:])
    assert result.code == 0, result.output
    assert read_status(run).pending == 0 and read_status(run).spent <= new_budget


def test_interrupted_run(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(latency=0.2)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(60))
    run = tmp_path / "run"
    proc = cli_process("generate", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "--concurrency",
                       "4", "--quiet")
    _wait_for(emulator_thread, 8)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err.decode()
    state = read_status(run)
    assert state.pending > 0 and state.done > 0 and state.failed == 0
    assert state.done + state.pending == 60
    code, out = _status(run)
    assert code == 0
    assert "last run: stopped" in out and "interrupted" in out
    line = next(line for line in out.splitlines() if line.startswith("to continue: "))
    command = shlex.split(line.removeprefix("to continue: "))
    assert "--restart" not in command and TEST_KEY not in line
    assert cli(*command[1:]).code == 0
    assert read_status(run).done == 60


def test_killed_run_is_reported_as_interrupted(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(latency=0.2)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(60))
    run = tmp_path / "run"
    proc = cli_process("generate", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "--concurrency",
                       "4", "--quiet", "--api-key", TEST_KEY)
    _wait_for(emulator_thread, 8)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    code, out = _status(run)
    assert code == 0
    assert "last run: interrupted, or still running" in out
    assert "pending" in out and "to continue: pixelmill generate" in out
    assert TEST_KEY not in out  # the key given as a flag is never part of the command shown
    assert "60 rows" in out  # the total comes from the source, though the run never saw all of it


def test_status_of_a_two_step_pipeline(emulator_thread: Emulator, tmp_path: Path) -> None:
    from tests.test_pipeline import ENV, TWO_STEPS, pipeline

    path = pipeline(tmp_path, emulator_thread, TWO_STEPS)
    assert cli("run", path, "--quiet", env=ENV).code == 0
    code, out = _status(tmp_path / "out")
    assert code == 0
    assert "3 rows: 3 done, 0 failed, 0 pending" in out
    assert _step_line(out, "product_image")[1:7] == ["openai", "gpt-image-2", "3", "0", "0", "3"]
    assert _step_line(out, "on_marble")[1:7] == ["gemini", "gemini-3-pro-image", "3", "0", "0", "3"]
    assert "to continue" not in out
    state = read_status(tmp_path / "out")
    assert state.command == f"pixelmill run {path} -o {tmp_path / 'out'}"


def test_status_of_a_folder_without_a_run(tmp_path: Path) -> None:
    code, out = _status(tmp_path)
    assert code == 2 and "holds no pixelmill run" in out and "--output" in out
    assert not (tmp_path / ".pixelmill").exists()  # status never creates a journal


def test_rebuilt_command_round_trips(tmp_path: Path) -> None:
    from pixelmill.options import build_config, job_options

    src = write_jsonl(tmp_path / "in.jsonl", prompts(1))
    options = job_options(output=tmp_path / "run", model="gpt-image-1.5", quality="high", size="1024x1536",
                          prompt_template="A photo of {prompt}", id_field="prompt", param=["user=me"],
                          concurrency=4, max_cost=2.5, api_key=TEST_KEY, restart=True)
    config = build_config("generate", src, options)
    command = command_line(config)
    assert command is not None and TEST_KEY not in command and "--restart" not in command
    args = shlex.split(command)
    again = build_config(args[1], Path(args[2]), _parse(args[3:]))
    assert again.fingerprint() == config.fingerprint()
    assert again.limits.max_cost == 2.5 and again.limits.concurrency == 4
    assert with_option(command, "--max-cost", "9.00").endswith("--max-cost 9.00")
    assert with_option(command, "--max-cost", "9.00").count("--max-cost") == 1


def _parse(args: list[str]) -> dict[str, object]:
    """Command-line flags to `job_options`, through the real command (click parses them)."""
    from typer.main import get_command

    from pixelmill.cli import app
    from pixelmill.options import job_options

    command = get_command(app).commands["generate"]  # type: ignore[attr-defined]
    ctx = command.make_context("generate", ["in.jsonl", *args])
    params = {k: v for k, v in ctx.params.items() if k not in ("input", "quiet")}
    return job_options(**params)


def _wait_for(emu: Emulator, answered: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while emu.count(status=200) < answered:
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.01)
