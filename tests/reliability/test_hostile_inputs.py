"""Hostile input rows fail their row, never the run: each kind below once raised in the middle of a run, which
ended with no output.jsonl, and every re-run crashed at the same row. Each run here is a real `pixelmill`
process on the emulator; a bad row must be a failed row of kind `input` naming its line (or row) and field,
and the output must hold every row."""

from __future__ import annotations

import io
import os
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pixelmill.reading import jsonio
from pixelmill.reading.images import data_url
from pixelmill.testing import Emulator
from pixelmill.writing.parquet import write_parquet_from
from tests.reliability.hostile_runs import error_of, output_rows, run_process, status_of


def png(width: int = 32, height: int = 32, noise: bool = False) -> bytes:
    img = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)) if noise \
        else Image.new("RGB", (width, height), (200, 30, 30))
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=0)
    return out.getvalue()


def test_csv_cell_holding_a_2mb_data_url_is_edited(emulator_thread: Emulator, tmp_path: Path) -> None:
    """The csv module refuses fields over 128 KiB by default; a data URL of an ordinary photo is larger."""
    big = data_url(png(840, 840, noise=True))
    assert len(big) > 2_000_000
    (tmp_path / "small.png").write_bytes(png())
    src = tmp_path / "in.csv"
    src.write_text(f'prompt,images\nfirst,small.png\nsecond,"{big}"\nthird,small.png\n')
    finished = run_process(emulator_thread, "edit", src, tmp_path / "run")
    assert finished.code == 0, finished.stderr
    out = output_rows(tmp_path / "run")
    assert status_of(out) == ["done", "done", "done"]
    assert out[1]["images"] == big  # the input row comes back unchanged
    assert emulator_thread.count(endpoint="edits") == 3


