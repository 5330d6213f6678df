"""`pixelmill estimate`: rows, requests, images and cost per step, without sending anything; its expected cost
is what the run then costs; rows that would fail, rows already done and the budget are accounted for."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import orjson
import pytest

from pixelmill.options import build_config, job_options
from pixelmill.reports.estimate import estimate
from pixelmill.reports.status import read_status
from pixelmill.testing import Emulator
from tests.runs import TEST_KEY, cli, prompts, run_api, write_jsonl


def config_for(src: Path, out: Path, task: str = "generate", **options: Any) -> Any:
    return build_config(task, src, job_options(output=out, **options))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"estimate tried to connect: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_estimate_sends_nothing(emulator_thread: Emulator, tmp_path: Path, no_network: None) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(25))
    for provider, base_url in (("openai", emulator_thread.openai_base_url), ("emulator", None)):
        config = config_for(src, tmp_path / provider, provider=provider, base_url=base_url, quality="low")
        result = estimate(config, env={})  # no key anywhere: none is needed
        assert result.rows == 25 and result.requests == 25 and result.images == 25
    assert emulator_thread.count() == 0
    assert not (tmp_path / "openai").exists() and not (tmp_path / "emulator").exists()  # no RUNDIR made


def test_expected_cost_is_what_the_run_costs(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(20, prefix="a long product photo prompt with some words"))
    options = {"quality": "medium", "size": "1536x1024", "n": 2}
    config = config_for(src, tmp_path / "run", base_url=emulator_thread.openai_base_url, api_key=TEST_KEY,
                        **options)
    predicted = estimate(config)
    assert (predicted.rows, predicted.requests, predicted.images) == (20, 20, 40)
    report = run_api(emulator_thread, src, tmp_path / "run", **options)
    assert report.exit_code == 0
    spent = read_status(tmp_path / "run").spent
    assert predicted.total.expected == pytest.approx(spent, rel=0.01)
    assert predicted.total.low <= spent <= predicted.total.high


def test_requests_follow_the_wire_plan(tmp_path: Path) -> None:
    rows = [
        {"prompt": "one"},
        {"conversations": [{"role": "user", "content": "a cat"}, {"role": "assistant", "content": "here"},
                           {"role": "user", "content": "make it blue"}, {"role": "user", "content": "add a hat"}]},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    # OpenAI: n images in one call; a conversation is a chain of edits, one image per turn until the last.
    openai = estimate(config_for(src, tmp_path / "o", n=3, quality="high"), env={})
    step = openai.steps[0]
    assert step.rows == 2
    assert step.requests == 1 + 3
    assert step.images == 3 + 3
    # Gemini: one image per call.
    gemini = estimate(config_for(src, tmp_path / "g", provider="gemini", model="gemini-3-pro-image", n=2), env={})
    assert gemini.steps[0].requests == 2 + (1 + 1 + 2) and gemini.steps[0].images == 4
    assert gemini.steps[0].batch is not None  # Gemini has a batch discount
    assert gemini.steps[0].batch.expected == pytest.approx(gemini.total.expected / 2)


def test_rows_that_would_fail_are_counted_with_an_example(tmp_path: Path) -> None:
    rows = [{"prompt": "fine"}, {"caption": "no prompt here"}, b"{broken", {"prompt": "x" * 40000}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = estimate(config_for(src, tmp_path / "run", quality="low"), env={})
    step = result.steps[0]
    assert result.rows == 4 and result.unreadable == 1
    assert step.rows == 1 and step.failing == 2
    assert step.failure_example is not None and step.failure_example.startswith("row 1: ")
    edits = write_jsonl(tmp_path / "edits.jsonl", [{"prompt": "edit me"}, {"prompt": "x", "images": []}])
    result = estimate(config_for(edits, tmp_path / "e", task="edit"), env={})
    assert result.steps[0].failing == 2 and result.steps[0].rows == 0


def test_edit_inputs_are_counted_not_loaded(tmp_path: Path, no_network: None) -> None:
    rows = [{"prompt": "p", "images": ["a.png", "https://example.com/b.png"]}, {"prompt": "q", "images": "c.png"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)  # the files do not exist: an estimate never opens them
    result = estimate(config_for(src, tmp_path / "run", task="edit", quality="low", size="1024x1024"), env={})
    assert result.steps[0].rows == 2 and result.steps[0].requests == 2
    alone = estimate(config_for(write_jsonl(tmp_path / "one.jsonl", [{"prompt": "q", "images": "c.png"}]),
                                tmp_path / "r1", task="edit", quality="low", size="1024x1024"), env={})
    # Two input images cost more input tokens than one.
    assert result.total.expected - alone.total.expected > alone.total.expected


def test_rows_done_in_rundir_are_not_counted(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(10))
    run_api(emulator_thread, src, tmp_path / "run", quality="low", limit=4)
    config = config_for(src, tmp_path / "run", base_url=emulator_thread.openai_base_url, api_key=TEST_KEY,
                        quality="low")
    result = estimate(config)
    assert result.steps[0].already_done == 4 and result.steps[0].rows == 6
    assert result.spent_before == pytest.approx(read_status(tmp_path / "run").spent)
    other = config_for(src, tmp_path / "run", base_url=emulator_thread.openai_base_url, quality="high")
    assert estimate(other).steps[0].rows == 10  # another configuration: everything would be sent again
    assert emulator_thread.count() == 4


def test_budget_line(tmp_path: Path) -> None:
    from pixelmill.reports.estimate import describe

    src = write_jsonl(tmp_path / "in.jsonl", prompts(100))
    config = config_for(src, tmp_path / "run", quality="low", size="1024x1024", max_cost=0.25)
    lines = describe(estimate(config, env={}), config)
    assert any(line.startswith("--max-cost $0.25: about 31% of the run fits") for line in lines), lines
    config = config_for(src, tmp_path / "run", quality="low", size="1024x1024", max_cost=5)
    assert "the whole run fits" in "\n".join(describe(estimate(config, env={}), config))


def test_command_line(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(12))
    result = cli("estimate", src, "--provider", "emulator", "--quality", "low", "--size", "1024x1024", "--n", "2",
                 env={"OPENAI_API_KEY": ""})
    assert result.code == 0, result.output
    table = next(line.split() for line in result.output.splitlines() if line.strip().startswith("generate"))
    assert table[3:6] == ["12", "12", "24"]
    assert table[6] == f"${24 * 272 * 30 / 1e6 + 12 * 4 * 5 / 1e6:.4f}"  # 24 images + 12 prompts of 4 tokens
    data = orjson.loads(cli("estimate", src, "--provider", "emulator", "--quality", "low", "--json").output)
    assert data["rows"] == 12 and data["steps"][0]["requests"] == 12
    assert set(data["cost_usd"]) == {"low", "expected", "high"}
    bad = cli("estimate", src, "--model", "dall-e-3", "--quality", "ultra")
    assert bad.code == 2 and "quality" in bad.output
    edits = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "p", "images": "x.png"}])
    assert cli("estimate", edits, "--task", "edit", "--provider", "gemini", "--json").code == 0


def test_pipeline_file(emulator_thread: Emulator, tmp_path: Path, no_network: None) -> None:
    from tests.test_pipeline import ENV, TWO_STEPS, pipeline

    path = pipeline(tmp_path, emulator_thread, TWO_STEPS)
    result = cli("estimate", path, "--json", env=ENV)
    assert result.code == 0, result.output
    data = orjson.loads(result.output)
    first, second = data["steps"]
    assert (first["name"], first["rows"], first["requests"], first["images"]) == ("product_image", 3, 3, 3)
    assert (second["name"], second["rows"], second["requests"]) == ("on_marble", 3, 3)
    assert second["cost_usd"]["expected"] == pytest.approx(3 * 0.134, rel=0.02)  # gemini-3-pro-image 1K
    assert cli("estimate", path, "--model", "dall-e-3", env=ENV).code == 2  # a pipeline's models are its own
    assert emulator_thread.count() == 0
