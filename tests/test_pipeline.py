"""Pipeline files: chained steps on two providers, fallback, auto task, config errors naming file/step/key,
and resume in the middle of step 2."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pixelmill.api import run_config
from pixelmill.engine.plan import plan_run
from pixelmill.errors import ConfigError
from pixelmill.options import pipeline_config
from pixelmill.testing import Emulator
from tests.runs import TEST_KEY, cli, read_output, write_jsonl

PRODUCTS = [
    {"sku": "A1", "product_name": "Lamp", "product_description": "brass, green shade"},
    {"sku": "B2", "product_name": "Mug", "product_description": "matte ceramic"},
    {"sku": "C3", "product_name": "Chair", "product_description": "walnut"},
]


def pipeline(tmp_path: Path, emu: Emulator, body: str) -> Path:
    write_jsonl(tmp_path / "products.jsonl", PRODUCTS)
    path = tmp_path / "pipe.yaml"
    path.write_text(body.replace("OPENAI_URL", emu.openai_base_url).replace("GEMINI_URL", emu.gemini_base_url))
    return path


TWO_STEPS = """
source: products.jsonl
output: out
id_field: sku
models:
  fast: {provider: openai, model: gpt-image-2, base_url: OPENAI_URL, quality: low}
  banana: {provider: gemini, model: gemini-3-pro-image, base_url: GEMINI_URL}
limits: {concurrency: 4}
steps:
  - name: product_image
    task: generate
    model: fast
    prompt: "A professional product photo of {product_name}: {product_description}."
    aspect_ratio: "1:1"
    output_field: product_image
  - name: on_marble
    task: edit
    model: banana
    images: "{product_image}"
    prompt: "Put this product on a marble table."
    output_field: marble_image
"""

ENV = {"OPENAI_API_KEY": TEST_KEY, "GEMINI_API_KEY": "gemini-test-key-123456"}


def test_two_steps_on_two_providers(emulator_thread: Emulator, tmp_path: Path) -> None:
    path = pipeline(tmp_path, emulator_thread, TWO_STEPS)
    result = cli("run", path, "--quiet", env=ENV)
    assert result.code == 0, result.output
    out = read_output(tmp_path / "out")
    assert [r["sku"] for r in out] == ["A1", "B2", "C3"]
    row = out[0]
    assert row["product_image"] == ["images/product_image/A1_0.png"]
    assert row["marble_image"] == ["images/on_marble/A1_0.png"]
    assert set(row["pixelmill"]) == {"product_image", "on_marble"}
    assert row["pixelmill"]["product_image"]["parameters"] == {"quality": "low", "size": "1024x1024"}
    assert row["pixelmill"]["on_marble"]["provider"] == "gemini"
    prompts = [r.prompt for r in emulator_thread.records(endpoint="generations")]
    assert "A professional product photo of Lamp: brass, green shade." in prompts
    assert emulator_thread.count(endpoint="generateContent") == 3


def test_resume_in_the_middle_of_step_two(emulator_thread: Emulator, tmp_path: Path) -> None:
    path = pipeline(tmp_path, emulator_thread, TWO_STEPS)
    emulator_thread.configure(fail_after=4, fail_with="auth")  # 3 generations + 1 edit, then 401s
    config = pipeline_config(path)
    import os

    os.environ.update(ENV)
    try:
        report = run_config(config)
        assert report.exit_code == 3 and report.abort_kind == "auth"
        out = read_output(tmp_path / "out")
        statuses = [(r["pixelmill"]["product_image"]["status"], r["pixelmill"]["on_marble"]["status"]) for r in out]
        assert statuses.count(("done", "done")) == 1
        assert all(s[0] == "done" for s in statuses)
        emulator_thread.configure(fail_after=None)
        emulator_thread.reset_log()
        report = run_config(config)
        assert report.exit_code == 0
    finally:
        for key in ENV:
            os.environ.pop(key, None)
    assert emulator_thread.count(endpoint="generations") == 0  # step 1 was done for every row
    assert emulator_thread.count(endpoint="generateContent", status=200) == 2


def test_fallback_model_makes_the_image_and_the_row_says_so(emulator_thread: Emulator, make_emulator: Any,
                                                             tmp_path: Path) -> None:
    emulator_thread.configure(faults={"moderation": 1.0})  # the first model refuses everything
    other = make_emulator()
    body = """
