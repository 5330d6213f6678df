"""End-to-end runs of `pixelmill generate` / `edit` against the emulator over HTTP: output shape, order, files,
resume, configuration changes, limits and output options."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from PIL import Image

from pixelmill.reading.images import sniff
from pixelmill.testing import Emulator
from tests.runs import TEST_KEY, cli, prompts, read_output, write_jsonl


def gen(emu: Emulator, src: Path, out: Path, *extra: str | Path) -> tuple[int, str]:
    result = cli("generate", src, "-o", out, "--base-url", emu.openai_base_url, "--quiet", *extra)
    return result.code, result.output


def test_every_row_in_order_with_files_and_metadata(emulator_thread: Emulator, tmp_path: Path) -> None:
    rows = [{"id": i, "prompt": f"a red fox number {i}", "extra": {"keep": [i]}} for i in range(25)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    code, _ = gen(emulator_thread, src, tmp_path / "run", "--size", "1024x1536", "--quality", "low",
                  "--concurrency", "8")
    assert code == 0
    out = read_output(tmp_path / "run")
    assert [r["id"] for r in out] == list(range(25))
    for row, original in zip(out, rows, strict=True):
        assert {k: row[k] for k in original} == original  # the input row is unchanged
        meta = row["pixelmill"]
        assert meta["status"] == "done"
        assert meta["provider"] == "openai" and meta["model"] == "gpt-image-2"
        assert meta["parameters"] == {"size": "1024x1536", "quality": "low"}
        assert meta["usage"]["output_tokens"] > 0 and meta["cost_usd"] > 0
        assert meta["attempts"] == 1 and len(meta["request_ids"]) == 1
        [path] = row["images"]
        assert path == f"images/generate/row{row['id']:06d}_0.png"
        data = (tmp_path / "run" / path).read_bytes()
        assert sniff(data) == "image/png"
        with Image.open(tmp_path / "run" / path) as img:
            assert img.size == (1024, 1536)
    assert emulator_thread.count(endpoint="generations") == 25


def test_rerun_resumes_and_sends_nothing_for_done_rows(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(12))
    assert gen(emulator_thread, src, tmp_path / "run", "--limit", "5")[0] == 0
    assert emulator_thread.count(endpoint="generations") == 5
    out = read_output(tmp_path / "run")
    assert len(out) == 5
    assert gen(emulator_thread, src, tmp_path / "run")[0] == 0
    assert emulator_thread.count(endpoint="generations") == 12  # only the 7 new rows were sent
    assert gen(emulator_thread, src, tmp_path / "run")[0] == 0
    assert emulator_thread.count(endpoint="generations") == 12
    assert [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")] == ["done"] * 12


def test_another_configuration_is_refused_unless_restart(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    assert gen(emulator_thread, src, tmp_path / "run")[0] == 0
    code, text = gen(emulator_thread, src, tmp_path / "run", "--quality", "high")
    assert code == 2
    assert "another configuration" in text and "--restart" in text and "params" in text
    assert emulator_thread.count(endpoint="generations") == 3
    # Not part of the configuration: limits, concurrency, output format, base URL.
    assert gen(emulator_thread, src, tmp_path / "run", "--concurrency", "3", "--format", "parquet")[0] == 0
    assert emulator_thread.count(endpoint="generations") == 3
    assert gen(emulator_thread, src, tmp_path / "run", "--quality", "high", "--restart")[0] == 0
    assert emulator_thread.count(endpoint="generations") == 6


def test_failed_rows_are_kept_and_retry_failed_sends_them_again(emulator_thread: Emulator, tmp_path: Path) -> None:
    rows = prompts(4)
    rows[2]["prompt"] = "a forbidden thing [[fault:moderation]]"
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    code, _ = gen(emulator_thread, src, tmp_path / "run")
    assert code == 1
    out = read_output(tmp_path / "run")
    bad = out[2]
    assert bad["images"] == []
    assert bad["pixelmill"]["status"] == "failed"
    err = bad["pixelmill"]["error"]
    assert err["kind"] == "refused" and err["http_status"] == 400
    assert "safety" in err["message"].lower()
    assert emulator_thread.count(endpoint="generations") == 4  # refusals are not retried
    assert gen(emulator_thread, src, tmp_path / "run")[0] == 1  # plain re-run: failed rows stay failed
    assert emulator_thread.count(endpoint="generations") == 4
    assert gen(emulator_thread, src, tmp_path / "run", "--retry-failed")[0] == 1
    assert emulator_thread.count(endpoint="generations") == 5


def test_id_field_names_files_safely_and_collisions_get_the_row_index(emulator_thread: Emulator,
                                                                     tmp_path: Path) -> None:
    ids = ["../../etc/passwd", "/abs/path", "x" * 500, "naïve café", "a/b", "a_b", "..", "", "ok"]
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"p {n}"} for n, i in enumerate(ids)])
    run = tmp_path / "run"
    assert gen(emulator_thread, src, run, "--id-field", "id")[0] == 0
    out = read_output(run)
    paths = [r["images"][0] for r in out]
    assert len(set(paths)) == len(paths)
    for path in paths:
        resolved = (run / path).resolve()
        assert resolved.is_relative_to((run / "images" / "generate").resolve())
        assert resolved.exists()
        assert len(Path(path).name) < 120
    assert paths[4] == "images/generate/a_b_0.png" and paths[5] == "images/generate/a_b-5_0.png"
    assert paths[7] == "images/generate/row000007_0.png"  # a blank id falls back to the row index
    assert not (tmp_path / "etc").exists()


def test_output_options_embed_limit_output_field_and_parquet(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(4))
    code, _ = gen(emulator_thread, src, tmp_path / "a", "--embed-images", "--output-field", "pics",
                  "--output-format", "webp", "--limit", "2")
    assert code == 0
    out = read_output(tmp_path / "a")
    assert len(out) == 2
    assert out[0]["pics"][0].startswith("data:image/webp;base64,")
    assert "images" not in out[0]
    code, _ = gen(emulator_thread, src, tmp_path / "b", "--format", "parquet")
    assert code == 0
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "b" / "output.parquet").to_pylist()
    assert [r["prompt"] for r in table] == [r["prompt"] for r in prompts(4)]
    assert orjson.loads(table[0]["pixelmill"])["status"] == "done"
    # An `Image` struct (issue 15): referenced by absolute path, so `datasets` decodes it from any directory.
    assert table[0]["images"] == [{"bytes": None,
                                   "path": str((tmp_path / "b" / "images/generate/row000000_0.png").resolve())}]


def test_transparent_webp_keeps_alpha_and_real_extension(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(1))
    code, _ = gen(emulator_thread, src, tmp_path / "run", "--background", "transparent", "--output-format", "webp")
    assert code == 0
    [path] = read_output(tmp_path / "run")[0]["images"]
    assert path.endswith(".webp")
    with Image.open(tmp_path / "run" / path) as img:
        assert img.mode == "RGBA"


def test_n_images_per_row_and_n_over_ten_split(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    assert gen(emulator_thread, src, tmp_path / "a", "--n", "3")[0] == 0
    assert [len(r["images"]) for r in read_output(tmp_path / "a")] == [3, 3]
    assert emulator_thread.count(endpoint="generations") == 2
    emulator_thread.reset_log()
    assert gen(emulator_thread, src, tmp_path / "b", "--n", "12", "--size", "1024x1024", "--quality", "low")[0] == 0
    out = read_output(tmp_path / "b")
    assert [len(r["images"]) for r in out] == [12, 12]
    assert len({*out[0]["images"], *out[1]["images"]}) == 24
    assert sorted(r.n for r in emulator_thread.records(endpoint="generations")) == [2, 2, 10, 10]


def test_impossible_parameters_stop_before_sending(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    code, text = gen(emulator_thread, src, tmp_path / "a", "--model", "dall-e-3", "--n", "4")
    assert code == 2 and "dall-e-3" in text and "n=4" in text and "allowed: 1" in text
    result = cli("edit", src, "-o", tmp_path / "b", "--provider", "gemini", "--mask-field", "mask", "--quiet",
                 env={"GEMINI_API_KEY": "gemini-key-0000000"})
    assert result.code == 2 and "takes no mask" in result.output
    assert emulator_thread.count() == 0


def test_bad_flags_exit_2_before_anything_is_sent(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    for flags in (["--quality", "ultra"], ["--size", "banana"], ["--model", "dall-e-3", "--n", "2", "--style", "x"],
                  ["--prompt-template", "{a.__class__}"], ["--concurrency", "0"], ["--format", "xml"],
                  ["--model", "gpt-image-1.5", "--style", "vivid"]):
        code, text = gen(emulator_thread, src, tmp_path / "run", *flags)
        assert code == 2, (flags, text)
        assert "error" in text
    assert emulator_thread.count() == 0
    assert cli("generate", tmp_path / "missing.jsonl", "--quiet").code == 2


def test_missing_key_is_a_config_error_naming_the_variable(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(1))
    result = cli("generate", src, "-o", tmp_path / "run", "--quiet", env={"OPENAI_API_KEY": ""})
    assert result.code == 2
    assert "OPENAI_API_KEY" in result.output


def test_prompt_template_and_conversation_prompts(emulator_thread: Emulator, tmp_path: Path) -> None:
    rows = [
        {"product": "lamp", "color": "green"},
        {"product": "mug"},  # lacks {color}: a per-row error naming the field
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    code, _ = gen(emulator_thread, src, tmp_path / "a", "--prompt-template", "A {color} {product}, {{studio}}")
    assert code == 1
    out = read_output(tmp_path / "a")
    assert out[0]["pixelmill"]["status"] == "done"
    assert emulator_thread.records()[0].prompt == "A green lamp, {studio}"
    assert out[1]["pixelmill"]["error"]["kind"] == "input" and "'color'" in out[1]["pixelmill"]["error"]["message"]
    conv = [{"conversations": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "a cat"}]}]
    src2 = write_jsonl(tmp_path / "conv.jsonl", conv)
    assert gen(emulator_thread, src2, tmp_path / "b")[0] == 0
    assert emulator_thread.records()[-1].prompt == "a cat"


@pytest.mark.parametrize("base", ["{url}", "{url}/", "{url}/v1", "{url}/v1/"])
def test_base_url_with_or_without_v1(emulator_thread: Emulator, tmp_path: Path, base: str) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(1))
    result = cli("generate", src, "-o", tmp_path / "run", "--quiet", "--base-url",
                 base.format(url=emulator_thread.url))
    assert result.code == 0, result.output
    assert emulator_thread.records()[0].path == "/v1/images/generations"


def test_key_never_written(emulator_thread: Emulator, tmp_path: Path) -> None:
    rows = prompts(6)
    rows[1]["prompt"] = "x [[fault:moderation]]"
    rows[2]["prompt"] = "y [[fault:server_error]]"
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = cli("generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url,
                 "--max-retries", "1")
    assert TEST_KEY not in result.output
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes(), path
    emulator_thread.configure(api_keys=["sk-other-key-000000"])
    result = cli("generate", src, "-o", tmp_path / "run2", "--base-url", emulator_thread.openai_base_url)
    assert result.code == 3
    assert TEST_KEY not in result.output
    for path in (tmp_path / "run2").rglob("*"):
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes(), path


def test_a_row_changed_between_runs_is_sent_again_not_mixed_up(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(4))
    assert gen(emulator_thread, src, tmp_path / "run")[0] == 0
    first = {r["prompt"]: r["images"] for r in read_output(tmp_path / "run")}
    rows = prompts(4)
    rows.insert(1, {"prompt": "a new row in the middle"})  # rows 1..4 all move down by one
    write_jsonl(src, rows)
    # Stopped at the first call (the new row): the moved rows keep their own results, found by their content,
    # and are never given each other's images.
    emulator_thread.configure(fail_after=0, fail_with="auth")
    code, _ = gen(emulator_thread, src, tmp_path / "run")
    assert code == 3
    out = read_output(tmp_path / "run")
    assert [r["pixelmill"]["status"] for r in out] == ["done", "pending", "done", "done", "done"]
    assert all(r["images"] == first[r["prompt"]] for r in out if r["prompt"] in first)
    emulator_thread.configure(fail_after=None)
    emulator_thread.reset_log()
    code, _ = gen(emulator_thread, src, tmp_path / "run")
    assert code == 0
    assert [r.prompt for r in emulator_thread.records(status=200)] == ["a new row in the middle"]
    out = read_output(tmp_path / "run")
    assert len({r["images"][0] for r in out}) == 5
