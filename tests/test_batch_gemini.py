"""`--batch` with `--provider gemini` against the emulator's File API and Batch Mode over loopback: lines
`{key, request}` (edit lines with their images inline), the resumable upload in chunks, images written as
synchronous runs write them at the batch rate, refusals and error lines mapped to rows by key, expired and failed
batches (no results) resubmitted, detach and collect, a lost create answer and kills that create no second batch
and bill no line twice."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from pixelmill.errors import RateLimited, Rejected, TransientError
from pixelmill.providers.base import ImageRequest, ProviderSettings
from pixelmill.providers.batchwire import LineAnswer
from pixelmill.providers.gemini.batch import GeminiBatchWire, summary
from pixelmill.providers.gemini.provider import GeminiProvider
from pixelmill.testing import Emulator
from pixelmill.writing.batches import BatchBook
from pixelmill.writing.journal import Journal
from tests.runs import cli, cli_process, prompts, read_output, write_jsonl

MODEL = "gemini-3.1-flash-image"
KEY = "gemini-test-key-0123456789"
ENV = {"GEMINI_API_KEY": KEY}
FAST = {"batch_poll": 0.05, "retry_base": 0.01, "retry_cap": 0.05}


@pytest.fixture
def emu(emulator_thread: Emulator) -> Emulator:
    emulator_thread.configure(batch_latency=0.3)
    return emulator_thread


def run(emu: Emulator, src: Path, out: Path, task: str = "generate", notices: list[str] | None = None,
        **options: Any) -> Any:
    from pixelmill.api import run_config
    from pixelmill.options import build_config, job_options

    config = build_config(task, src, job_options(output=out, provider="gemini", model=MODEL, api_key=KEY,
                                                 base_url=emu.gemini_base_url, engine=FAST, **options))
    return run_config(config, notice=(notices if notices is not None else []).append)


def args(emu: Emulator, src: Path, out: Path) -> tuple[str | Path, ...]:
    return ("generate", src, "-o", out, "--provider", "gemini", "--model", MODEL, "--base-url", emu.gemini_base_url,
            "--batch", "--quiet")


def statuses(rundir: Path) -> list[str]:
    return [r["pixelmill"]["status"] for r in read_output(rundir)]


def test_generate_batch_writes_what_a_sync_run_writes(emu: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [
        *prompts(4), {"prompt": "say no [[fault:no_image]]"}, {"prompt": "blocked [[fault:prompt_blocked]]"},
        {"prompt": "p [[fault:server_error]]"}])
    sync = run(emu, src, tmp_path / "sync", max_retries=0)
    batch = run(emu, src, tmp_path / "run", batch=True)
    assert sync.exit_code == 1 and batch.exit_code == 1  # three rows failed, recorded
    out, sync_rows = read_output(tmp_path / "run"), read_output(tmp_path / "sync")
    assert [r["prompt"] for r in out] == [r["prompt"] for r in sync_rows]
    for batch_row, sync_row in zip(out[:4], sync_rows[:4], strict=True):
        assert batch_row["pixelmill"]["status"] == "done"
        assert batch_row["images"] == sync_row["images"]  # the same file names as a synchronous run
        assert (tmp_path / "run" / batch_row["images"][0]).stat().st_size > 0
        assert batch_row["pixelmill"]["cost_usd"] == pytest.approx(sync_row["pixelmill"]["cost_usd"] / 2)
        assert batch_row["pixelmill"]["usage"] == sync_row["pixelmill"]["usage"]
    for batch_row, sync_row in zip(out[4:6], sync_rows[4:6], strict=True):  # refusals, as the sync call's
        error = batch_row["pixelmill"]["error"]
        assert error["kind"] == "refused" and error["reason"] == sync_row["pixelmill"]["error"]["reason"]
    assert out[4]["pixelmill"]["error"]["reason"] == "NO_IMAGE"
    server = out[6]["pixelmill"]["error"]
    assert server["kind"] == "transient" and server["http_status"] == 500
    counters = emu.batches.counters
    assert counters.batches_created["gemini"] == 1 and counters.files_uploaded["gemini"] == 1
    assert sum(counters.billed("gemini").values()) == 6 and not counters.billed_twice("gemini")


def test_edit_batch_carries_its_input_images_inline(emu: Emulator, tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "pics").mkdir()
    for name, color in (("a", "red"), ("b", "blue")):
        Image.new("RGB", (40, 40), color).save(tmp_path / "pics" / f"{name}.png", format="PNG")
    rows = [{"id": "one", "images": "pics/a.png", "prompt": "make it blue"},
            {"id": "two", "images": ["pics/a.png", "pics/b.png"], "prompt": "combine these"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    sync = run(emu, src, tmp_path / "sync", task="edit", id_field="id")
    assert run(emu, src, tmp_path / "run", task="edit", id_field="id", batch=True).exit_code == 0
    assert sync.exit_code == 0
    out = read_output(tmp_path / "run")
    assert [r["output_image"] for r in out] == [["images/edit/one_0.png"], ["images/edit/two_0.png"]]
    assert [r["output_image"] for r in out] == [r["output_image"] for r in read_output(tmp_path / "sync")]
    assert all((tmp_path / "run" / r["output_image"][0]).stat().st_size > 0 for r in out)
    [batch] = [b for b in emu.batches.batches.values() if b.api == "gemini"]
    lines = [orjson.loads(ln) for ln in batch.input_path.read_bytes().splitlines()]
    inline = [[p["inlineData"]["mimeType"] for p in ln["request"]["contents"][0]["parts"] if "inlineData" in p]
              for ln in lines]
    assert inline == [["image/png"], ["image/png", "image/png"]]
    assert sorted(emu.batches.counters.billed("gemini")) == ["r000000001", "r000000002"]


def test_an_expired_batch_returns_nothing_and_every_row_is_resubmitted(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_fates=("expire",), batch_window=0.2)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(6))
    notices: list[str] = []
    assert run(emu, src, tmp_path / "run", notices=notices, batch=True).exit_code == 0
    assert any("BATCH_STATE_EXPIRED: 6 line(s) unanswered stay pending" in n for n in notices), notices
    assert "resubmitted 6 row(s) that an expired, cancelled or failed batch left unanswered" in notices
    assert statuses(tmp_path / "run") == ["done"] * 6
    counters = emu.batches.counters
    assert counters.batches_created["gemini"] == 2
    assert sum(counters.billed("gemini").values()) == 6 and not counters.billed_twice("gemini")


def test_a_failed_batch_says_why_and_its_rows_go_again(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_fates=("fail",))
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    result = cli(*args(emu, src, tmp_path / "run")[:-1], env=ENV)
    assert result.code == 0, result.output
    assert "failed validation: Enqueued token limit reached" in result.output
    assert "resubmitted 3 row(s)" in result.output
    assert statuses(tmp_path / "run") == ["done"] * 3
    assert emu.batches.counters.batches_created["gemini"] == 2


def test_the_wire_uploads_in_chunks_finds_by_display_name_and_cancels(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_fates=("stall",))
    provider = GeminiProvider(ProviderSettings(base_url=emu.gemini_base_url, api_key=KEY), {})
    wire = GeminiBatchWire(provider)
    wire.chunk_bytes = 100
    request = ImageRequest(task="generate", model=MODEL, prompt="a lighthouse",
                           params={"responseModalities": ["IMAGE"]})
    path = tmp_path / "batch.jsonl"
    path.write_bytes(b"".join(wire.line(f"r{i}", request) for i in range(5)))

    async def drive() -> None:
        try:
            file_id = await wire.upload(path, "pixelmill-test-00001")
            stored = emu.batches.files[file_id]
            assert stored.path.read_bytes() == path.read_bytes() and stored.display_name == "pixelmill-test-00001"
            created = await wire.create(file_id, request, "pixelmill-test-00001")
            assert created.state == "running" and created.status == "BATCH_STATE_PENDING"
            assert created.expires_at is not None and created.expires_at > time.time() + 47 * 3600
            found = await wire.find("pixelmill-test-00001", None)
            assert found is not None and found.id == created.id
            assert await wire.find("pixelmill-test-99999", None) is None
            cancelled = await wire.cancel(created.id)
            assert cancelled.state == "cancelled" and cancelled.status == "BATCH_STATE_CANCELLED"
            assert [a async for a in wire.answers(cancelled, tmp_path)] == []
            with pytest.raises(Rejected, match="the batch or file is gone at the provider"):
                await wire.get("batches/no-such-batch")
        finally:
            await provider.aclose()

    asyncio.run(drive())
    chunks = emu.records(endpoint="upload")
    assert len(chunks) == 1 + -(-path.stat().st_size // 100)  # start, then every 100-byte chunk
    assert all(r.key_sent for r in chunks)  # the upload URL is the base URL's host: the key goes with it


def test_detach_exits_4_and_the_same_command_collects(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_latency=5.0)  # still running when the second --detach looks, however slow the machine
    src = write_jsonl(tmp_path / "in.jsonl", prompts(5))
    first = cli(*args(emu, src, tmp_path / "run"), "--detach", env=ENV)
    assert first.code == 4, first.output
    assert "run the same command again to collect" in first.output
    assert statuses(tmp_path / "run") == ["pending"] * 5
    assert cli(*args(emu, src, tmp_path / "run"), "--detach", env=ENV).code == 4
    assert emu.batches.counters.batches_created["gemini"] == 1  # every row is in a live batch: nothing new
    second = cli(*args(emu, src, tmp_path / "run"), env=ENV)
    assert second.code == 0, second.output
    assert statuses(tmp_path / "run") == ["done"] * 5
    assert emu.batches.counters.batches_created["gemini"] == 1
    assert not emu.batches.counters.billed_twice("gemini")


def test_a_create_whose_answer_is_lost_is_found_by_display_name(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_fates=("reset",))
    src = write_jsonl(tmp_path / "in.jsonl", prompts(4))
    assert run(emu, src, tmp_path / "run", batch=True).exit_code == 0
    assert statuses(tmp_path / "run") == ["done"] * 4
    counters = emu.batches.counters
    assert counters.batches_created["gemini"] == 1
    assert sum(counters.billed("gemini").values()) == 4 and not counters.billed_twice("gemini")
    [create] = emu.records(endpoint="batchGenerateContent")
    assert create.status is None  # the connection was cut: the client never had the answer


def test_a_kill_between_create_and_journaling_creates_no_second_batch(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_create_hold=30.0)  # the batch exists at once; its answer would come 30 s later
    src = write_jsonl(tmp_path / "in.jsonl", prompts(4))
    proc = cli_process(*args(emu, src, tmp_path / "run"), env=ENV)
    deadline = time.monotonic() + 60
    while emu.batches.counters.batches_created["gemini"] < 1 and proc.poll() is None:
        assert time.monotonic() < deadline, "no batch was created"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # created at the provider, its id not journaled yet
    proc.communicate(timeout=60)
    assert proc.returncode == -9
    journal = Journal.open(tmp_path / "run")
    [entry] = BatchBook(journal).batches()
    assert entry.state == "uploaded" and entry.batch_id is None  # the kill came before the id was journaled
    journal.close()
    emu.configure(batch_create_hold=0.0)
    again = cli(*args(emu, src, tmp_path / "run"), env=ENV)
    assert again.code == 0, again.output
    assert "not created again" in again.output
    assert emu.batches.counters.batches_created["gemini"] == 1
    assert statuses(tmp_path / "run") == ["done"] * 4
    assert not emu.batches.counters.billed_twice("gemini")


def test_sigkill_while_waiting_then_rerun_collects_the_same_batch(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_fates=("slow",), batch_latency=0.4)  # answered after 4 s
    src = write_jsonl(tmp_path / "in.jsonl", prompts(5))
    proc = cli_process(*args(emu, src, tmp_path / "run"), env=ENV)
    deadline = time.monotonic() + 60
    while emu.batches.counters.batches_created["gemini"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # polling now
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -9
    again = cli(*args(emu, src, tmp_path / "run"), env=ENV)
    assert again.code == 0, again.output
    assert statuses(tmp_path / "run") == ["done"] * 5
    counters = emu.batches.counters
    assert counters.batches_created["gemini"] == 1
    assert sum(counters.billed("gemini").values()) == 5 and not counters.billed_twice("gemini")


def test_error_lines_map_as_the_sync_call_would_raise() -> None:
    provider = GeminiProvider(ProviderSettings(api_key=KEY), {})
    wire = GeminiBatchWire(provider)
    bad = wire.error(LineAnswer("r1", {"key": "r1", "error": {"code": 3, "message": "bad aspect ratio",
                                                                "status": "INVALID_ARGUMENT"}}), MODEL)
    assert isinstance(bad, Rejected) and bad.http_status == 400 and "bad aspect ratio" in str(bad)
    busy = wire.error(LineAnswer("r2", {"key": "r2", "error": {"code": 14, "message": "overloaded"}}), MODEL)
    assert isinstance(busy, TransientError) and busy.http_status == 503
    limited = wire.error(LineAnswer("r3", {"key": "r3", "error": {"status": "RESOURCE_EXHAUSTED"}}), MODEL)
    assert isinstance(limited, RateLimited)
    leaked = wire.error(LineAnswer("r4", {"key": "r4", "error": {"code": 3, "message": f"key {KEY} bad"}}), MODEL)
    assert KEY not in str(leaked)
    assert wire.unanswered(LineAnswer("r5", {"key": "r5", "error": {"code": 1, "status": "CANCELLED"}}))
    assert not wire.unanswered(LineAnswer("r6", {"key": "r6", "error": {"code": 13}}))


def test_states_in_either_spelling_and_an_unknown_end() -> None:
    def op(state: str, **more: Any) -> dict[str, Any]:
        return {"name": "batches/x", "metadata": {"state": state, "createTime": "2026-11-29T10:00:00Z",
                                                   "batchStats": {"requestCount": "3",
                                                                  "successfulRequestCount": "2"}}, **more}

    done = summary(op("JOB_STATE_SUCCEEDED", done=True, response={"responsesFile": "files/batch-x"}))
    assert (done.state, done.total, done.completed, done.files) == ("completed", 3, 2, ["files/batch-x"])
    assert summary(op("BATCH_STATE_EXPIRED", done=True)).state == "expired"
    assert summary(op("BATCH_STATE_PENDING")).state == "running"
    failed = summary(op("BATCH_STATE_SOMETHING_NEW", done=True, error={"code": 3, "message": "bad file"}))
    assert failed.state == "failed" and failed.errors == "bad file" and failed.files == []


def test_refused_for_vertex_and_providers_without_a_batch_api(emu: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    vertex = cli("generate", src, "-o", tmp_path / "v", "--provider", "gemini", "--model", MODEL, "--base-url",
                 "https://us-central1-aiplatform.googleapis.com", "--batch", env=ENV)
    assert vertex.code == 2 and "Vertex AI" in vertex.output
    fal = cli("generate", src, "-o", tmp_path / "f", "--provider", "fal", "--base-url", emu.jobs_base_url,
              "--batch", env={"FAL_KEY": "fal-test-key"})
    assert fal.code == 2 and "OpenAI's Batch API and Gemini Batch Mode only" in fal.output


def test_estimate_batch_prices_gemini_at_the_batch_rate(tmp_path: Path) -> None:
    import re

    src = write_jsonl(tmp_path / "in.jsonl", prompts(10))
    online = cli("estimate", src, "--provider", "gemini", "--model", MODEL)
    batch = cli("estimate", src, "--provider", "gemini", "--model", MODEL, "--batch")
    assert online.code == 0 and batch.code == 0, batch.output

    def total(text: str) -> float:
        [line] = [ln for ln in text.splitlines() if ln.strip().startswith("generate  gemini")]
        return float(re.findall(r"\$([0-9.]+)", line)[1])

    assert total(online.output) > 0
    assert total(batch.output) == pytest.approx(total(online.output) / 2, abs=1e-4)
    assert "priced at the batch rate (--batch)" in batch.output


def test_a_key_the_api_refuses_aborts_with_exit_3_and_says_what_to_do(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(api_keys={"the-only-good-key"})
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    result = cli(*args(emu, src, tmp_path / "run"), env=ENV)
    assert result.code == 3, result.output
    assert "GEMINI_API_KEY" in result.output and KEY not in result.output
    assert statuses(tmp_path / "run") == ["pending"] * 3
    assert emu.batches.counters.files_uploaded["gemini"] == 0
