"""`pixelmill.run(dict)` and the `Pipeline` builder make exactly the configuration the YAML file makes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import pixelmill
from pixelmill.api import _pipeline_job
from pixelmill.errors import ConfigError
from pixelmill.options import PipelineOptions, pipeline_config
from tests.runs import prompts, write_jsonl

PIPELINE: dict[str, Any] = {
    "source": "in.jsonl",
    "output": "out/products",
    "models": {"fast": {"provider": "emulator", "model": "gpt-image-1-mini", "quality": "low"}},
    "limits": {"concurrency": 4, "max_cost": 5.0},
    "id_field": "id",
    "steps": [
        {"name": "product_image", "task": "generate", "model": "fast", "prompt": "A photo of {prompt}.",
         "n": 1, "size": "1024x1024", "output_field": "product_image"},
        {"name": "on_marble", "task": "edit", "model": {"provider": "emulator", "model": "gemini-3-pro-image"},
         "images": "{product_image}", "prompt": "Put this product on a marble table.",
         "aspect_ratio": "1:1", "output_field": "marble_image"},
    ],
}


def _builder(source: Any = "in.jsonl") -> pixelmill.Pipeline:
    return (pixelmill.Pipeline(source=source, output="out/products", id_field="id",
                               models={"fast": {"provider": "emulator", "model": "gpt-image-1-mini",
                                                "quality": "low"}},
                               limits={"concurrency": 4, "max_cost": 5.0})
            .step(name="product_image", task="generate", model="fast", prompt="A photo of {prompt}.", n=1,
                  size="1024x1024", output_field="product_image")
            .step(name="on_marble", task="edit", model={"provider": "emulator", "model": "gemini-3-pro-image"},
                  images="{product_image}", prompt="Put this product on a marble table.", aspect_ratio="1:1",
                  output_field="marble_image"))


@pytest.fixture
def in_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", [{**row, "id": f"r{i}"} for i, row in enumerate(prompts(2))])
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False), encoding="utf-8")
    return tmp_path


def test_a_dict_and_a_pipeline_make_the_yaml_files_configuration(in_folder: Path) -> None:
    options = PipelineOptions(limit=1, max_retries=2)
    from_file = pipeline_config(Path("pipeline.yaml"), options)
    from_dict = _pipeline_job(PIPELINE, {"limit": 1, "max_retries": 2}).config
    from_builder = _pipeline_job(_builder(), {"limit": 1, "max_retries": 2}).config
    assert _builder().to_dict() == PIPELINE
    assert from_file.origin == "pipeline.yaml" and from_dict.origin is None
    assert from_dict == from_file.model_copy(update={"origin": None})
    assert from_builder == from_dict
    assert from_dict.fingerprint() == from_file.fingerprint()


def test_a_pipeline_runs_and_resumes_like_its_file(in_folder: Path) -> None:
    report = _builder().run()
    assert report.exit_code == 0 and report.counts.done == 2
    rows = list(report.iter_rows())
    assert all(row["product_image"] and row["marble_image"] for row in rows)
    assert {row["pixelmill"]["on_marble"]["provider"] for row in rows} == {"emulator"}
    # The file's run on the same RUNDIR is the same configuration: it resumes, sending nothing.
    again = pixelmill.run("pipeline.yaml")
    assert again.exit_code == 0 and again.stats.requests == 0 and list(again.iter_rows()) == rows


async def test_a_pipeline_over_rows_in_memory(in_folder: Path) -> None:
    report = await _builder(source=[{"id": "a", "prompt": "a kettle"}]).arun(output=in_folder / "mem")
    assert report.exit_code == 0 and report.counts.done == 1
    assert [row["id"] for row in report.iter_rows()] == ["a"]


def test_dict_errors_name_the_step_and_key(in_folder: Path) -> None:
    bad = {**PIPELINE, "steps": [{**PIPELINE["steps"][0], "qualty": "low"}]}
    with pytest.raises(ConfigError, match=r"^pipeline: step 'product_image': key 'qualty': unknown key "
                                          r"\(did you mean 'quality'\?\)"):
        pixelmill.run(bad)
    with pytest.raises(ConfigError, match="unknown key"):
        pixelmill.Pipeline(source="in.jsonl").step(name="x", qualty="low").run()


def test_the_pipeline_file_page_lists_every_key() -> None:
    from pixelmill.pipeline import LIMIT_KEYS, REF_KEYS, STEP_KEYS, TOP_KEYS

    page = (Path(__file__).resolve().parents[1] / "docs" / "pipeline-file.md").read_text(encoding="utf-8")
    missing = [key for key in sorted(TOP_KEYS | STEP_KEYS | LIMIT_KEYS | REF_KEYS) if f"| `{key}` |" not in page]
    assert missing == []
