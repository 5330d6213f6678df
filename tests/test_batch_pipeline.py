"""Batch steps in pipelines, against the emulator's Batch API over loopback: a batch step feeds the next step
(synchronous or batch) as its batches come back, multi-turn edits go one turn per batch round, detach and re-run
continue from the journal, and the output is the synchronous run's in rows and files (save for batch flags and
costs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from pixelmill.api import run_config
from pixelmill.options import PipelineOptions, pipeline_config
from pixelmill.testing import Emulator
from pixelmill.writing.batches import BatchBook
from pixelmill.writing.journal import Journal
from tests.runs import TEST_KEY, cli, prompts, read_output, write_jsonl


@pytest.fixture
def emu(emulator_thread: Emulator) -> Emulator:
    emulator_thread.configure(batch_latency=0.3)
    return emulator_thread


def _pipeline(tmp_path: Path, emu: Emulator, *, first: bool, second: bool, name: str = "pipe",
              **limits: Any) -> Path:
    model = {"provider": "openai", "model": "gpt-image-1-mini", "base_url": emu.openai_base_url, "quality": "low"}
    steps = [
        {"name": "product", "task": "generate", "model": model, "prompt": "A photo of {prompt}.",
         "output_field": "product_image", **({"batch": True} if first else {})},
        {"name": "marble", "task": "edit", "model": model, "images": "{product_image}",
         "prompt": "Put this product on a marble table.", "output_field": "marble_image",
         **({"batch": True} if second else {})},
    ]
    body = {"source": "in.jsonl", "id_field": "id", "steps": steps,
            "limits": {"batch_poll": 0.05, "retry_base": 0.01, "retry_cap": 0.05, **limits}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path


def _rows(tmp_path: Path, n: int) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{**row, "id": f"p{i}"} for i, row in enumerate(prompts(n))])


def _run(path: Path, out: Path, notices: list[str] | None = None, **options: Any) -> int:
    config = pipeline_config(path, PipelineOptions(output=out, api_key=TEST_KEY, **options))
    return run_config(config, notice=(notices.append if notices is not None else lambda _: None)).exit_code


def _same_as_sync(tmp_path: Path, emu: Emulator, batched: Path, batch_steps: set[str]) -> None:
    """The batch run's output is the synchronous run's: the same rows, fields and image files; the batch steps
    flagged `batch` at half the price."""
    plain = _pipeline(tmp_path, emu, first=False, second=False, name="plain")
    assert _run(plain, tmp_path / "sync") == 0
    sync, out = read_output(tmp_path / "sync"), read_output(batched)
    assert len(out) == len(sync)
    for row, expected in zip(out, sync, strict=True):
        assert {k: v for k, v in row.items() if k != "pixelmill"} == \
            {k: v for k, v in expected.items() if k != "pixelmill"}
        for field in ("product_image", "marble_image"):
            [path] = row[field]
            assert (batched / path).stat().st_size > 0
        for step in ("product", "marble"):
            meta, want = row["pixelmill"][step], expected["pixelmill"][step]
            assert meta["status"] == want["status"] == "done"
            assert meta.get("batch", False) == (step in batch_steps)
            share = 0.5 if step in batch_steps else 1.0
            assert meta["cost_usd"] == pytest.approx(want["cost_usd"] * share, abs=1e-6)


def test_batch_generate_then_sync_edit(emu: Emulator, tmp_path: Path) -> None:
    _rows(tmp_path, 5)
    path = _pipeline(tmp_path, emu, first=True, second=False)
    assert _run(path, tmp_path / "run") == 0
    assert emu.batches.counters.batches_created["openai"] == 1
    assert sorted(emu.batches.counters.billed("openai")) == [f"r{i:09d}" for i in range(1, 6)]
    _same_as_sync(tmp_path, emu, tmp_path / "run", {"product"})


def test_batch_generate_then_batch_edit_with_batch_flag(emu: Emulator, tmp_path: Path) -> None:
    _rows(tmp_path, 4)
    path = _pipeline(tmp_path, emu, first=False, second=False)
    assert _run(path, tmp_path / "run", batch=True) == 0  # --batch: every step that can be batched
    counters = emu.batches.counters
    assert counters.batches_created["openai"] == 2
    assert sorted(counters.billed("openai")) == sorted([f"r{i:09d}" for i in range(1, 5)]
                                                       + [f"r{i:09d}s1" for i in range(1, 5)])
    assert not counters.billed_twice("openai")
    _same_as_sync(tmp_path, emu, tmp_path / "run", {"product", "marble"})


def test_sync_generate_then_batch_edit(emu: Emulator, tmp_path: Path) -> None:
    _rows(tmp_path, 4)
    path = _pipeline(tmp_path, emu, first=False, second=True)
    assert _run(path, tmp_path / "run") == 0
    assert emu.batches.counters.batches_created["openai"] == 1
    assert sorted(emu.batches.counters.billed("openai")) == [f"r{i:09d}s1" for i in range(1, 5)]
    _same_as_sync(tmp_path, emu, tmp_path / "run", {"marble"})


def test_rows_of_a_returned_batch_go_on_before_a_slower_batch_of_the_same_step_ends(emu: Emulator,
                                                                                     tmp_path: Path) -> None:
    emu.configure(batch_fates=("normal", "slow"))  # batch 2 (rows 3-4 of step 1) takes ten times as long
    _rows(tmp_path, 4)
    path = _pipeline(tmp_path, emu, first=True, second=True, batch_max_lines=2)
    notices: list[str] = []
    assert _run(path, tmp_path / "run", notices) == 0
    journal = Journal.open(tmp_path / "run")
    book = BatchBook(journal)
    steps = {entry.seq: (entry.step, entry.task) for entry in book.batches()}
    assert steps == {1: ("product", "generate"), 2: ("product", "generate"), 3: ("marble", "edit"),
                     4: ("marble", "edit")}
    rows_of = {seq: sorted(row for _, row in book.lines(seq)) for seq in steps}
    journal.close()
    assert rows_of[3] == rows_of[1] and rows_of[4] == rows_of[2]
    # Batch 1's rows were sent on to step 2 (batch 3) while batch 2 was still running.
    [submitted] = [i for i, n in enumerate(notices) if n.startswith("batch 3 submitted")]
    [ended] = [i for i, n in enumerate(notices) if n.startswith("batch 2 (") and ": completed," in n]
    assert submitted < ended
    assert all(r["pixelmill"]["marble"]["status"] == "done" for r in read_output(tmp_path / "run"))
    assert not emu.batches.counters.billed_twice("openai")


def _conversation_rows(tmp_path: Path) -> Path:
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (40, 40), "red").save(tmp_path / "pics" / "a.png", format="PNG")
    turns = ["make it blue", "add a hat", "put it on a beach"]
    rows = [{"id": "three", "images": "pics/a.png",
             "conversations": [{"role": "user", "content": t} for t in turns]},
            {"id": "one", "images": "pics/a.png", "prompt": "make it green"},
            {"id": "two", "images": "pics/a.png",
             "conversations": [{"role": "user", "content": t} for t in turns[:2]]}]
    return write_jsonl(tmp_path / "in.jsonl", rows)


def test_multi_turn_edits_go_one_turn_per_batch_round(emu: Emulator, tmp_path: Path) -> None:
    src = _conversation_rows(tmp_path)
    args = ("edit", src, "--base-url", emu.openai_base_url, "--id-field", "id", "--quality", "low", "--quiet")
    assert cli(*args, "-o", tmp_path / "sync").code == 0
    result = cli(*args, "-o", tmp_path / "run", "--batch")
    assert result.code == 0, result.output
    counters = emu.batches.counters
    assert counters.batches_created["openai"] == 3  # one round per turn of the longest conversation
    assert sorted(counters.billed("openai")) == sorted([
        "r000000001", "r000000001t1", "r000000001t2", "r000000002", "r000000003", "r000000003t1"])
    assert not counters.billed_twice("openai")
    out, sync = read_output(tmp_path / "run"), read_output(tmp_path / "sync")
    for row, expected in zip(out, sync, strict=True):
        assert row["output_image"] == expected["output_image"]  # the last turn's images, named as sync names them
        assert (tmp_path / "run" / row["output_image"][0]).stat().st_size > 0
        meta, want = row["pixelmill"], expected["pixelmill"]
        assert meta["status"] == "done" and meta["batch"] is True
        assert meta.get("turns") == want.get("turns")  # each turn's prompt, images and text, as sync logs them
        assert meta["cost_usd"] == pytest.approx(want["cost_usd"] / 2, abs=1e-6)  # rounded to 6 places
    # Every turn's images were written, as the synchronous run writes them.
    assert sorted(p.name for p in (tmp_path / "run" / "images" / "edit").iterdir()) == \
        sorted(p.name for p in (tmp_path / "sync" / "images" / "edit").iterdir())


def test_detach_and_rerun_a_pipeline_until_every_batch_is_collected(emu: Emulator, tmp_path: Path) -> None:
    _rows(tmp_path, 3)
    path = _pipeline(tmp_path, emu, first=True, second=True)
    args = ("run", path, "-o", tmp_path / "run", "--quiet")
    first = cli(*args, "--detach")
    assert first.code == 4, first.output
    assert "run the same command again to collect" in first.output
    assert emu.batches.counters.batches_created["openai"] == 1
    assert [r["pixelmill"]["product"]["status"] for r in read_output(tmp_path / "run")] == ["pending"] * 3
    codes = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.4)
        codes.append(cli(*args, "--detach").code)
        if codes[-1] != 4:
            break
    assert codes[-1] == 0 and set(codes[:-1]) <= {4}
    assert emu.batches.counters.batches_created["openai"] == 2  # step 1's batch, then step 2's
    out = read_output(tmp_path / "run")
    assert [(r["pixelmill"]["product"]["status"], r["pixelmill"]["marble"]["status"]) for r in out] == \
        [("done", "done")] * 3
    assert not emu.batches.counters.billed_twice("openai")
    assert cli(*args).code == 0  # nothing left: nothing sent
    assert emu.batches.counters.batches_created["openai"] == 2


def test_a_batch_step_on_a_provider_without_batches_is_refused_naming_it(emu: Emulator, tmp_path: Path) -> None:
    _rows(tmp_path, 2)
    body = {"source": "in.jsonl", "steps": [
        {"name": "painted", "model": {"provider": "fal", "model": "fal-ai/flux/schnell",
                                      "base_url": emu.jobs_base_url}, "batch": True}]}
    path = tmp_path / "fal.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    result = cli("run", path, "-o", tmp_path / "run", env={"FAL_KEY": "k" * 20})
    assert result.code == 2
    assert "step 'painted': batch: fal has no batch API" in result.output
    assert not emu.batches.counters.batches_created and not emu.batches.counters.files_uploaded


def test_ctrl_c_while_a_pipelines_batch_runs_exits_3_and_the_rerun_goes_on(emu: Emulator, tmp_path: Path) -> None:
    import signal

    from tests.runs import cli_process

    emu.configure(batch_fates=("slow",), batch_latency=0.5)  # answered after 5 s
    _rows(tmp_path, 3)
    path = _pipeline(tmp_path, emu, first=True, second=False)
    args = ("run", path, "-o", tmp_path / "run", "--quiet")
    proc = cli_process(*args)
    deadline = time.monotonic() + 60
    while emu.batches.counters.batches_created["openai"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert b"1 batch(es) keep running at the provider" in err and b"run the same command again to collect" in err
    assert [r["pixelmill"]["product"]["status"] for r in read_output(tmp_path / "run")] == ["pending"] * 3
    again = cli(*args)
    assert again.code == 0, again.output
    assert emu.batches.counters.batches_created["openai"] == 1
    assert [(r["pixelmill"]["product"]["status"], r["pixelmill"]["marble"]["status"])
            for r in read_output(tmp_path / "run")] == [("done", "done")] * 3


def test_a_generate_steps_conversations_generate_then_edit_in_batches_of_each_task(emu: Emulator,
                                                                                   tmp_path: Path) -> None:
    rows = [{"id": "a", "conversations": [{"role": "user", "content": "a red fox"},
                                          {"role": "user", "content": "give it a scarf"}]},
            {"id": "b", "prompt": "a blue bird"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    args = ("generate", src, "--base-url", emu.openai_base_url, "--id-field", "id", "--quality", "low", "--quiet")
    assert cli(*args, "-o", tmp_path / "sync").code == 0
    result = cli(*args, "-o", tmp_path / "run", "--batch")
    assert result.code == 0, result.output
    journal = Journal.open(tmp_path / "run")
    tasks = [(entry.task, entry.lines) for entry in BatchBook(journal).batches()]
    journal.close()
    assert tasks == [("generate", 2), ("edit", 1)]  # a batch has one endpoint: turn 2 edits turn 1's image
    out, sync = read_output(tmp_path / "run"), read_output(tmp_path / "sync")
    assert [r["images"] for r in out] == [r["images"] for r in sync]
    assert out[0]["pixelmill"]["turns"] == sync[0]["pixelmill"]["turns"]
    assert all(r["pixelmill"]["status"] == "done" for r in out)


def test_a_conversation_a_synchronous_run_left_after_turn_one_goes_on_in_a_batch(emu: Emulator,
                                                                                 tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (40, 40), "red").save(tmp_path / "pics" / "a.png", format="PNG")
    turns = [{"role": "user", "content": t} for t in ("make it blue", "add a hat")]
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "c", "images": "pics/a.png", "conversations": turns}])
    args = ("edit", src, "--base-url", emu.openai_base_url, "--id-field", "id", "--quality", "low", "--quiet")
    emu.configure(fail_after=1, fail_with="auth")  # turn 1 is answered, turn 2 stops the run
    assert cli(*args, "-o", tmp_path / "run").code == 3
    [row] = read_output(tmp_path / "run")
    assert row["pixelmill"]["status"] == "pending"
    emu.configure(fail_after=None)
    result = cli(*args, "-o", tmp_path / "run", "--batch")
    assert result.code == 0, result.output
    assert sorted(emu.batches.counters.billed("openai")) == ["r000000001t1"]  # only turn 2 went into a batch
    assert cli(*args, "-o", tmp_path / "sync").code == 0
    [row], [sync] = read_output(tmp_path / "run"), read_output(tmp_path / "sync")
    assert row["output_image"] == sync["output_image"]
    assert [(t["prompt"], t["images"]) for t in row["pixelmill"]["turns"]] == \
        [(t["prompt"], t["images"]) for t in sync["pixelmill"]["turns"]]
