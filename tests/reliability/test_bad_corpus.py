"""The bad-input corpus (tests/data/bad, made by its make_corpus.py): every kind of bad row and bad file gives
the documented error, naming the row (line) and field, or a correct conversion; the rest of the run goes on.
Big inputs (a 50 MB line, files over the size limits) are made here, in a temporary folder."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from pixelmill.models.table import builtin_table
from pixelmill.reading.images import fit_for_model, inspect_image
from pixelmill.testing import Emulator
from tests.reliability.invariants import assert_every_row_once
from tests.runs import cli, read_output, write_jsonl

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad"
IMAGES = CORPUS / "images"


def run(emu: Emulator, task: str, src: Path, out: Path, *extra: str) -> int:
    result = cli(task, src, "-o", out, "--base-url", emu.openai_base_url, "--quiet", *extra)
    return result.code


def error_of(row: dict) -> dict:
    return row["pixelmill"].get("error") or {}


def test_corpus_is_what_make_corpus_makes() -> None:
    """The committed files are exactly what the script makes: their origin is the script, nothing else."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, data in module.files().items():
        assert (CORPUS / name).read_bytes() == data, f"{name} differs: run tests/data/bad/make_corpus.py"


def test_bad_lines_each_give_their_error(emulator_thread: Emulator, tmp_path: Path) -> None:
    """generate_rows.jsonl: a UTF-8 BOM, CRLF line ends, and one defect a line."""
    assert run(emulator_thread, "generate", CORPUS / "generate_rows.jsonl", tmp_path / "run") == 1
    out = read_output(tmp_path / "run")
    assert len(out) == 12  # 14 lines, two of them blank: blank lines are not rows
    status = [r["pixelmill"].get("status") for r in out]
    assert status[0] == status[11] == "done"
    assert out[0]["prompt"] == "a good row"  # the BOM is not part of the first line
    assert out[11]["prompt"] == "another good row, caf\u00e9 \u65e5\u672c"
    unreadable = {1: ("line 2", "not valid JSON"), 8: ("line 9", "expected a JSON object, got list"),
                  9: ("line 10", "not valid UTF-8 text"), 10: ("line 13", "not valid JSON")}
    for index, (line, words) in unreadable.items():
        assert set(out[index]) == {"pixelmill"}, "a line that cannot be read is a row of its own"
        error = error_of(out[index])
        assert error["kind"] == "input" and error["message"].startswith(f"{line}: {words}")
        assert out[index]["pixelmill"]["line"] == int(line.split()[1])
    field_errors = {2: "no prompt", 3: "blank", 4: "blank", 5: "must be text", 6: "must be text",
                    7: "must be text"}
    for index, words in field_errors.items():
        error = error_of(out[index])
        assert out[index]["pixelmill"]["status"] == "failed"
        assert error["kind"] == "input" and words in error["message"] and error["field"] == "prompt"
        assert out[index]["images"] == []
    assert out[2]["caption"] == "no prompt field" and out[5]["prompt"] == 42  # input rows kept unchanged
    assert emulator_thread.count(endpoint="generations") == 2


EDIT_EXPECTED = {
    "good.png": None,
    "png_named.jpg": None,
    "cmyk.jpg": None,
    "gray16.png": None,
    "animated.gif": None,
    "not_an_image.png": "is not a PNG, JPEG, WebP or GIF image",
    "empty.png": "is empty",
    "truncated.png": "is not a readable image",
    "truncated.jpg": "is not a readable image",
    "bomb.png": "too large to be safe",
    "bomb.jpg": "too large to be safe",
    "bomb.gif": "too large to be safe",
    "missing.png": "not found",
}


def test_bad_and_odd_images_fail_or_convert(emulator_thread: Emulator, tmp_path: Path) -> None:
    assert run(emulator_thread, "edit", CORPUS / "edit_rows.jsonl", tmp_path / "run") == 1
    out = read_output(tmp_path / "run")
    assert [Path(r["images"]).name for r in out] == list(EDIT_EXPECTED)
    for row, (name, words) in zip(out, EDIT_EXPECTED.items(), strict=True):
        meta = row["pixelmill"]
        if words is None:
            assert meta["status"] == "done", (name, meta.get("error"))
            assert len(row["output_image"]) == 1
        else:
            error = error_of(row)
            assert meta["status"] == "failed" and error["kind"] == "input", name
            assert words in error["message"] and error["field"] == "images", (name, error)
            assert row["output_image"] == []
    assert emulator_thread.count(endpoint="edits") == 5  # bad images are never sent
    assert emulator_thread.count(endpoint="edits", input_images=1) == 5


