"""Whole runs on Gemini and Azure: multi-turn chats echo the model's turns (thought signatures included), also
after a resume in the middle of a conversation; Azure deployments through the environment variables."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pixelmill.testing import Emulator
from tests.runs import cli, read_output, write_jsonl

GEMINI_KEY = "gemini-test-key-7a7a7a7a"


def _chat_rows(tmp_path: Path) -> Path:
    Image.new("RGB", (64, 64), "orange").save(tmp_path / "start.png")
    conversation = [{"role": "user", "content": f"step {i}: change it"} for i in range(1, 4)]
    return write_jsonl(tmp_path / "in.jsonl", [
        {"id": f"chat{n}", "images": "start.png", "conversations": conversation} for n in range(2)
    ])


def test_gemini_multi_turn_echoes_signatures_and_resumes_mid_chat(emulator_thread: Emulator,
                                                                  tmp_path: Path) -> None:
    src = _chat_rows(tmp_path)
    args = ("edit", src, "-o", tmp_path / "run", "--provider", "gemini", "--model", "gemini-3.1-flash-image",
            "--base-url", emulator_thread.gemini_base_url, "--id-field", "id", "--concurrency", "1", "--quiet")
    env = {"GEMINI_API_KEY": GEMINI_KEY}
    emulator_thread.configure(faults={"thoughts": 1.0}, fail_after=4, fail_with="auth")
    result = cli(*args, env=env)
    assert result.code == 3  # the 5th call fails: chat0 done (3 turns), chat1 stopped after turn 1
    emulator_thread.configure(fail_after=None)
    result = cli(*args, env=env)
    assert result.code == 0, result.output
    ok = emulator_thread.records(endpoint="generateContent", status=200)
    assert len(ok) == 6  # 2 rows x 3 turns, none sent twice
    assert not emulator_thread.records(status=400, fault=None)  # every echoed signature was accepted
    rows = read_output(tmp_path / "run")
    for row in rows:
        turns = row["pixelmill"]["turns"]
        assert [t["prompt"] for t in turns] == ["step 1: change it", "step 2: change it", "step 3: change it"]
        assert row["output_image"] == turns[-1]["images"]
        assert row["pixelmill"]["provider"] == "gemini"
    assert rows[1]["pixelmill"]["status"] == "done"


def test_gemini_refusals_are_recorded_with_their_reason(emulator_thread: Emulator, tmp_path: Path) -> None:
    rows = [{"prompt": f"p {fault} [[fault:{fault}]]"} for fault in ("no_image", "text_only", "prompt_blocked",
                                                                         "image_safety")]
    src = write_jsonl(tmp_path / "in.jsonl", [*rows, {"prompt": "fine"}])
    result = cli("generate", src, "-o", tmp_path / "run", "--provider", "gemini", "--base-url",
                 emulator_thread.gemini_base_url, "--quiet", env={"GEMINI_API_KEY": GEMINI_KEY})
    assert result.code == 1
    out = read_output(tmp_path / "run")
    reasons = [r["pixelmill"].get("error", {}).get("reason") for r in out]
    assert reasons == ["NO_IMAGE", "text_only", "SAFETY", "IMAGE_SAFETY", None]
    assert all(r["pixelmill"]["error"]["kind"] == "refused" for r in out[:4])
    assert emulator_thread.count(endpoint="generateContent") == 5  # refusals are not retried


def test_azure_deployment_through_the_environment(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(deployments={"prod-images": "gpt-image-1.5"})
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a kite"}])
    env = {"AZURE_OPENAI_ENDPOINT": emulator_thread.azure_endpoint, "AZURE_OPENAI_API_KEY": "azure-key-123456789",
           "OPENAI_API_VERSION": "2025-04-01-preview"}
    result = cli("generate", src, "-o", tmp_path / "run", "--provider", "azure", "--model", "prod-images",
                 "--base-model", "gpt-image-1.5", "--quality", "low", "--quiet", env=env)
    assert result.code == 0, result.output
    [record] = emulator_thread.records()
    assert record.family == "azure" and record.deployment == "prod-images"
    assert record.api_version == "2025-04-01-preview"
    [row] = read_output(tmp_path / "run")
    assert row["pixelmill"]["model"] == "prod-images" and row["pixelmill"]["cost_usd"] > 0
