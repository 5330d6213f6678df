"""Preflight: a field the configuration names that is in none of the source's first rows stops the run before
anything is sent (exit 2, the field named, the fields present listed, the closest one suggested), in generate,
edit, run and estimate alike; a misspelt model alias is said as such; a field in some rows only still runs."""

from __future__ import annotations

from pathlib import Path

import orjson

from pixelmill.reading.sample import first_rows
from pixelmill.testing import Emulator
from tests.runs import TEST_KEY, cli, read_output, write_jsonl

ENV = {"OPENAI_API_KEY": TEST_KEY}


def generate(emu: Emulator, src: Path, out: Path, *flags: str, command: str = "generate") -> tuple[int, str]:
    result = cli(command, src, "-o", out, "--base-url", emu.openai_base_url, "--quality", "low", "--quiet", *flags)
    return result.code, result.output


def assert_nothing_sent(emu: Emulator, out: Path) -> None:
    assert emu.log == []
    assert not (out / ".pixelmill").exists()  # the run directory was not bound to the mistaken configuration


def test_csv_without_a_prompt_column(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = tmp_path / "products.csv"
    src.write_text("sku,description\nA1,a brass lamp\nB2,a ceramic mug\n")
    code, output = generate(emulator_thread, src, tmp_path / "run")
    assert code == 2, output
    assert "no prompt: no row of products.csv has a 'prompt' or 'conversations' field" in output
    assert "(did you mean --prompt-field description?)" in output
    assert "the rows have: sku, description." in output
    assert "--prompt-template" in output and "Nothing was sent." in output
    assert_nothing_sent(emulator_thread, tmp_path / "run")


def test_misspelt_prompt_field(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = tmp_path / "products.csv"
    src.write_text("sku,description\nA1,a brass lamp\nB2,a ceramic mug\n")
    code, output = generate(emulator_thread, src, tmp_path / "run", "--prompt-field", "descripton")
    assert code == 2, output
    assert ("--prompt-field 'descripton' is in no row of products.csv (did you mean 'description'?); "
            "the rows have: sku, description. Nothing was sent.") in output
    assert_nothing_sent(emulator_thread, tmp_path / "run")


def test_misspelt_template_field(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"name": "lamp", "colour": "green"}, {"name": "mug"}])
    code, output = generate(emulator_thread, src, tmp_path / "run", "--prompt-template", "A {colour} {nmae}")
    assert code == 2, output
    assert "field 'nmae' of --prompt-template is in no row of in.jsonl (did you mean 'name'?)" in output
    assert "the rows have: name, colour." in output
    assert_nothing_sent(emulator_thread, tmp_path / "run")


def test_edit_on_rows_without_images(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "make it blue", "image": "a.png"}] * 3)
    code, output = generate(emulator_thread, src, tmp_path / "run", command="edit")
    assert code == 2, output
    assert "an edit needs input images: no row of in.jsonl has an 'images' field" in output
    assert "(did you mean --image-field image?)" in output and "the rows have: prompt, image." in output
    assert_nothing_sent(emulator_thread, tmp_path / "run")


def test_misspelt_mask_and_id_fields(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "images": "a.png", "mask": "m.png", "sku": "A"}])
    code, output = generate(emulator_thread, src, tmp_path / "run", "--mask-field", "mask_png", command="edit")
    assert code == 2 and "--mask-field 'mask_png' is in no row of in.jsonl (did you mean 'mask'?)" in output
    code, output = generate(emulator_thread, src, tmp_path / "run", "--id-field", "SKU")
    assert code == 2 and "--id-field 'SKU' is in no row of in.jsonl (did you mean 'sku'?)" in output
    assert_nothing_sent(emulator_thread, tmp_path / "run")


def test_estimate_says_the_same(tmp_path: Path) -> None:
    src = tmp_path / "products.csv"
    src.write_text("sku,description\nA1,a brass lamp\n")
    result = cli("estimate", src, "--prompt-field", "descripton")
    assert result.code == 2
    assert "--prompt-field 'descripton' is in no row of products.csv (did you mean 'description'?)" in result.output
    assert "$" not in result.output  # no price for a run that would fail


PIPELINE = """
source: products.jsonl
output: out
models:
  fast: {provider: openai, model: gpt-image-2, base_url: OPENAI_URL, quality: low}
steps:
  - name: product_image
    model: MODEL
    prompt: "A product photo of {product_name}."
    output_field: product_image
  - name: on_marble
    task: edit
    model: fast
    images: "IMAGES"
    prompt: "Put this product on a marble table."
    output_field: marble_image
"""


def pipeline(tmp_path: Path, emu: Emulator, *, model: str = "fast", images: str = "{product_image}") -> Path:
    write_jsonl(tmp_path / "products.jsonl", [{"product_name": "Lamp", "sku": "A1"}, {"product_name": "Mug"}])
    path = tmp_path / "pipe.yaml"
    path.write_text(PIPELINE.replace("OPENAI_URL", emu.openai_base_url).replace("MODEL", model)
                    .replace("IMAGES", images))
    return path


