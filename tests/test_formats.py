"""Every source format users bring, and every output format, through a real run on the emulator."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import orjson
import pytest
from PIL import Image

from pixelmill.testing import Emulator
from tests.runs import cli, prompts, read_output

ROWS = prompts(5)


def _write(tmp_path: Path, fmt: str) -> Path:
    if fmt == "jsonl":
        path = tmp_path / "in.jsonl"
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in ROWS))
    elif fmt == "json":
        path = tmp_path / "in.json"
        path.write_text(json.dumps(ROWS, indent=2))
    elif fmt == "csv":
        path = tmp_path / "in.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["prompt"])
            writer.writeheader()
            writer.writerows(ROWS)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "in.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    else:
        import datasets

        path = tmp_path / "saved"
        datasets.Dataset.from_list(ROWS).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "hf"])
def test_every_source_format(emulator_thread: Emulator, tmp_path: Path, fmt: str) -> None:
    src = _write(tmp_path, fmt)
    result = cli("generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url, "--quiet")
    assert result.code == 0, result.output
    out = read_output(tmp_path / "run")
    assert [r["prompt"] for r in out] == [r["prompt"] for r in ROWS]
    assert sorted(r.prompt for r in emulator_thread.records()) == sorted(r["prompt"] for r in ROWS)


def test_json_array_is_streamed_across_chunk_borders(tmp_path: Path) -> None:
    from pixelmill.reading.records import _read_json_array

    rows = [{"prompt": "x" * (i * 7 % 50), "i": i, "nested": {"a": [1, {"b": "]}"}]}} for i in range(300)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(rows))
    got = [r.data for r in _read_json_array(path, chunk=64)]
    assert got == rows


def test_hf_hub_source_fails_clearly_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config
    import huggingface_hub.constants

    # The machine has no route to the hub; offline mode makes the failure immediate instead of a slow retry.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    result = cli("generate", "hf:nobody/nothing-here:train", "-o", tmp_path / "run", "--quiet")
    assert result.code == 2
    assert "cannot load 'nobody/nothing-here'" in result.output


def test_hf_output_with_image_features_referenced_and_embedded(emulator_thread: Emulator, tmp_path: Path) -> None:
    import datasets

    src = _write(tmp_path, "jsonl")
    for embed in (False, True):
        run = tmp_path / f"run{embed}"
        flags = ["--embed-images"] if embed else []
        result = cli("generate", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "--quiet",
                     "--format", "hf", *flags)
        assert result.code == 0, result.output
        data = datasets.load_from_disk(str(run / "output.hf"))
        assert data.num_rows == 5
        assert isinstance(data.features["images"].feature, datasets.Image)
        image = data[0]["images"][0]
        assert image.size == (1024, 1024)
        assert orjson.loads(data[0]["pixelmill"])["status"] == "done"


def test_hf_image_dicts_and_bytes_as_edit_inputs(emulator_thread: Emulator, tmp_path: Path) -> None:
    import datasets

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), "teal").save(buf, format="PNG")
    data = datasets.Dataset.from_dict({"images": [{"bytes": buf.getvalue(), "path": "a.png"}],
                                       "prompt": ["recolour it"]})
    data = data.cast_column("images", datasets.Image())
    data.save_to_disk(str(tmp_path / "saved"))
    result = cli("edit", tmp_path / "saved", "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url,
                 "--quiet")
    assert result.code == 0, result.output
    assert emulator_thread.records(endpoint="edits")[0].input_images == 1