def test_csv_row_with_more_values_than_the_header(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("prompt,id\na cat,1\na dog, with a comma,2\n\na cow,3\na hen\n")
    finished = run_process(emulator_thread, "generate", src, tmp_path / "run")
    assert finished.code == 1, finished.stderr
    out = output_rows(tmp_path / "run")
    assert status_of(out) == ["done", "failed", "done", "done"]
    error = error_of(out[1])
    assert error["kind"] == "input"
    assert error["message"].startswith("row 1 (line 3): has 3 values but the header names 2 columns")
    assert out[1]["pixelmill"]["line"] == 3
    assert out[3]["prompt"] == "a hen" and out[3]["id"] is None  # fewer values: the missing column is null
    assert emulator_thread.count(endpoint="generations") == 3


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


JSONL_LINES: list[tuple[str, str | None]] = [  # (line, None when the row runs, else words its error holds)
    ('{"prompt": "first"}', None),
    ('{"prompt": "lone \\ud800 surrogate"}', "line 2: field 'prompt' is not valid UTF-8 text"),
    ('{"prompt": "c", "id": 123456789012345678901234567890, "meta": {"note": ["x\\udc00"]}}',
     "line 3: field 'meta.note[0]' is not valid UTF-8 text"),
    ('{"prompt": "d", "id": ' + "9" * 5000 + "}", "line 4: field 'id' holds a number of more than 4300 digits"),
    ('{"prompt": "e", "n": 12345678901234567890123, "x": ' + _nested(5000) + "}", "line 5: not valid JSON"),
    ('{"prompt": "f", "x": ' + _nested(1000) + "}", "line 6: field 'x' is nested more than 500 levels deep"),
    ('{"prompt": "a NUL \\u0000 inside is text"}', None),
    ('{"prompt": 7}', "must be text, got int"),
    ('{"prompt": ["a", "list"]}', "must be text, got list"),
    ('{"prompt": {"a": "dict"}}', "must be text, got dict"),
    ('{"conversations": [{"role": "user", "content": [null, {"type": "text", "text": null}]}]}',
     "'conversations[0].content' must be text, got NoneType"),
    ('{"conversations": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}',
     "conversations[0]: a text part must hold text, got int"),
    ('{"conversations": [null]}', "conversations[0] must be an object"),
    ('{"prompt": "last", "images": null, "id": null}', None),
]


def test_jsonl_rows_of_every_hostile_shape(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(line for line, _ in JSONL_LINES) + "\n")
    for _attempt in range(2):  # a re-run (a resume) meets the same rows and finishes too
        finished = run_process(emulator_thread, "generate", src, tmp_path / "run")
        assert finished.code == 1, finished.stderr
        out = output_rows(tmp_path / "run")
        assert len(out) == len(JSONL_LINES)
        for number, (row, (_, words)) in enumerate(zip(out, JSONL_LINES, strict=True), start=1):
            if words is None:
                assert row["pixelmill"]["status"] == "done", (number, row["pixelmill"])
                continue
            error = error_of(row)
            assert error["kind"] == "input" and words in error["message"], (number, error)
            if words.startswith("line"):  # unreadable rows: only the pixelmill object, naming the line
                assert set(row) == {"pixelmill"} and row["pixelmill"]["line"] == number
    assert emulator_thread.count(endpoint="generations") == 3  # the good rows, once: the re-run sends nothing


def test_json_array_of_hostile_elements(emulator_thread: Emulator, tmp_path: Path) -> None:
    """Non-objects, a lone surrogate, a broken element (the next ones are still read), NaN, and a file cut off
    inside its last element."""
    src = tmp_path / "in.json"
    src.write_text('[{"prompt": "a"}, 1, {"prompt": "b\\ud800"}, {"prompt": oops, "x": [1, "]"]},\n'
                   '{"prompt": "c", "n": NaN}, {"prompt": "d"}, {"prompt": "cut off')
    finished = run_process(emulator_thread, "generate", src, tmp_path / "run")
    assert finished.code == 1, finished.stderr
    out = output_rows(tmp_path / "run")
    assert status_of(out) == ["done", "failed", "failed", "failed", "failed", "done", "failed"]
    messages = [error_of(row)["message"] for row in out if row["pixelmill"]["status"] == "failed"]
    assert messages[0] == "element 1: expected a JSON object, got int"
    assert messages[1].startswith("element 2: field 'prompt' is not valid UTF-8 text")
    assert messages[2].startswith("element 3: not valid JSON")
    assert messages[3].startswith("element 4: not valid JSON") and "NaN" in messages[3]
    assert messages[4].startswith("element 6: not valid JSON")
    assert [row["pixelmill"].get("row") for row in out if row["pixelmill"]["status"] == "failed"] == [1, 2, 3, 4, 6]


def test_parquet_output_of_rows_whose_types_differ(emulator_thread: Emulator, tmp_path: Path) -> None:
    """A prompt that is a number in one row and text in another, an id beyond 64 bits, an unreadable first
    line (a row holding only `pixelmill`): Arrow cannot hold them in one column type; every row is written."""
    src = tmp_path / "in.jsonl"
    src.write_text('{oops\n{"prompt": "a", "id": 1}\n{"prompt": 5, "id": "two"}\n{"prompt": ["x"]}\n'
                   '{"prompt": "b", "id": 123456789012345678901234567890}\n')
    finished = run_process(emulator_thread, "generate", src, tmp_path / "run", "--format", "parquet")
    assert finished.code == 1, finished.stderr
    table = pq.read_table(tmp_path / "run" / "output.parquet")
    assert table.num_rows == 5
    assert {"prompt", "id", "images", "pixelmill"} <= set(table.column_names)
    rows = table.to_pylist()
    assert [r["prompt"] for r in rows] == [None, "a", "5", '["x"]', "b"]
    assert [r["id"] for r in rows] == [None, "1", "two", None, "123456789012345678901234567890"]
    status = [orjson.loads(r["pixelmill"])["status"] for r in rows]
    assert status == ["failed", "done", "failed", "failed", "done"]
    assert len(rows[1]["images"]) == 1 and rows[2]["images"] == []


def test_parquet_source_with_bad_text_binary_and_nested_nulls(emulator_thread: Emulator, tmp_path: Path) -> None:
    bad_text = pa.array([b"fine", b"\xff\xfe not UTF-8", b"also fine"], pa.binary()).view(pa.string())
    table = pa.table({
        "prompt": ["a", "b", "c"],
        "note": bad_text,
        "blob": [b"\x00\xff", b"\x89PNG", None],
        "nested": [{"a": None}, None, {"a": [None]}],
    }, schema=pa.schema([("prompt", pa.string()), ("note", pa.string()), ("blob", pa.binary()),
                         ("nested", pa.struct([("a", pa.list_(pa.string()))]))]))
    src = tmp_path / "in.parquet"
    pq.write_table(table, src)
    for fmt in ("jsonl", "parquet"):
        finished = run_process(emulator_thread, "generate", src, tmp_path / fmt, "--format", fmt)
        assert finished.code == 1, finished.stderr
    out = output_rows(tmp_path / "jsonl")
    assert status_of(out) == ["done", "failed", "done"]
    assert error_of(out[1])["message"].startswith("row 1: field 'note' cannot be read")
    assert out[0]["blob"] == "AP8=" and out[2]["nested"] == {"a": [None]}
    assert pq.read_table(tmp_path / "parquet" / "output.parquet").num_rows == 3


def test_writers_never_write_text_that_is_not_utf8(tmp_path: Path) -> None:
    """Lone surrogates can reach the writers in pixelmill's own fields (a hostile server's header, a file
    name): output.jsonl stays valid UTF-8 that a strict reader accepts, and Parquet is written."""
    row = {"id": 2**70, "pixelmill": {"request_ids": ["req_\udc80"], "text": "x\ud800"}, "note": "\udcff"}
    line = jsonio.dumps(row, newline=True)
    parsed = orjson.loads(line)  # orjson refuses invalid UTF-8 and lone surrogates
    assert parsed["id"] == 2**70 and parsed["pixelmill"]["request_ids"] == ["req_\ufffd"]
    target = tmp_path / "out.parquet"
    write_parquet_from(target, lambda: [row, {"id": 1, "pixelmill": {}, "note": "ok"}])
    rows = pq.read_table(target).to_pylist()
    assert [r["note"] for r in rows] == ["\ufffd", "ok"] and rows[0]["id"] == str(2**70)
