"""One step spread over several keys or endpoints (`--deployment`, `deployments:`), each with its own limits, run
over loopback against emulator instances that enforce each key's limits (a 429 beyond them) and accept only
their own keys: the calls go where they may, in proportion to the limits, none passed; a wrong key is taken out
and the run completes on the others; a key is never in RUNDIR nor in what the run prints."""

from __future__ import annotations

import shlex
import socket
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from pixelmill.errors import ConfigError
from pixelmill.options import build_config, command_line, job_options, pipeline_config
from pixelmill.testing import Emulator
from tests.runs import cli, prompts, read_output, write_jsonl

KEY_A = "sk-deploy-a-7c1e9b2f4d6a8e0c3b5d7f9a"
KEY_B = "sk-deploy-b-2e4c6a8b0d1f3e5a7c9b1d3f"


def _no_key_anywhere(rundir: Path, printed: str, *keys: str) -> None:
    """Neither key in any file of RUNDIR (journal included) nor in what the run printed."""
    for key in keys:
        assert key not in printed
        for path in rundir.rglob("*"):
            if path.is_file():
                assert key.encode() not in path.read_bytes(), path


def test_two_deployments_share_the_rows_in_proportion_to_their_limits(
        tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    # Each emulator stands for one key's quota: 10 and 19 images per 2 s; the client is told 240 and 480 a
    # minute (8 and 16 per 2 s, paced 1% under), so the emulators' 429s would show any limit passed.
    a = make_emulator(api_keys={KEY_A}, ipm=10, rate_window=2.0, latency=0.02)
    b = make_emulator(api_keys={KEY_B}, ipm=19, rate_window=2.0, latency=0.02)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(48))
    out = tmp_path / "out"
    result = cli("generate", src, "-o", out, "--concurrency", "8",
                 "--deployment", f"name=a,base_url={a.openai_base_url},api_key_env=KEY_A,ipm=240",
                 "--deployment", f"name=b, base_url={b.openai_base_url}, api_key_env=KEY_B, ipm=480",
                 env={"KEY_A": KEY_A, "KEY_B": KEY_B, "OPENAI_API_KEY": ""})
    assert result.code == 0, result.output
    assert a.count(status=429) == 0 and b.count(status=429) == 0  # neither limit passed
    sent_a, sent_b = a.count(status=200), b.count(status=200)
    assert sent_a + sent_b == 48
    assert 0.25 <= sent_a / 48 <= 0.42, (sent_a, sent_b)  # a third of the rows: its share of the limits
    rows = read_output(out)
    served = Counter(row["pixelmill"]["response"]["deployment"] for row in rows)
    assert served == {"a": sent_a, "b": sent_b}
    _no_key_anywhere(out, result.output, KEY_A, KEY_B)


def test_a_deployment_with_a_wrong_key_is_taken_out_and_the_run_completes_on_the_other(
        tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(api_keys={KEY_A}, latency=0.02)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(20))
    out = tmp_path / "out"
    url = emu.openai_base_url
    result = cli("generate", src, "-o", out, "--concurrency", "4",
                 "--deployment", f"name=bad,base_url={url},api_key_env=KEY_B",
                 "--deployment", f"name=good,base_url={url},api_key_env=KEY_A",
                 env={"KEY_A": KEY_A, "KEY_B": KEY_B, "OPENAI_API_KEY": ""})
    assert result.code == 0, result.output
    rows = read_output(out)
    assert [row["pixelmill"]["status"] for row in rows] == ["done"] * 20
    assert {row["pixelmill"]["response"]["deployment"] for row in rows} == {"good"}
    assert result.output.count("deployment 'bad' taken out") == 1
    assert "1 other carry on" in " ".join(result.output.split())
    assert 1 <= emu.count(status=401) <= 4  # at most the calls in flight when it was found out
    _no_key_anywhere(out, result.output, KEY_A, KEY_B)


