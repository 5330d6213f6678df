"""End-to-end CLI runs of `--provider replicate` (and `hf`) against the emulator, through the engine's remote-job
path: rows done with their images and cost, a re-run submits nothing again, a create whose answer is lost
mid-run is recovered by listing (one submit, row done), `--provider emulator` serves the same models, and the
key is in no file of the run."""

from __future__ import annotations

from pathlib import Path

from pixelmill.testing import Emulator
from tests.runs import cli, read_output, write_jsonl

KEY = "r8_run-key-0123456789abcdef"
HF_KEY = "hf_run-key-0123456789abcdef"
SCHNELL = "black-forest-labs/flux-schnell"


def key_in_no_file(rundir: Path, *keys: str) -> None:
    for path in rundir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(key.encode() in data for key in keys), f"a key in {path}"


def test_replicate_run_resume_and_lost_create(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(job_latency=0.1)
    rows = [{"prompt": "a red bicycle"}, {"prompt": "a lost answer [[fault:reset]]"}, {"prompt": "a cat"}]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "run"
    args = ("generate", src, "-o", out, "--provider", "replicate", "--model", SCHNELL, "--n", "2",
            "--base-url", emulator_thread.url, "--max-cost", "1")
    env = {"REPLICATE_API_TOKEN": KEY}
    first = cli(*args, env=env)
    assert first.code == 0, first.output
    output = read_output(out)
    assert [len(row["images"]) for row in output] == [2, 2, 2]
    assert all(abs(row["pixelmill"]["cost_usd"] - 0.006) < 1e-9 for row in output)
    assert all(row["pixelmill"]["parameters"] == {"num_outputs": 2} for row in output)
    submits = emulator_thread.submits("replicate")
    assert submits == {"a red bicycle": 1, "a lost answer [[fault:reset]]": 1, "a cat": 1}, \
        "the lost create was recovered by listing, not submitted again"
    again = cli(*args, env=env)
    assert again.code == 0 and emulator_thread.submits("replicate") == submits, "a re-run submits nothing"
    key_in_no_file(out, KEY)


def test_emulator_provider_and_hf(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a lighthouse"}])
    emulated = cli("generate", src, "-o", tmp_path / "emu", "--provider", "emulator", "--model",
                   "black-forest-labs/flux-1.1-pro", "--aspect-ratio", "4:3")
    assert emulated.code == 0, emulated.output
    assert len(read_output(tmp_path / "emu")[0]["images"]) == 1
    hf = cli("generate", src, "-o", tmp_path / "hf", "--provider", "hf", "--model", "black-forest-labs/FLUX.1-dev",
             "--base-url", emulator_thread.url, "--size", "512x512", env={"HF_TOKEN": HF_KEY})
    assert hf.code == 0, hf.output
    row = read_output(tmp_path / "hf")[0]
    assert row["images"] and row["pixelmill"]["parameters"] == {"width": 512, "height": 512}
    key_in_no_file(tmp_path / "hf", HF_KEY)
