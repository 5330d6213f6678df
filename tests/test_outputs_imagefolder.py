"""`RUNDIR/metadata.jsonl`: `load_dataset("imagefolder", data_dir=RUNDIR)` gives every row, images decoded, from
any working directory; a row keeps its n images together; failed rows are there with their status."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from PIL import Image

from pixelmill.testing import Emulator
from tests.runs import cli, read_output, write_jsonl

ROWS = [{"prompt": "a red fox", "id": "fox"}, {"prompt": "a cat [[fault:moderation]]", "id": "cat"},
        {"prompt": "a blue whale", "id": "whale"}]


def _load(rundir: Path, cache: Path) -> object:
    import datasets

    return datasets.load_dataset("imagefolder", data_dir=str(rundir), cache_dir=str(cache), split="train")


@pytest.mark.parametrize("embed", [False, True])
def test_imagefolder_loads_the_run_from_another_directory(emulator_thread: Emulator, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, embed: bool) -> None:
    import datasets

    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    run = tmp_path / "run"
    result = cli("generate", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "--quiet", "--n", "2",
                 "--max-retries", "0", "--id-field", "id", *(["--embed-images"] if embed else []))
    assert result.code == 1, result.output
    lines = [orjson.loads(line) for line in (run / "metadata.jsonl").read_bytes().splitlines()]
    assert lines[0]["images_file_names"] == ["images/generate/fox_0.png", "images/generate/fox_1.png"]
    assert "images" not in lines[0]
    # output.jsonl keeps its contract: paths (or data URLs with --embed-images) in the output field.
    assert read_output(run)[0]["images"][0].startswith("data:image/png" if embed else "images/generate/")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = _load(run, tmp_path / "cache")
    assert isinstance(data, datasets.Dataset)
    assert isinstance(data.features["images"].feature, datasets.Image)
    rows = list(data)
    assert [r["id"] for r in rows] == ["fox", "cat", "whale"]  # one row per input row, in input order
    assert [len(r["images"]) for r in rows] == [2, 0, 2]
    assert all(isinstance(im, Image.Image) and im.size == (1024, 1024) for im in rows[0]["images"])
    assert [r["pixelmill_status"] for r in rows] == ["done", "failed", "done"]
    assert rows[1]["pixelmill_error_kind"] == "refused"
    assert orjson.loads(rows[1]["pixelmill"])["status"] == "failed"


def test_edit_run_metadata_names_the_output_field(emulator_thread: Emulator, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (40, 40), "red").save(tmp_path / "a.png")
    src = write_jsonl(tmp_path / "in.jsonl", [{"images": "a.png", "prompt": "make it blue"}])
    run = tmp_path / "run"
    result = cli("edit", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "--quiet")
    assert result.code == 0, result.output
    monkeypatch.chdir(tmp_path)  # beside the input, a.png would be found as a path: it must not matter
    [row] = list(_load(run, tmp_path / "cache"))  # type: ignore[call-overload]
    assert isinstance(row["output_image"][0], Image.Image)
    assert row["images"] == "a.png"  # the input field as it was: imagefolder reads files under RUNDIR only
