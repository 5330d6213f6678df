"""`--batch` on OpenAI against the emulator's Batch API over loopback: lines in input order, images written as
synchronous runs write them, cost at the batch rate, refusals and errors mapped to rows by custom_id, splitting,
detach (exit 4) and collect, and resume that never puts a row in two live batches nor bills a line twice."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from pixelmill.testing import Emulator
from pixelmill.writing.batches import BatchBook
from pixelmill.writing.journal import Journal
from tests.runs import cli, cli_process, prompts, read_output, run_api, write_jsonl

FAST = {"batch_poll": 0.05}


@pytest.fixture
def emu(emulator_thread: Emulator) -> Emulator:
    emulator_thread.configure(batch_latency=0.3)
    return emulator_thread


def test_generate_batch_end_to_end(emu: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [
        *prompts(4), {"prompt": "a banned thing [[fault:moderation]]"}, {"prompt": "p [[fault:server_error]]"}])
    sync = run_api(emu, src, tmp_path / "sync", quality="low")
    report = run_api(emu, src, tmp_path / "run", quality="low", batch=True, engine=FAST)
    assert report.exit_code == 1  # two rows failed, recorded
    out = read_output(tmp_path / "run")
    assert [r["prompt"] for r in out] == [r["prompt"] for r in read_output(tmp_path / "sync")]
    for row in out[:4]:
        meta = row["pixelmill"]
        assert meta["status"] == "done"
        [path] = row["images"]
        assert path.startswith("images/generate/row") and (tmp_path / "run" / path).stat().st_size > 0
    sync_rows = read_output(tmp_path / "sync")
    for batch_row, sync_row in zip(out[:4], sync_rows[:4], strict=True):
        assert batch_row["images"] == sync_row["images"]  # the same file names as a synchronous run
        assert batch_row["pixelmill"]["cost_usd"] == pytest.approx(sync_row["pixelmill"]["cost_usd"] / 2)
    refused = out[4]["pixelmill"]
    assert refused["status"] == "failed" and refused["error"]["kind"] == "refused"
    assert out[5]["pixelmill"]["status"] == "failed" and out[5]["pixelmill"]["error"]["http_status"] == 500
    counters = emu.batches.counters
    assert counters.batches_created["openai"] == 1
    assert sum(counters.billed("openai").values()) == 4 and not counters.billed_twice("openai")
    assert sync.exit_code == 1


def test_split_by_lines_and_rerun_sends_nothing(emu: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(7))
    assert run_api(emu, src, tmp_path / "run", batch=True, engine={**FAST, "batch_max_lines": 3}).exit_code == 0
    assert emu.batches.counters.batches_created["openai"] == 3
    assert run_api(emu, src, tmp_path / "run", batch=True, engine=FAST).exit_code == 0
    assert emu.batches.counters.batches_created["openai"] == 3
    assert all(r["pixelmill"]["status"] == "done" for r in read_output(tmp_path / "run"))


def test_detach_exits_4_and_the_same_command_collects(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_latency=5.0)  # still running when the second --detach looks, however slow the machine
    src = write_jsonl(tmp_path / "in.jsonl", prompts(5))
    args = ("generate", src, "-o", tmp_path / "run", "--base-url", emu.openai_base_url, "--batch", "--quiet")
    first = cli(*args, "--detach")
    assert first.code == 4, first.output
    assert "run the same command again to collect" in first.output
    assert [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")] == ["pending"] * 5
    # Detached again while the batch runs: nothing new is submitted (every row is in a live batch).
    assert cli(*args, "--detach").code == 4
    assert emu.batches.counters.batches_created["openai"] == 1
    second = cli(*args)
    assert second.code == 0, second.output
    assert [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")] == ["done"] * 5
    assert emu.batches.counters.batches_created["openai"] == 1
    assert not emu.batches.counters.billed_twice("openai")


def test_expired_batch_keeps_its_answers_and_resubmits_the_rest(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_fates=("expire",), batch_window=0.3)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(6))
    notices: list[str] = []
    from pixelmill.api import run_config
    from pixelmill.options import build_config, job_options
    from tests.runs import TEST_KEY

    config = build_config("generate", src, job_options(output=tmp_path / "run", base_url=emu.openai_base_url,
                                                        api_key=TEST_KEY, batch=True, engine=FAST))
    assert run_config(config, notice=notices.append).exit_code == 0  # resubmitted in the same run
    assert any("line(s) unanswered stay pending" in n for n in notices)
    [resubmitted] = [n for n in notices if n.startswith("resubmitted ")]
    assert 0 < int(resubmitted.split()[1]) < 6
    assert [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")] == ["done"] * 6
    assert emu.batches.counters.batches_created["openai"] == 2
    assert sum(emu.batches.counters.billed("openai").values()) == 6
    assert not emu.batches.counters.billed_twice("openai")
    assert_no_row_in_two_live_batches(emu)


def test_a_kill_between_create_and_journaling_creates_no_second_batch(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_create_hold=30.0)  # the batch exists at once; its answer would come 30 s later
    src = write_jsonl(tmp_path / "in.jsonl", prompts(4))
    args = ("generate", src, "-o", tmp_path / "run", "--base-url", emu.openai_base_url, "--batch", "--quiet")
    proc = cli_process(*args)
    kill_when_created(emu, proc, 1)
    assert emu.batches.counters.batches_created["openai"] == 1
    journal = Journal.open(tmp_path / "run")
    [entry] = BatchBook(journal).batches()
    assert entry.state == "uploaded" and entry.batch_id is None  # the kill came before the id was journaled
    journal.close()
    emu.configure(batch_create_hold=0.0)
    again = cli(*args)
    assert again.code == 0, again.output
    assert "not created again" in again.output
    assert emu.batches.counters.batches_created["openai"] == 1
    assert [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")] == ["done"] * 4
    assert not emu.batches.counters.billed_twice("openai")


def test_a_create_whose_answer_is_lost_is_found_by_listing(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_lost_creates=1)  # created, then the connection reset before the answer
    src = write_jsonl(tmp_path / "in.jsonl", prompts(4))
    result = cli("generate", src, "-o", tmp_path / "run", "--base-url", emu.openai_base_url, "--batch")
    assert result.code == 0, result.output
    assert "its create's answer was lost: found by listing" in result.output
    counters = emu.batches.counters
    assert counters.batches_created["openai"] == 1 and emu.batches.lost_creates == 1
    assert [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")] == ["done"] * 4
    assert sum(counters.billed("openai").values()) == 4 and not counters.billed_twice("openai")


def kill_when_created(emu: Emulator, proc: subprocess.Popen[bytes], created: int) -> None:
    """SIGKILL `proc` the moment the emulator has created its `created`-th batch (held answer: not yet recorded)."""
    deadline = time.monotonic() + 60
    while emu.batches.counters.batches_created["openai"] < created and proc.poll() is None:
        assert time.monotonic() < deadline, "no batch was created"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -9


def test_refused_where_no_batch_api(emu: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    result = cli("generate", src, "-o", tmp_path / "run", "--provider", "fal", "--base-url", emu.jobs_base_url,
                 "--batch", env={"FAL_KEY": "k" * 20})
    assert result.code == 2 and "--batch" in result.output
    assert not emu.batches.counters.batches_created and not emu.batches.counters.files_uploaded


def test_ctrl_c_while_waiting_exits_3_and_the_batch_keeps_running(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_fates=("slow",), batch_latency=0.5)  # answered after 5 s
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    args = ("generate", src, "-o", tmp_path / "run", "--base-url", emu.openai_base_url, "--batch", "--quiet")
    proc = cli_process(*args)
    deadline = time.monotonic() + 60
    while emu.batches.counters.batches_created["openai"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert b"keep running at the provider" in err and b"run the same command again to collect" in err
    assert b"or `pixelmill cancel RUNDIR` to cancel them" in err
    assert [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")] == ["pending"] * 3
    again = cli(*args)
    assert again.code == 0, again.output
    assert emu.batches.counters.batches_created["openai"] == 1
    assert [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")] == ["done"] * 3


def test_status_shows_each_live_batch(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_fates=("stall",))
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    assert cli("generate", src, "-o", tmp_path / "run", "--base-url", emu.openai_base_url, "--batch", "--detach",
               "--quiet").code == 4
    shown = cli("status", tmp_path / "run")
    assert shown.code == 0, shown.output
    [line] = [ln for ln in shown.output.splitlines() if ln.startswith("batch 1 batch_")]
    assert ": validating, 0 done, 0 failed of 3 lines, " in line and " old" in line


def test_edit_batch_carries_its_input_images(emu: Emulator, tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "pics").mkdir()
    for name, color in (("a", "red"), ("b", "blue")):
        Image.new("RGB", (40, 40), color).save(tmp_path / "pics" / f"{name}.png", format="PNG")
    rows = [{"id": "one", "images": "pics/a.png", "prompt": "make it blue"},
            {"id": "two", "images": ["pics/a.png", "pics/b.png"], "prompt": "combine these"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = cli("edit", src, "-o", tmp_path / "run", "--base-url", emu.openai_base_url, "--id-field", "id",
                 "--batch", "--quiet")
    assert result.code == 0, result.output
    out = read_output(tmp_path / "run")
    assert [r["output_image"] for r in out] == [["images/edit/one_0.png"], ["images/edit/two_0.png"]]
    assert all((tmp_path / "run" / r["output_image"][0]).stat().st_size > 0 for r in out)
    assert emu.batches.counters.batches_created["openai"] == 1
    assert sorted(emu.batches.counters.billed("openai")) == ["r000000001", "r000000002"]


def test_a_line_is_checked_as_a_synchronous_call_is_before_it_joins_a_batch(emu: Emulator, tmp_path: Path) -> None:
    """What a synchronous call refuses before sending (a prompt over the model's limit, more input images than it
    takes) fails its row here, naming the field: it never reaches a batch, the other rows are batched."""
    from PIL import Image

    (tmp_path / "pics").mkdir()
    Image.new("RGB", (40, 40), "red").save(tmp_path / "pics" / "a.png", format="PNG")
    rows = [{"id": "fine", "images": "pics/a.png", "prompt": "make it blue"},
            {"id": "long", "images": "pics/a.png", "prompt": "blue " * 7000},
            {"id": "many", "images": ["pics/a.png"] * 17, "prompt": "combine these"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = cli("edit", src, "-o", tmp_path / "run", "--base-url", emu.openai_base_url, "--id-field", "id",
                 "--batch", "--quiet")
    assert result.code == 1, result.output
    out = {r["id"]: r["pixelmill"] for r in read_output(tmp_path / "run")}
    assert out["fine"]["status"] == "done", out["fine"]
    for name, field, words in (("long", "prompt", "takes at most 32000"), ("many", "images", "takes at most 16")):
        assert out[name]["status"] == "failed" and out[name]["error"]["kind"] == "input", out[name]
        assert out[name]["error"]["field"] == field and words in out[name]["error"]["message"], out[name]
    assert sorted(emu.batches.counters.billed("openai")) == ["r000000001"]  # only the fine row was a line


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_at_random_moments_then_rerun_bills_no_line_twice(emu: Emulator, tmp_path: Path,
                                                                   seed: int) -> None:
    import random

    rng = random.Random(seed)
    emu.configure(batch_latency=0.6)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(9))
    args = ("generate", src, "-o", tmp_path / "run", "--base-url", emu.openai_base_url, "--batch", "--quiet")
    created = 0
    for moment in ("after_create", "lost_create", "random", "random", "random"):
        if moment == "after_create":  # killed right after the batch was created, before its id is journaled
            emu.configure(batch_create_hold=30.0)
            proc = cli_process(*args)
            kill_when_created(emu, proc, created + 1)
            emu.configure(batch_create_hold=0.0)
        elif moment == "lost_create":  # the next create's answer is reset, and the process killed at random
            emu.configure(batch_lost_creates=1)
            proc = cli_process(*args)
            time.sleep(rng.uniform(0.2, 2.0))
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=120)
        else:
            proc = cli_process(*args)
            time.sleep(rng.uniform(0.2, 2.0))
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=120)
        created = emu.batches.counters.batches_created["openai"]
    final = cli(*args)
    assert final.code == 0, final.output
    assert [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")] == ["done"] * 9
    counters = emu.batches.counters
    assert not counters.billed_twice("openai")
    assert sum(counters.billed("openai").values()) == 9
    assert_no_row_in_two_live_batches(emu)
    journal = Journal.open(tmp_path / "run")
    book = BatchBook(journal)
    assert book.batches(live_only=True) == []
    journal.close()


def assert_no_row_in_two_live_batches(emu: Emulator) -> None:
    """Two batches the emulator holds share a custom_id only when the earlier had ended before the later was
    created."""
    import orjson

    batches = sorted((b for b in emu.batches.batches.values() if b.api == "openai"), key=lambda b: b.created)
    ids = {b.id: {orjson.loads(ln)["custom_id"] for ln in b.input_path.read_bytes().splitlines() if ln.strip()}
           for b in batches}
    terminal = ("completed", "failed", "expired", "cancelled")
    for i, early in enumerate(batches):
        ended = min((t for state, t in early.times.items() if state in terminal), default=None)
        for late in batches[i + 1:]:
            if ids[early.id] & ids[late.id]:
                assert ended is not None and ended <= late.created, (early.id, late.id)


def test_a_batch_failing_validation_says_why_and_its_rows_go_again(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(batch_fates=("fail",))
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    result = cli("generate", src, "-o", tmp_path / "run", "--base-url", emu.openai_base_url, "--batch")
    assert result.code == 0, result.output
    assert "failed validation: " in result.output and "resubmitted 3 row(s)" in result.output
    assert [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")] == ["done"] * 3
    assert emu.batches.counters.batches_created["openai"] == 2


def test_estimate_batch_prices_at_the_batch_rate(tmp_path: Path) -> None:
    import re

    src = write_jsonl(tmp_path / "in.jsonl", prompts(10))
    online = cli("estimate", src, "--quality", "low")
    batch = cli("estimate", src, "--quality", "low", "--batch")
    assert online.code == 0 and batch.code == 0, batch.output

    def total(text: str) -> float:
        [line] = [ln for ln in text.splitlines() if ln.strip().startswith("generate  openai")]
        return float(re.findall(r"\$([0-9.]+)", line)[1])

    assert total(batch.output) == pytest.approx(total(online.output) / 2, abs=1e-4)
    assert "priced at the batch rate (--batch)" in batch.output


def test_a_run_without_batch_refuses_rows_in_live_batches_instead_of_paying_twice(emu: Emulator,
                                                                                  tmp_path: Path) -> None:
    emu.configure(batch_latency=30.0)  # the batch is still running when the next command comes
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    args = ("generate", src, "-o", tmp_path / "run", "--base-url", emu.openai_base_url, "--quiet")
    assert cli(*args, "--batch", "--detach").code == 4
    journal_before = (tmp_path / "run" / ".pixelmill" / "journal.sqlite").read_bytes()
    sent_before = emu.count()
    result = cli(*args)  # --batch forgotten
    assert result.code == 2, result.output
    assert "3 row(s) of step 'generate' are in 1 live batch(es) of an earlier --batch run" in \
        " ".join(result.output.split())
    assert emu.count() == sent_before  # nothing sent, one by one or otherwise
    assert (tmp_path / "run" / ".pixelmill" / "journal.sqlite").read_bytes() == journal_before


def test_a_completed_batch_whose_answer_line_is_damaged_fails_that_row_and_never_pays_it_twice(
        emu: Emulator, tmp_path: Path) -> None:
    """The output file of a completed batch comes back with one line cut short: that line ran and may have been
    billed, so its row fails as an unknown outcome charged at its maximum, and is not sent again in a new batch
    (which would pay it twice); the other rows are done."""
    import time

    emu.configure(batch_latency=0.2)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(4))
    args = ("generate", src, "-o", tmp_path / "run", "--base-url", emu.openai_base_url, "--batch", "--quiet")
    assert cli(*args, "--detach").code == 4
    [batch] = emu.batches.batches.values()
    deadline = time.monotonic() + 30
    while batch.status != "completed" and time.monotonic() < deadline:
        emu.batches.advance(batch)
        time.sleep(0.05)
    assert batch.status == "completed" and batch.output_path is not None
    lines = batch.output_path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4
    batch.output_path.write_bytes(b"".join(lines[:3]) + lines[3][:40] + b"\n")  # the last line cut short
    result = cli(*args)
    assert result.code == 1, result.output
    out = read_output(tmp_path / "run")
    statuses = [r["pixelmill"]["status"] for r in out]
    assert statuses.count("done") == 3 and statuses.count("failed") == 1
    [lost] = [r["pixelmill"] for r in out if r["pixelmill"]["status"] == "failed"]
    assert lost["error"]["kind"] == "unknown_outcome" and "may have been billed" in lost["error"]["message"]
    assert lost["cost_usd"] > 0  # charged at its maximum, as a call whose answer was lost
    counters = emu.batches.counters
    assert counters.batches_created["openai"] == 1  # not sent again in a second batch
    assert sum(counters.billed("openai").values()) == 4 and not counters.billed_twice("openai")
