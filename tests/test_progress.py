"""The progress display: a live rich display on a terminal, plain lines elsewhere, nothing with --quiet; the
source's rows are counted in the background for the bar, the ETA and the projected spend; a summary ends
every run."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pixelmill.api import run_config
from pixelmill.engine.stats import RunStats
from pixelmill.options import build_config, job_options
from pixelmill.reports.progress import Progress
from pixelmill.reports.status import count_rows
from pixelmill.testing import Emulator
from tests.runs import TEST_KEY, prompts, write_jsonl

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_with(progress_kwargs: dict[str, Any], emu: Emulator, src: Path, out: Path, **options: Any) -> tuple[Any, str]:
    config = build_config("generate", src, job_options(output=out, base_url=emu.openai_base_url, api_key=TEST_KEY,
                                                       engine={"retry_base": 0.01, "retry_cap": 0.02}, **options))
    stats = RunStats()
    stream = io.StringIO()
    progress = Progress(stats, config=config, stream=stream, **progress_kwargs)
    with progress:
        report = run_config(config, stats=stats, notice=progress.notice)
    progress.summary(report, config)
    return report, ANSI.sub("", stream.getvalue() + _console_text(progress_kwargs))


def _console_text(kwargs: dict[str, Any]) -> str:
    console = kwargs.get("console")
    return console.file.getvalue() if console is not None else ""


def test_row_count_of_each_source_format(tmp_path: Path) -> None:
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(b'{"prompt": "a"}\n\n  \n{"prompt": "b"}\n{broken\n{"prompt": "c"}')  # no final newline
    assert count_rows(jsonl) == 4  # blank lines are not rows; a broken line is (a failed row)
    assert count_rows(jsonl, limit=2) == 2
    csv = tmp_path / "a.csv"
    csv.write_text('prompt,id\n"two\nlines",1\nplain,2\n')
    assert count_rows(csv) == 2
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": [f"p{i}" for i in range(37)]}), tmp_path / "a.parquet")
    assert count_rows(tmp_path / "a.parquet") == 37
    (tmp_path / "a.json").write_text('[{"prompt": "a"}, {"prompt": "b"}, 3]')
    assert count_rows(tmp_path / "a.json") == 3
    assert count_rows(tmp_path / "missing.jsonl") is None
    assert count_rows(tmp_path / "a.txt") is None


def test_eta_and_projected_spend() -> None:
    stats = RunStats(total=100, rows_done=15, rows_failed=5, rows_skipped=10, images=15, spent=0.4,
                     spent_before=1.0)
    stats.started = time.monotonic() - 10.0
    progress = Progress(stats, stream=io.StringIO(), tty=False)
    # 20 rows worked in 10 s in this run; 70 rows left.
    assert progress.eta() == pytest.approx(35.0, rel=0.01)
    assert progress.projected() == pytest.approx(1.4 + 0.4 / 20 * 70)
    line = progress.line()
    assert "rows 30/100 (25 done, 5 failed)" in line
    assert "ETA 35s" in line and "$1.4000 spent, ~$2.8000 projected" in line
    unknown = Progress(RunStats(), stream=io.StringIO(), tty=False)
    assert unknown.eta() is None and unknown.projected() is None and "ETA ?" in unknown.line()


def test_remote_jobs_running_are_shown_beside_the_calls_in_flight() -> None:
    stats = RunStats(total=10)
    stats.in_flight, stats.jobs_live = 6, 4
    progress = Progress(stats, stream=io.StringIO(), tty=False)
    assert "6 in flight (4 remote jobs running)" in progress.line()
    stats.jobs_live = 0
    assert "6 in flight |" in progress.line()


def test_live_display_on_a_terminal(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(latency=0.05, faults={"rate_limit": 0.15}, retry_after=0.01, seed=3)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(60))
    console = Console(file=io.StringIO(), force_terminal=True, width=140, color_system="truecolor")
    report, text = run_with({"console": console, "interval": 0.05}, emulator_thread, src, tmp_path / "run",
                            concurrency=4, quality="low", max_cost=5)
    assert report.exit_code == 0
    assert report.stats.total == 60  # counted in the background
    assert re.search(r"\d+%  rows \d+/60", text)
    assert "━" in text  # the bar
    assert re.search(r"\d+ done\s+\d+ failed", text)
    assert re.search(r"\d+ images\s+[\d.]+/min", text)
    assert re.search(r"ETA \d+", text)
    assert "spent $" in text and "projected ~$" in text and "budget $5.00" in text
    assert re.search(r"\d+ x 429", text) and "retries" in text
    assert report.stats.rate_limited > 0
    # The summary follows the display.
    assert "60 rows: 60 done, 0 failed, 0 pending" in text and "this run: 60 images" in text


def test_plain_lines_when_not_a_terminal(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(latency=0.05)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(40))
    report, text = run_with({"interval": 0.05, "tty": False}, emulator_thread, src, tmp_path / "run",
                            concurrency=4, quality="low")
    assert report.exit_code == 0
    lines = [line for line in text.splitlines() if line.startswith("pixelmill: rows ")]
    assert len(lines) >= 3
    assert re.search(r"rows \d+/40 \(\d+ done, 0 failed\) \| \d+ images, \d+/min \| \d+ in flight \| ETA", lines[-1])
    assert "\x1b" not in text and "━" not in text


def test_quiet_prints_only_a_short_summary(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(5))
    report, text = run_with({"quiet": True, "interval": 0.01, "tty": False}, emulator_thread, src,
                            tmp_path / "run", quality="low")
    assert report.exit_code == 0
    assert text.splitlines() == [
        f"pixelmill: run {tmp_path / 'run'}: 5 rows: 5 done, 0 failed, 0 pending",
        f"pixelmill: output: {tmp_path / 'run' / 'output.jsonl'}",
    ]


def test_notices_are_shown(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    _, text = run_with({"tty": False}, emulator_thread, src, tmp_path / "run", model="gpt-image-1.5",
                       quality="low")
    assert "pixelmill: notice: gpt-image-1.5 " in text  # deprecated, or shut down: said before the run
