"""DataFlow's local serving (`LocalImageGenServing`) on pixelmill's diffusers provider, with tiny random
pipelines on the CPU: the GPU documents' pipeline shape, text-to-image and editing, and a resumed run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from pixelmill.compat.dataflow import (
    DataFlowConfigError,
    FileStorage,
    ImageIO,
    LocalImageGenServing,
    PromptedImageEditGenerator,
    PromptedImageGenerator,
)
from tests.runs import write_jsonl
from tests.tiny_pipelines import build_flux, build_sd


class ImageGenerationPipeline:
    """The GPU documents' text-to-image pipeline shape, on a tiny model."""

    def __init__(self, model: str, prompts_file: Path, cache_path: Path) -> None:
        self.storage = FileStorage(
            first_entry_file_name=str(prompts_file),
            cache_path=str(cache_path),
            file_name_prefix="dataflow_cache_step",
            cache_type="jsonl",
        )
        self.serving = LocalImageGenServing(
            image_io=ImageIO(save_path=str(cache_path / "images")),
            batch_size=4,
            hf_model_name_or_path=model,
            hf_cache_dir=str(cache_path / "hf"),
            hf_local_dir=str(cache_path / "ckpt"),
            diffuser_num_inference_steps=2,
            diffuser_image_height=32,
            diffuser_image_width=32,
            progress=False,
        )
        self.text_to_image_generator = PromptedImageGenerator(t2i_serving=self.serving, save_interval=10)

    def forward(self) -> Any:
        return self.text_to_image_generator.run(
            storage=self.storage.step(),
            input_conversation_key="conversations",
            output_image_key="images",
        )


def _rows(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_local_text_to_image_pipeline_and_resume(tmp_path: Path) -> None:
    model = build_sd(tmp_path / "tiny-sd")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"conversations": [{"role": "user", "content": "a fox in the snow"}]},
        {"conversations": [{"role": "user", "content": "a kite"}, {"role": "user", "content": "a lighthouse"}]},
    ])
    cache = tmp_path / "cache"
    result = ImageGenerationPipeline(str(model), prompts, cache).forward()
    assert (result.done, result.images) == (2, 3)
    out = _rows(cache / "dataflow_cache_step_step1.jsonl")
    assert out[1]["images"] == [str(cache / "images" / f"sample1_condition{j}" / f"sample1_condition{j}_0.png")
                                for j in range(2)]
    parameters = out[0]["pixelmill"]["images"]["conditions"][0]["parameters"]
    assert parameters["num_inference_steps"] == 2 and parameters["height"] == parameters["width"] == 32
    made = {p: Path(p).stat().st_mtime_ns for r in out for p in r["images"]}

    again = ImageGenerationPipeline(str(model), prompts, cache).forward()
    assert again.images == 0 and again.done == 2  # resumed: nothing made twice
    assert {p: Path(p).stat().st_mtime_ns for r in _rows(cache / "dataflow_cache_step_step1.jsonl")
            for p in r["images"]} == made


def test_local_image_editing(tmp_path: Path) -> None:
    from PIL import Image

    model = build_flux(tmp_path / "tiny-kontext", kontext=True)
    Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / "red.png")
    src = write_jsonl(tmp_path / "edits.jsonl", [
        {"images": "red.png", "conversations": [{"role": "user", "content": "make it blue"}]}])
    serving = LocalImageGenServing(image_io=ImageIO(str(tmp_path / "out")), hf_model_name_or_path=str(model),
                                   Image_gen_task="imageedit", batch_size=1, diffuser_model_name="FLUX-Kontext",
                                   diffuser_num_inference_steps=2, diffuser_image_height=32,
                                   diffuser_image_width=32, progress=False,
                                   param={"_auto_resize": False})  # Kontext would upscale to 1024 px: slow on CPU
    result = PromptedImageEditGenerator(serving).run(FileStorage(str(src), cache_path=str(tmp_path / "c")).step(),
                                                     input_image_key="images", input_conversation_key="conversations",
                                                     output_image_key="output_image")
    assert result.done == 1
    out = _rows(tmp_path / "c" / "dataflow_cache_step1.jsonl")
    assert out[0]["output_image"] == [str(tmp_path / "out" / "sample_0" / "sample_0_0.png")]
    with Image.open(out[0]["output_image"][0]) as img:
        assert img.size == (32, 32)


def test_local_serving_mistakes_are_clear(tmp_path: Path) -> None:
    io = ImageIO(str(tmp_path))
    with pytest.raises(DataFlowConfigError, match="hf_model_name_or_path is required"):
        LocalImageGenServing(image_io=io)
    with pytest.raises(DataFlowConfigError, match="one model"):
        LocalImageGenServing(image_io=io, hf_model_name_or_path=["a/b", "c/d"])
    with pytest.raises(DataFlowConfigError, match="steps"):
        LocalImageGenServing(image_io=io, hf_model_name_or_path="a/b", steps=4)
    serving = LocalImageGenServing(image_io=io, hf_model_name_or_path=["m", "m"], batch_size=3,
                                   diffuser_num_images_per_prompt=2, seed=7)
    config = serving.run_config(tmp_path, tmp_path / "r", image_field=None, output_field="images")
    step = config.steps[0]
    assert (step.model.provider, step.model.model) == ("diffusers", "m")
    assert step.model.options == {"batch_size": 3, "devices": 2}
    assert (step.params.n, step.params.size, step.params.seed) == (2, "1024x1024", 7)
