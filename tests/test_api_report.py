"""The report gives the rows back: streamed, as a pandas DataFrame, as a datasets.Dataset with Image features."""

from __future__ import annotations

from pathlib import Path

import pytest

import pixelmill
from tests.runs import prompts


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_rows_come_back_as_a_dataframe(fmt: str, tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    rows = [*prompts(3), {"title": "no prompt here"}]
    report = pixelmill.generate(rows, output=tmp_path / "run", provider="emulator", format=fmt)
    assert report.exit_code == 1 and report.output.name == f"output.{fmt}"
    frame = report.to_pandas()
    assert len(frame) == 4 and list(frame["prompt"][:3]) == [r["prompt"] for r in rows[:3]]
    assert [m["status"] for m in frame["pixelmill"]] == ["done", "done", "done", "failed"]
    assert frame["pixelmill"][3]["error"]["kind"] == "input"
    assert all((tmp_path / "run" / paths[0]).is_file() for paths in frame["images"][:3])
    assert [row["pixelmill"]["status"] for row in report.iter_rows()] == ["done", "done", "done", "failed"]


def test_to_dataset_has_image_features_that_decode_from_anywhere(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.chdir(tmp_path)
    report = pixelmill.generate(prompts(2), output="run", provider="emulator", size="512x512", n=2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = report.to_dataset()
    assert isinstance(data.features["images"].feature, datasets.Image)
    first = data[0]["images"]
    assert len(first) == 2 and first[0].size == (512, 512)
    assert data[1]["prompt"] == "prompt number 1"


def test_embedded_images_become_image_bytes(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    report = pixelmill.generate(prompts(1), output=tmp_path / "run", provider="emulator", size="512x512",
                                embed_images=True)
    assert next(report.iter_rows())["images"][0].startswith("data:image/png;base64,")
    assert report.to_dataset()[0]["images"][0].size == (512, 512)
