"""Parquet and HF outputs as the data ecosystem reads them: `Image` features that `datasets` decodes (from any
working directory), the flat `pixelmill_*` columns that duckdb and pandas filter on, the input images of edits as
images too, and failed and pending rows still present with their status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pixelmill.testing import Emulator
from tests.runs import cli, write_jsonl

REFUSED = "a cat [[fault:moderation]]"
ROWS = [{"prompt": "a red fox"}, {"prompt": REFUSED}, {"prompt": "a blue whale"}]


def _generate(emu: Emulator, src: Path, run: Path, *flags: str) -> int:
    return cli("generate", src, "-o", run, "--base-url", emu.openai_base_url, "--quiet", "--max-retries", "0",
               *flags).code


def _load_parquet(path: Path, cache: Path) -> object:
    import datasets

    return datasets.load_dataset("parquet", data_files=str(path), cache_dir=str(cache), split="train")


def test_parquet_images_decode_in_datasets_from_another_directory(emulator_thread: Emulator, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    run = tmp_path / "run"
    assert _generate(emulator_thread, src, run, "--format", "parquet") == 1  # one row refused
    schema = pq.read_schema(run / "output.parquet")
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["images"] == {"feature": {"_type": "Image"}, "_type": "Sequence"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # referenced images are found wherever the reader stands
    data = _load_parquet(run / "output.parquet", tmp_path / "cache")
    assert isinstance(data, datasets.Dataset)
    assert isinstance(data.features["images"].feature, datasets.Image)
    rows = list(data)
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in ROWS]
    assert isinstance(rows[0]["images"][0], Image.Image) and rows[0]["images"][0].size == (1024, 1024)
    assert rows[1]["images"] == [] and rows[1]["pixelmill_status"] == "failed"
    assert rows[1]["pixelmill_error_kind"] == "refused" and rows[1]["pixelmill_cost_usd"] in (None, 0.0)
    assert orjson.loads(rows[1]["pixelmill"])["error"]["kind"] == "refused"  # DESIGN 2.7: still a JSON string
    assert rows[2]["pixelmill_model"] == "gpt-image-2" and rows[2]["pixelmill_cost_usd"] > 0


def test_parquet_queries_on_status_in_duckdb_pandas_and_pyarrow(emulator_thread: Emulator, tmp_path: Path) -> None:
    import duckdb
    import pandas as pd

    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    run = tmp_path / "run"
    assert _generate(emulator_thread, src, run, "--format", "parquet") == 1
    path = str(run / "output.parquet")
    failed = duckdb.sql(f"SELECT prompt, pixelmill_error_kind FROM '{path}' WHERE pixelmill_status = 'failed'")
    assert failed.fetchall() == [(REFUSED, "refused")]
    spent = duckdb.sql(f"SELECT sum(pixelmill_cost_usd), count(*) FROM '{path}' WHERE pixelmill_status = 'done'")
    [(total, done)] = spent.fetchall()
    assert done == 2 and total > 0
    # The JSON column answers too, through duckdb's JSON functions.
    kinds = duckdb.sql(f"SELECT pixelmill->>'$.error.kind' FROM '{path}' WHERE pixelmill_status = 'failed'")
    assert kinds.fetchall() == [("refused",)]
    # duckdb reads the image struct: a path per image of the done rows.
    paths = duckdb.sql(f"SELECT images[1].path FROM '{path}' WHERE pixelmill_status = 'done'").fetchall()
    assert all(Path(p).is_file() for (p,) in paths) and len(paths) == 2
    frame = pd.read_parquet(path)
    assert frame[frame.pixelmill_status == "failed"].prompt.tolist() == [REFUSED]
    assert frame.pixelmill_status.tolist() == ["done", "failed", "done"]
    table = pq.read_table(path)
    assert table.column("pixelmill_status").to_pylist() == ["done", "failed", "done"]
    assert table.schema.field("images").type.value_type.names == ["bytes", "path"]


def test_embedded_parquet_travels_without_its_run_directory(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:1])
    run = tmp_path / "run"
    assert _generate(emulator_thread, src, run, "--format", "parquet", "--embed-images") == 0
    [row] = pq.read_table(run / "output.parquet").to_pylist()
    [image] = row["images"]
    assert image["path"] == "images/generate/row000000_0.png"  # relative to RUNDIR, as in JSONL
    assert image["bytes"] == (run / image["path"]).read_bytes()
    moved = tmp_path / "moved.parquet"
    shutil.move(run / "output.parquet", moved)
    shutil.rmtree(run)  # the images folder is gone: the bytes are in the file
    [loaded] = list(_load_parquet(moved, tmp_path / "cache"))  # type: ignore[call-overload]
    assert loaded["images"][0].size == (1024, 1024)


def test_pending_rows_are_in_the_parquet_with_their_status(emulator_thread: Emulator, tmp_path: Path) -> None:
    import duckdb

    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"p{i}"} for i in range(6)])
    run = tmp_path / "run"
    code = _generate(emulator_thread, src, run, "--format", "parquet", "--quality", "low", "--size", "1024x1024",
                     "--max-cost", "0.03", "--concurrency", "1")
    assert code == 3  # the budget stopped the run
    path = str(run / "output.parquet")
    counts = dict(duckdb.sql(f"SELECT pixelmill_status, count(*) FROM '{path}' GROUP BY 1").fetchall())
    assert counts.get("pending", 0) >= 1 and sum(counts.values()) == 6
    pending = duckdb.sql(f"SELECT len(images) FROM '{path}' WHERE pixelmill_status = 'pending'").fetchall()
    assert {n for (n,) in pending} == {0}


def _png(path: Path, size: tuple[int, int], color: str) -> Path:
    Image.new("RGB", size, color).save(path, format="PNG")
    return path


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_edit_inputs_are_images_beside_the_outputs(emulator_thread: Emulator, tmp_path: Path, fmt: str) -> None:
    import datasets

    (tmp_path / "pics").mkdir()
    _png(tmp_path / "pics" / "a.png", (40, 40), "red")
    _png(tmp_path / "pics" / "b.png", (48, 48), "blue")
    rows = [{"images": "pics/a.png", "prompt": "make it green"},
            {"images": ["pics/a.png", "pics/b.png"], "prompt": "combine them"},
            {"images": "pics/missing.png", "prompt": "no such file"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    run = tmp_path / "run"
    result = cli("edit", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "--quiet", "--format", fmt)
    assert result.code == 1, result.output  # the missing file fails its row
    if fmt == "hf":
        data = datasets.load_from_disk(str(run / "output.hf"))
    else:
        data = _load_parquet(run / "output.parquet", tmp_path / "cache")  # type: ignore[assignment]
    # A row holds a list: the input column is a list of images; each (inputs, output) pair is ready to train on.
    assert isinstance(data.features["images"].feature, datasets.Image)
    assert isinstance(data.features["output_image"].feature, datasets.Image)
    out = list(data)
    assert [im.size for im in out[0]["images"]] == [(40, 40)]
    assert [im.size for im in out[1]["images"]] == [(40, 40), (48, 48)]
    assert isinstance(out[0]["output_image"][0], Image.Image) and len(out[1]["output_image"]) == 1
    assert out[2]["images"] == [] and out[2]["pixelmill_status"] == "failed"
    assert out[2]["pixelmill_error_kind"] == "input"


def test_single_input_images_make_an_image_column(emulator_thread: Emulator, tmp_path: Path) -> None:
    import datasets

    _png(tmp_path / "a.png", (40, 40), "red")
    src = write_jsonl(tmp_path / "in.jsonl", [{"images": "a.png", "prompt": "recolour"}])
    run = tmp_path / "run"
    result = cli("edit", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "--quiet",
                 "--format", "parquet", "--embed-images")
    assert result.code == 0, result.output
    [row] = pq.read_table(run / "output.parquet").to_pylist()
    assert row["images"] == {"bytes": (tmp_path / "a.png").read_bytes(), "path": "a.png"}
    data = _load_parquet(run / "output.parquet", tmp_path / "cache")
    assert isinstance(data.features["images"], datasets.Image)  # type: ignore[attr-defined]


def test_pipeline_has_flat_columns_per_step(emulator_thread: Emulator, tmp_path: Path) -> None:
    import duckdb

    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a lamp"}, {"prompt": REFUSED}])
    (tmp_path / "pipe.yaml").write_text(f"""