def test_the_run_stops_when_every_deployment_is_out(tmp_path: Path,
                                                    make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(api_keys={"sk-neither-of-them-0123456789"})
    src = write_jsonl(tmp_path / "in.jsonl", prompts(10))
    out = tmp_path / "out"
    url = emu.openai_base_url
    result = cli("generate", src, "-o", out, "--concurrency", "2",
                 "--deployment", f"base_url={url},api_key_env=KEY_A",
                 "--deployment", f"base_url={url},api_key_env=KEY_B",
                 env={"KEY_A": KEY_A, "KEY_B": KEY_B, "OPENAI_API_KEY": ""})
    assert result.code == 3, result.output
    assert "deployment 'KEY_A' taken out" in result.output  # named after its key's variable, never the key
    rows = read_output(out)
    assert all(row["pixelmill"]["status"] == "pending" for row in rows)
    assert emu.count(status=401) <= 4
    _no_key_anywhere(out, result.output, KEY_A, KEY_B)


def test_a_rate_limited_deployment_is_backed_off_while_the_other_carries_on(
        tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    # `a` answers every call with a 429 and a Retry-After of 30 s; `b` has no limit.
    a = make_emulator(faults={"rate_limit": 1.0}, retry_after=30.0, latency=0.02)
    b = make_emulator(latency=0.02)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(30))
    out = tmp_path / "out"
    result = cli("generate", src, "-o", out, "--concurrency", "4",
                 "--deployment", f"name=a,base_url={a.openai_base_url}",
                 "--deployment", f"name=b,base_url={b.openai_base_url}")
    assert result.code == 0, result.output
    rows = read_output(out)
    assert {row["pixelmill"]["response"]["deployment"] for row in rows} == {"b"}
    assert b.count(status=200) == 30
    # Paused after its first 429s, `a` is not asked again while its Retry-After runs: only the calls sent to it
    # before the first 429 came back were answered 429; the rows went on at `b` at once.
    assert 1 <= a.count(status=429) <= 4


# ---------------------------------------------------------------- configuration
def test_a_key_written_in_a_pipeline_file_is_refused_without_repeating_it(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(1))
    pipeline = {"source": str(src), "steps": [{"name": "s", "prompt": "x", "deployments": [
        {"base_url": "http://127.0.0.1:1/v1", "api_key": KEY_A}]}]}
    with pytest.raises(ConfigError) as caught:
        pipeline_config(pipeline)
    message = str(caught.value)
    assert "step 's'" in message and "deployments[0].api_key" in message
    assert "environment variable" in message and "api_key_env" in message
    assert KEY_A not in message
    pipeline["steps"][0]["deployments"] = [{"api_key_env": KEY_A}]  # a key where the variable's name goes
    with pytest.raises(ConfigError) as caught:
        pipeline_config(pipeline)
    assert "not the key itself" in str(caught.value) and KEY_A not in str(caught.value)


def test_a_key_on_the_command_line_is_refused_and_a_missing_variable_named(
        tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(1))
    result = cli("generate", src, "-o", tmp_path / "out", "--deployment", f"api_key={KEY_A}")
    assert result.code == 2
    assert "api_key_env" in result.output and KEY_A not in result.output
    result = cli("generate", src, "-o", tmp_path / "out", "--deployment", KEY_A)
    assert result.code == 2 and KEY_A not in result.output
    emu = make_emulator()
    result = cli("generate", src, "-o", tmp_path / "out", "--deployment",
                 f"name=east,base_url={emu.openai_base_url},api_key_env=KEY_EAST")
    assert result.code == 2
    assert "deployment 'east': the environment variable KEY_EAST is not set" in " ".join(result.output.split())
    assert emu.count() == 0


def test_top_level_deployments_serve_every_step_without_its_own(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(1))
    config = pipeline_config({
        "source": str(src),
        "deployments": [{"name": "one", "api_key_env": "KEY_ONE", "ipm": 50}],
        "steps": [{"name": "first", "prompt": "x", "output_field": "f"},
                  {"name": "second", "prompt": "y", "output_field": "g",
                   "deployments": [{"name": "two", "api_key_env": "KEY_TWO", "rpm": 5, "concurrency": 2}]}],
    })
    assert [d.name for d in config.steps[0].deployments] == ["one"]
    assert [(d.name, d.rpm, d.concurrency) for d in config.steps[1].deployments] == [("two", 5, 2)]
    assert config.fingerprint() == pipeline_config({  # where calls go is not another configuration
        "source": str(src),
        "steps": [{"name": "first", "prompt": "x", "output_field": "f"},
                  {"name": "second", "prompt": "y", "output_field": "g"}],
    }).fingerprint()


def test_the_resume_command_keeps_the_deployments_and_no_key(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(1))
    config = build_config("generate", src, job_options(
        output=tmp_path / "out",
        deployment=["name=east,base_url=https://user:pw-secret-123@east.example/v1,api_key_env=KEY_EAST,ipm=60"]))
    line = command_line(config)
    assert line is not None
    assert "--deployment name=east,base_url=https://east.example/v1,api_key_env=KEY_EAST,ipm=60" in line
    assert "pw-secret-123" not in line
    args = shlex.split(line)
    again = build_config("generate", src, job_options(output=tmp_path / "out",
                                                      deployment=[args[args.index("--deployment") + 1]]))
    assert again.steps[0].deployments == (config.steps[0].deployments[0].model_copy(
        update={"base_url": "https://east.example/v1"}),)


def test_an_unreachable_deployment_is_taken_out_and_the_run_completes_on_the_other(
        tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    with socket.socket() as sock:  # a loopback port with nothing listening: every connection is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    emu = make_emulator(latency=0.02)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(20))
    out = tmp_path / "out"
    result = cli("generate", src, "-o", out, "--concurrency", "4",
                 "--deployment", f"name=gone,base_url=http://127.0.0.1:{port}/v1",
                 "--deployment", f"name=here,base_url={emu.openai_base_url}")
    assert result.code == 0, result.output
    rows = read_output(out)
    assert [row["pixelmill"]["status"] for row in rows] == ["done"] * 20
    assert {row["pixelmill"]["response"]["deployment"] for row in rows} == {"here"}
    shown = " ".join(result.output.split())
    assert shown.count("deployment 'gone' taken out") == 1
    assert f"127.0.0.1:{port}" in shown and "could not connect" in shown


def test_an_estimate_needs_no_deployment_key_set(tmp_path: Path) -> None:
    from pixelmill.reports.estimate import estimate

    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    config = pipeline_config({"source": str(src), "output": str(tmp_path / "out"), "steps": [
        {"name": "s", "prompt": "x", "deployments": [{"api_key_env": "KEY_EAST"}, {"api_key_env": "KEY_WEST"}]}]})
    assert estimate(config, env={}).requests == 3


def test_batch_with_deployments_is_refused_before_anything_is_sent(
        tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(api_keys={KEY_A}, latency=0.02)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    url = emu.openai_base_url
    result = cli("generate", src, "-o", tmp_path / "out", "--batch",
                 "--deployment", f"name=a,base_url={url},api_key_env=KEY_A",
                 "--deployment", f"name=b,base_url={url},api_key_env=KEY_A",
                 env={"KEY_A": KEY_A, "OPENAI_API_KEY": ""})
    assert result.code == 2, result.output
    assert "a batch is sent through a single key, while deployments spread calls sent one by one" in \
        " ".join(result.output.split())
    assert emu.count() == 0
