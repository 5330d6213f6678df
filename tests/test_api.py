"""The Python API drives the same engine as the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

import pixelmill
from pixelmill.errors import ConfigError
from tests.runs import prompts, read_output, write_jsonl


def test_generate_on_the_in_process_emulator(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    report = pixelmill.generate(src, output=tmp_path / "run", provider="emulator", size="1024x1024", n=2)
    assert report.exit_code == 0
    assert report.counts.done == 3 and report.stats.images == 6
    assert [len(r["images"]) for r in read_output(tmp_path / "run")] == [2, 2, 2]


def test_options_are_the_command_lines(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(1))
    with pytest.raises(TypeError, match="unknown option"):
        pixelmill.generate(src, output=tmp_path / "run", provider="emulator", sizes="1024x1024")
    with pytest.raises(ConfigError, match="quality"):
        pixelmill.generate(src, output=tmp_path / "run", provider="emulator", quality="ultra")