def converted(name: str) -> Image.Image:
    data = (IMAGES / name).read_bytes()
    image = inspect_image(data, name=name, field="images", max_bytes=1 << 30)
    spec = builtin_table().get("gpt-image-2")
    assert spec is not None
    sent = fit_for_model(image, spec, field="images")
    assert (sent.width, sent.height) == (image.width, image.height)
    img = Image.open(io.BytesIO(sent.data))
    assert img.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[sent.mime]
    return img


def test_conversions_keep_the_picture() -> None:
    """What is sent for the odd images: CMYK and 16-bit become 8-bit PNGs of the same colours, an animated GIF its
    first frame with its transparency, and images the model takes as they are go unchanged."""
    cmyk = converted("cmyk.jpg")
    assert cmyk.mode == "RGB" and all(abs(a - b) <= 8 for a, b in zip(cmyk.getpixel((16, 16)), (255, 0, 0),
                                                                          strict=True))
    deep = converted("gray16.png")
    assert deep.mode in ("L", "RGB") and abs(int(deep.convert("L").getpixel((16, 16))) - 40000 // 256) <= 2
    gif = converted("animated.gif")
    assert gif.format == "PNG" and gif.mode == "RGBA" and getattr(gif, "n_frames", 1) == 1
    assert gif.getpixel((20, 20)) == (255, 0, 0, 255)  # the first frame (red), not a later one
    assert gif.getpixel((2, 2))[3] == 0  # the transparent corner stays transparent
    for name in ("good.png", "png_named.jpg"):
        data = (IMAGES / name).read_bytes()
        image = inspect_image(data, name=name, field="images", max_bytes=1 << 30)
        assert image.mime == "image/png"
        spec = builtin_table().get("gpt-image-2")
        assert spec is not None and fit_for_model(image, spec, field="images").data == data


def test_hostile_ids_are_sanitised_inside_rundir(emulator_thread: Emulator, tmp_path: Path) -> None:
    run_dir = tmp_path / "deep" / "run"
    assert run(emulator_thread, "generate", CORPUS / "ids.jsonl", run_dir, "--id-field", "id") == 0
    out = read_output(run_dir)
    paths = [r["images"][0] for r in out]
    assert len(set(paths)) == len(paths) == 15
    images_dir = (run_dir / "images" / "generate").resolve()
    for path in paths:
        assert (run_dir / path).resolve().parent == images_dir
        name = Path(path).name
        assert len(name) <= 100 and name.isascii() and not name.startswith(".")
        assert all(c.isalnum() or c in "._-" for c in name)
    assert paths[8] == "images/generate/row000008_0.png"  # no id: the row's own key
    assert paths[9] == "images/generate/123_0.png"
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert all(p.parts[:2] == ("deep", "run") for p in written), "a file was written outside RUNDIR"


def test_csv_and_json_with_bom_and_crlf(emulator_thread: Emulator, tmp_path: Path) -> None:
    assert run(emulator_thread, "generate", CORPUS / "bom_crlf.csv", tmp_path / "csv") == 1
    out = read_output(tmp_path / "csv")
    assert [r["id"] for r in out] == ["1", "2", "3", "4"]  # the header's first name carries no BOM
    assert [r["pixelmill"]["status"] for r in out] == ["done", "done", "failed", "done"]
    assert out[1]["prompt"] == "two\r\nlines"  # a quoted field keeps its own line break
    assert "blank" in error_of(out[2])["message"]
    assert run(emulator_thread, "generate", CORPUS / "bom.json", tmp_path / "json") == 0
    assert [r["prompt"] for r in read_output(tmp_path / "json")] == ["a cat", "a dog"]


def test_utf16_file_is_refused_line_by_line(emulator_thread: Emulator, tmp_path: Path) -> None:
    """UTF-16 (what some Windows shells write) is not read as text: its lines fail, naming the line, and
    nothing is sent."""
    assert run(emulator_thread, "generate", CORPUS / "utf16.jsonl", tmp_path / "run") == 1
    out = read_output(tmp_path / "run")
    assert error_of(out[0])["message"] == "line 1: not valid UTF-8 text"
    assert all(r["pixelmill"]["error"]["kind"] == "input" for r in out)
    assert emulator_thread.count() == 0


def test_csv_with_non_utf8_row(emulator_thread: Emulator, tmp_path: Path) -> None:
    """A CSV row that is not UTF-8 is one failed row naming its line; the other rows go on."""
    code = run(emulator_thread, "generate", CORPUS / "latin1.csv", tmp_path / "run")
    assert code == 1
    out = read_output(tmp_path / "run")
    assert [r["pixelmill"]["status"] for r in out] == ["done", "failed", "done"]
    assert "UTF-8" in error_of(out[1])["message"] and "3" in error_of(out[1])["message"]


def test_json_array_with_non_utf8_bytes(emulator_thread: Emulator, tmp_path: Path) -> None:
    """A .json input with bytes that are not UTF-8 ends in a clear error, not a traceback."""
    src = tmp_path / "in.json"
    src.write_bytes(b'[{"prompt": "a cat"}, {"prompt": "caf\xe9"}]')
    result = cli("generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url, "--quiet")
    assert result.code in (1, 2)
    assert "UTF-8" in result.output


def test_fifty_megabyte_lines(emulator_thread: Emulator, tmp_path: Path) -> None:
    """A 50 MB prompt is refused by the model's prompt limit; a 50 MB line of broken JSON is a failed row whose
    message does not repeat the line; the rows around them run."""
    src = tmp_path / "big.jsonl"
    fifty = 50 * 1024 * 1024
    with src.open("wb") as f:
        f.write(b'{"prompt": "before"}\n{"prompt": "')
        f.write(b"x" * fifty)
        f.write(b'"}\n{"prompt": ')
        f.write(b"[" * fifty)
        f.write(b'\n{"prompt": "after"}\n')
    assert run(emulator_thread, "generate", src, tmp_path / "run") == 1
    with (tmp_path / "run" / "output.jsonl").open("rb") as f:
        lines = f.readlines()
    assert len(lines) == 4
    import orjson

    first, long_prompt, broken, last = (orjson.loads(line) for line in lines)
    assert first["pixelmill"]["status"] == last["pixelmill"]["status"] == "done"
    error = long_prompt["pixelmill"]["error"]
    assert error["field"] == "prompt" and f"{fifty} characters" in error["message"] and "32000" in error["message"]
    assert len(long_prompt["prompt"]) == fifty  # the input row is kept whole
    assert broken["pixelmill"]["error"]["message"].startswith("line 3: not valid JSON")
    assert len(broken["pixelmill"]["error"]["message"]) < 300
    assert emulator_thread.count(endpoint="generations") == 2


def test_images_over_the_size_limits(emulator_thread: Emulator, tmp_path: Path) -> None:
    """Over pixelmill's own limit (checked from the file's size, never read: a sparse 60 MB file), and over the
    model's: dall-e-2 takes 4 MB at most."""
    sparse = tmp_path / "huge.png"
    with sparse.open("wb") as f:
        f.truncate(60 * 1024 * 1024)
    big = tmp_path / "big.png"
    noise = Image.frombytes("RGB", (1200, 1200), os.urandom(1200 * 1200 * 3))
    noise.save(big, format="PNG", compress_level=0)
    assert big.stat().st_size > 4 * 1024 * 1024
    src = write_jsonl(tmp_path / "in.jsonl", [{"images": "huge.png", "prompt": "x"}])
    assert run(emulator_thread, "edit", src, tmp_path / "a") == 1
    [row] = read_output(tmp_path / "a")
    assert "over the limit of 52428800" in error_of(row)["message"]
    src = write_jsonl(tmp_path / "in2.jsonl", [{"images": "big.png", "prompt": "x"}])
    assert run(emulator_thread, "edit", src, tmp_path / "b", "--model", "dall-e-2", "--size", "256x256") == 1
    [row] = read_output(tmp_path / "b")
    assert "dall-e-2 takes at most 4194304" in error_of(row)["message"]
    assert emulator_thread.count() == 0
    assert_every_row_once([row], [{"images": "big.png", "prompt": "x"}], field="output_image")


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_integers_beyond_64_bits_pass_through_unchanged(emulator_thread: Emulator, tmp_path: Path,
                                                        fmt: str) -> None:
    big = 123456789012345678901234567890
    src = tmp_path / f"in.{fmt}"
    rows = [f'{{"prompt": "a cat", "id": {big}}}', '{"prompt": "a dog", "id": 2}']
    src.write_text("[" + ",".join(rows) + "]" if fmt == "json" else "\n".join(rows) + "\n")
    assert run(emulator_thread, "generate", src, tmp_path / "run") == 0
    import json

    out = [json.loads(line) for line in (tmp_path / "run" / "output.jsonl").read_text().splitlines()]
    assert out[0]["id"] == big and out[1]["id"] == 2