source: in.jsonl
output: run
format: parquet
models:
  m: {{provider: openai, model: gpt-image-2, base_url: {emulator_thread.openai_base_url}, quality: low}}
limits: {{max_retries: 0}}
steps:
  - name: draw
    model: m
    output_field: drawn
  - name: touch
    task: edit
    model: m
    images: "{{drawn}}"
    prompt: "Put it on a marble table."
    output_field: touched
""")
    result = cli("run", tmp_path / "pipe.yaml", "--quiet")
    assert result.code == 1, result.output
    path = str(tmp_path / "run" / "output.parquet")
    got = duckdb.sql(f"SELECT pixelmill_status, pixelmill_error_kind, pixelmill_draw_status, pixelmill_touch_status,"
                     f" pixelmill_touch_model, len(touched) FROM '{path}'").fetchall()
    assert got == [("done", None, "done", "done", "gpt-image-2", 1), ("failed", "refused", "failed", "failed", None, 0)]
    cost = duckdb.sql(f"SELECT pixelmill_cost_usd, pixelmill_draw_cost_usd + pixelmill_touch_cost_usd FROM '{path}'"
                      " WHERE pixelmill_status = 'done'").fetchall()
    assert len(cost) == 1 and cost[0][0] == pytest.approx(cost[0][1]) and cost[0][0] > 0


def test_embedded_batches_close_on_their_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory stays flat with embedded images: a batch closes once its image bytes pass BATCH_BYTES, whatever its
    row count, so a row group never holds more than that (plus one row) of images."""
    from pixelmill.writing import parquet
    from pixelmill.writing.image_columns import ImageColumn, ImageLayout

    (tmp_path / "images").mkdir()
    for i in range(10):
        (tmp_path / "images" / f"{i}.png").write_bytes(bytes(1000))
    monkeypatch.setattr(parquet, "BATCH_BYTES", 2500)
    rows = [{"images": [f"images/{i}.png"], "pixelmill": {"status": "done"}} for i in range(10)]
    layout = ImageLayout(outputs=[ImageColumn("images", tmp_path)], embed=True)
    parquet.write_parquet_from(tmp_path / "out.parquet", lambda: iter(rows), layout)
    meta = pq.ParquetFile(tmp_path / "out.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [3, 3, 3, 1]
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [len(r["images"][0]["bytes"]) for r in table] == [1000] * 10