def test_pipeline_step_naming_a_misspelt_earlier_output(emulator_thread: Emulator, tmp_path: Path) -> None:
    path = pipeline(tmp_path, emulator_thread, images="{product_imge}")
    for command in ("run", "estimate"):
        result = cli(command, path, env=ENV)
        assert result.code == 2, result.output
        assert (f"{path}: step 'on_marble': images field 'product_imge' is in no row of products.jsonl, nor written "
                "by an earlier step (did you mean 'product_image'?); the rows have: product_name, sku; earlier "
                "steps write: product_image. Nothing was sent.") in result.output
    assert_nothing_sent(emulator_thread, tmp_path / "out")


def test_pipeline_step_reading_a_later_steps_output(emulator_thread: Emulator, tmp_path: Path) -> None:
    path = pipeline(tmp_path, emulator_thread, images="{marble_image}")
    result = cli("run", path, env=ENV)
    assert result.code == 2
    assert "images field 'marble_image' is in no row of products.jsonl, nor written by an earlier step (step " \
           "'on_marble' writes it, but not before this step)" in result.output
    assert_nothing_sent(emulator_thread, tmp_path / "out")


def test_misspelt_model_alias(emulator_thread: Emulator, tmp_path: Path) -> None:
    path = pipeline(tmp_path, emulator_thread, model="fats")
    for command in ("run", "estimate"):
        result = cli(command, path, env={"OPENAI_API_KEY": ""})
        assert result.code == 2, result.output
        assert (f"{path}: step 'product_image': key 'model': 'fats' is not a model alias of this file (did you mean "
                "'fast'?); aliases defined: fast.") in result.output
        assert "OPENAI_API_KEY" not in result.output and "price" not in result.output
    assert_nothing_sent(emulator_thread, tmp_path / "out")


def test_a_known_model_close_to_an_alias_is_that_model(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "products.jsonl", [{"prompt": "a lamp"}])
    path = tmp_path / "pipe.yaml"
    path.write_text("source: products.jsonl\nmodels:\n  gpt-image-2-low: {model: gpt-image-2, quality: low}\n"
                    "steps:\n  - name: a\n    model: gpt-image-2\n")
    result = cli("estimate", path, env=ENV)
    assert result.code == 0, result.output
    assert "gpt-image-2" in result.output


def test_a_typo_leaves_the_run_directory_as_it_was(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"lamp {i}", "sku": f"A{i}"} for i in range(3)])
    out = tmp_path / "run"
    assert generate(emulator_thread, src, out)[0] == 0
    emulator_thread.reset_log()
    journal = (out / ".pixelmill" / "journal.sqlite").read_bytes()
    code, output = generate(emulator_thread, src, out, "--prompt-template", "A photo of {promt}")
    assert code == 2 and "field 'promt' of --prompt-template is in no row of in.jsonl (did you mean 'prompt'?)" \
        in output
    assert "another configuration" not in output
    assert emulator_thread.log == []
    assert (out / ".pixelmill" / "journal.sqlite").read_bytes() == journal


def test_a_field_in_some_rows_only_runs_and_those_rows_fail(emulator_thread: Emulator, tmp_path: Path) -> None:
    rows = [{"name": "lamp"}, {"title": "no name here"}, {"name": "mug"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    code, output = generate(emulator_thread, src, tmp_path / "run", "--prompt-template", "A photo of a {name}")
    assert code == 1, output
    out = read_output(tmp_path / "run")
    assert [r["pixelmill"]["status"] for r in out] == ["done", "failed", "done"]
    assert out[1]["pixelmill"]["error"]["kind"] == "input"
    assert "needs field 'name'" in out[1]["pixelmill"]["error"]["message"]
    assert emulator_thread.count(endpoint="generations") == 2


def test_a_field_only_beyond_the_sample_is_missing(emulator_thread: Emulator, tmp_path: Path) -> None:
    rows = [{"title": f"t{i}"} for i in range(150)] + [{"title": "x", "prompt": "late"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    code, output = generate(emulator_thread, src, tmp_path / "run")
    assert code == 2
    assert "no prompt: none of the first 100 rows of in.jsonl has a 'prompt'" in output
    assert_nothing_sent(emulator_thread, tmp_path / "run")


def test_the_sample_is_bounded(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "many.jsonl", [{"prompt": f"p{i}"} for i in range(1000)])
    sample = first_rows(src)
    assert len(sample.rows) == 100 and not sample.complete
    assert first_rows(src, limit=7).complete and len(first_rows(src, limit=7).rows) == 7
    big = tmp_path / "big.jsonl"
    with big.open("wb") as f:
        for i in range(50):
            f.write(orjson.dumps({"prompt": f"p{i}", "blob": "x" * 300_000}) + b"\n")
    sample = first_rows(big)
    assert len(sample.rows) == 4  # 1 MB of rows, whichever bound comes first
    small = write_jsonl(tmp_path / "small.jsonl", [{"prompt": "a"}, b"{broken", {"prompt": "b", "x": 1}])
    sample = first_rows(small)
    assert sample.complete and sample.records == 3 and sample.fields() == ["prompt", "x"]
