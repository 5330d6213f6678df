"""End-to-end runs of the fal and BFL providers through the CLI against the emulator (in a thread): generate and
edit, a refused row among done ones, a re-run that submits nothing again, `--provider emulator` routing of fal and
BFL models, and the key in no file the run wrote nor in any media request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pixelmill.testing import Emulator, EmulatorConfig
from tests.job_servers import PNG
from tests.runs import cli, read_output, write_jsonl

FAL_KEY = "fal-run-key-id:fal-run-secret-161803398"
BFL_KEY = "bfl_run-key-1414213562"


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(job_latency=0.1)).run_in_thread() as emulator:
        yield emulator


def _key_nowhere(root: Path, key: str) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key.encode() not in data, path
            for part in key.split(":"):
                assert part.encode() not in data, path


def test_a_fal_run_generates_refuses_one_row_and_resumes_without_submitting_again(
        emu: Emulator, tmp_path: Path) -> None:
    rows = [{"prompt": "a red bicycle"}, {"prompt": "a bad one [[fault:moderation]]"}, {"prompt": "a blue kite"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    args = ("generate", src, "--provider", "fal", "--model", "fal-ai/flux/schnell", "--base-url", emu.jobs_base_url,
            "--size", "512x512", "-o", tmp_path / "out", "-q")
    result = cli(*args, env={"FAL_KEY": FAL_KEY})
    assert result.code != 2, result.output
    out = read_output(tmp_path / "out")
    statuses = [r["pixelmill"]["status"] for r in out]
    assert statuses == ["done", "failed", "done"], result.output
    assert "has_nsfw_concepts" in str(out[1]["pixelmill"])
    assert sum(emu.submits("fal").values()) == 3
    again = cli(*args, env={"FAL_KEY": FAL_KEY})
    assert again.code != 2, again.output
    assert sum(emu.submits("fal").values()) == 3  # nothing paid twice
    assert emu.records(endpoint="media", key_sent=True) == []
    _key_nowhere(tmp_path / "out", FAL_KEY)
    assert FAL_KEY.split(":")[1] not in result.output + again.output


def test_a_bfl_edit_run_records_the_reported_cost(emu: Emulator, tmp_path: Path) -> None:
    (tmp_path / "in.png").write_bytes(PNG)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "make it blue", "image": "in.png"}])
    result = cli("edit", src, "--provider", "bfl", "--model", "flux-kontext-pro", "--base-url",
                 emu.jobs_base_url + "/v1", "--image-field", "image", "-o", tmp_path / "out", "-q",
                 env={"BFL_API_KEY": BFL_KEY})
    assert result.code == 0, result.output
    [row] = read_output(tmp_path / "out")
    assert row["pixelmill"]["status"] == "done"
    assert row["pixelmill"]["cost_usd"] == pytest.approx(0.04)
    _key_nowhere(tmp_path / "out", BFL_KEY)


@pytest.mark.parametrize("model", ["fal-ai/flux/dev", "flux-pro-1.1"])
def test_the_emulator_provider_hands_job_models_to_their_wire(tmp_path: Path, model: str) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a red bicycle"}, {"prompt": "a blue kite"}])
    result = cli("generate", src, "--provider", "emulator", "--model", model, "-o", tmp_path / "out", "-q")
    assert result.code == 0, result.output
    out = read_output(tmp_path / "out")
    assert [r["pixelmill"]["status"] for r in out] == ["done", "done"]
    assert {r["pixelmill"]["provider"] for r in out} == {"emulator"}


def test_an_emulator_job_of_a_killed_process_fails_at_once_on_resume(tmp_path: Path) -> None:
    # `--provider emulator` runs its jobs in the run's own process: a re-run cannot collect them. It must say so
    # at once (paid and lost: a rehearsal), not poll a port that is gone until the deadline.
    import signal
    import sqlite3
    import time

    from tests.runs import cli_process

    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a slow lighthouse [[latency:60]]"}])
    args = ("generate", src, "--provider", "emulator", "--model", "fal-ai/flux/schnell", "-o", tmp_path / "out", "-q",
            "--deadline", "20")
    process = cli_process(*args)
    journal = tmp_path / "out" / ".pixelmill" / "journal.sqlite"
    deadline = time.monotonic() + 60
    live = 0
    while time.monotonic() < deadline and not live:
        time.sleep(0.2)
        if journal.is_file():
            with sqlite3.connect(journal) as db:
                try:
                    live = db.execute("SELECT COUNT(*) FROM results WHERE live > 0").fetchone()[0]
                except sqlite3.OperationalError:  # the table is being made
                    live = 0
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert live == 1, "the job was never journaled"
    started = time.monotonic()
    result = cli(*args)
    assert time.monotonic() - started < 30
    assert result.code == 1, result.output
    (row,) = read_output(tmp_path / "out")
    assert row["pixelmill"]["error"]["kind"] == "result_lost"
    assert "emulator of an earlier process" in row["pixelmill"]["error"]["message"]