source: products.jsonl
output: out
models:
  a: {provider: openai, model: gpt-image-2, base_url: OPENAI_URL}
  b: {provider: gemini, model: gemini-3.1-flash-image, base_url: GEMINI_URL}
steps:
  - name: img
    model: a
    fallback: [b]
    prompt: "{product_name}"
"""
    path = pipeline(tmp_path, emulator_thread, body.replace("GEMINI_URL", other.gemini_base_url))
    result = cli("run", path, "--quiet", env=ENV)
    assert result.code == 0, result.output
    for row in read_output(tmp_path / "out"):
        meta = row["pixelmill"]["img"]
        assert meta["status"] == "done"
        assert meta["model"] == "gemini-3.1-flash-image" and meta["provider"] == "gemini"
        [attempt] = meta["fallbacks"]
        assert attempt["model"] == "gpt-image-2" and attempt["error"]["kind"] == "refused"
    assert emulator_thread.count(endpoint="generations") == 3
    assert other.count(endpoint="generateContent") == 3


def test_auto_task_edits_rows_with_images_and_generates_the_rest(emulator_thread: Emulator, tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, format="PNG")
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "edit me", "photo": "a.png"}, {"prompt": "make me"}])
    (tmp_path / "pipe.yaml").write_text(f"""
source: rows.jsonl
steps:
  - name: any
    task: auto
    images: photo
    model: {{provider: openai, model: gpt-image-2, base_url: {emulator_thread.openai_base_url}}}
""")
    result = cli("run", tmp_path / "pipe.yaml", "-o", tmp_path / "out", "--quiet", env=ENV)
    assert result.code == 0, result.output
    assert emulator_thread.records(endpoint="edits")[0].prompt == "edit me"
    assert emulator_thread.records(endpoint="generations")[0].prompt == "make me"


@pytest.mark.parametrize(("body", "message"), [
    ("source: x.jsonl\nsteps: []\n", "key 'steps': must be a non-empty list"),
    ("source: x.jsonl\nstep: []\n", "key 'step': unknown key (did you mean 'steps'?)"),
    ("steps: [{name: a}]\n", "key 'source': missing"),
    ("source: x.jsonl\nsteps: [{name: a, promt: hi}]\n", "step 'a': key 'promt': unknown key (did you mean 'prompt'?)"),
    ("source: x.jsonl\nsteps: [{name: a, quality: ultra, model: gpt-image-2}]\n",
     "step 'a': gpt-image-2 does not take quality='ultra'"),
    ("source: x.jsonl\nsteps: [{name: a, task: paint}]\n", "step 'a': key 'task'"),
    ("source: x.jsonl\nlimits: {concurency: 3}\nsteps: [{name: a}]\n", "key 'limits.concurency'"),
    ("source: x.jsonl\nmodels: {f: {provider: openai, modle: x}}\nsteps: [{name: a}]\n", "key 'models.f.modle'"),
    ("source: x.jsonl\nsteps: [{name: a}, {name: a}]\n", "step names must be unique"),
    ("source: x.jsonl\nsteps: [{name: a, prompt: '{x.y}'}]\n", "step 'a': key 'prompt'"),
    ("source: x.jsonl\nsteps: [{name: '../up'}]\n", "step name"),
    ("source: [1\n", "not valid YAML"),
])
def test_config_errors_name_file_step_and_key(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        plan_run(pipeline_config(path), env=ENV)  # everything checked before sending
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_run_exits_2_on_a_bad_pipeline(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("source: x.jsonl\nsteps: [{name: a, promt: hi}]\n")
    result = cli("run", tmp_path / "bad.yaml")
    assert result.code == 2 and "promt" in result.output
