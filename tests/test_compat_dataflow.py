"""The DataFlow-MM pipeline classes, as its documents write them, run on pixelmill against the emulator.

The two classes below have the documents' shape and calls (storage + serving + operator in `__init__`,
`forward()` running the operator on `storage.step()`); only their imports name pixelmill. They are written to a
file four folders deep, as in DataFlow's repository, because they find their image folder from `__file__`.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from pixelmill.compat.dataflow import (
    APIImageGenServing,
    DataFlowConfigError,
    FileStorage,
    ImageIO,
    PromptedImageEditGenerator,
    PromptedImageGenerator,
    StepAborted,
)
from tests.runs import TEST_KEY, write_jsonl

SEED_PIPELINES = '''
import os
from pathlib import Path
from pixelmill.compat.dataflow import PromptedImageGenerator, PromptedImageEditGenerator
from pixelmill.compat.dataflow import APIImageGenServing
from pixelmill.compat.dataflow import FileStorage
from pixelmill.compat.dataflow import ImageIO


class ImageGenerationAPIPipeline():
    def __init__(
        self,
        api_format="gemini",
        model_name="gemini-3-pro-image-preview",
        batch_size=4,
        first_entry_file_name=None,
        cache_path="./cache_local/text2image_api",
    ):
        current_file = Path(__file__).resolve()
        project_root = current_file.parent.parent.parent.parent.parent

        if first_entry_file_name is None:
            data_file = project_root / "dataflow" / "example" / "image_gen" / "text2image" / "prompts.jsonl"
            first_entry_file_name = str(data_file)

        self.storage = FileStorage(
            first_entry_file_name=first_entry_file_name,
            cache_path=cache_path,
            file_name_prefix="dataflow_cache_step",
            cache_type="jsonl"
        )

        api_key = os.environ.get("DF_API_KEY")
        api_url = os.environ.get("DF_BASE_URL")

        if api_key is None:
            raise ValueError("API key is required. Please set it via environment variable DF_API_KEY")

        if api_url is None:
            if api_format == "gemini":
                api_url = "https://generativelanguage.googleapis.com"
            else:
                api_url = "https://api.openai.com/v1"

        image_save_path = str(project_root / "cache_local" / "text2image_api")

        self.serving = APIImageGenServing(
            api_url=api_url,
            image_io=ImageIO(save_path=image_save_path),
            Image_gen_task="text2image",
            batch_size=batch_size,
            api_format=api_format,
            model_name=model_name,
            api_key=api_key,
        )

        self.text_to_image_generator = PromptedImageGenerator(
            t2i_serving=self.serving,
            save_interval=10
        )

    def forward(self):
        self.text_to_image_generator.run(
            storage=self.storage.step(),
            input_conversation_key="conversations",
            output_image_key="images",
        )


class ImageEditingAPIPipeline():
    def __init__(
        self,
        api_format="gemini",
        model_name="gemini-3-pro-image-preview",
        batch_size=4,
        first_entry_file_name=None,
        cache_path="./cache_local/image_edit_api",
    ):
        current_file = Path(__file__).resolve()
        project_root = current_file.parent.parent.parent.parent.parent

        if first_entry_file_name is None:
            data_file = project_root / "dataflow" / "example" / "image_gen" / "image_edit" / "prompts_api.jsonl"
            first_entry_file_name = str(data_file)

        self.storage = FileStorage(
            first_entry_file_name=first_entry_file_name,
            cache_path=cache_path,
            file_name_prefix="dataflow_cache_step",
            cache_type="jsonl"
        )

        if api_format not in ["gemini", "openai"]:
            raise ValueError(f"Unsupported api_format: {api_format}.")

        api_key = os.environ.get("DF_API_KEY")
        api_url = os.environ.get("DF_BASE_URL")

        if api_key is None:
            raise ValueError("API key is required. Please set it via environment variable DF_API_KEY")

        if api_url is None:
            if api_format == "gemini":
                api_url = "https://generativelanguage.googleapis.com"
            else:
                api_url = "https://api.openai.com/v1"

        image_save_path = str(project_root / "cache_local" / "image_edit_api")

        self.serving = APIImageGenServing(
            api_url=api_url,
            image_io=ImageIO(save_path=image_save_path),
            Image_gen_task="imageedit",
            batch_size=batch_size,
            api_format=api_format,
            model_name=model_name,
            api_key=api_key,
        )

        self.image_edit_generator = PromptedImageEditGenerator(
            image_edit_serving=self.serving,
            save_interval=10
        )

    def forward(self):
        self.image_edit_generator.run(
            storage=self.storage.step(),
            input_image_key="images",
            input_conversation_key="conversations",
            output_image_key="output_image",
        )
'''


def seed_module(root: Path) -> ModuleType:
    """The seed pipelines as a module at root/repo/dataflow/statics/api_pipelines/ (project root: `root`)."""
    path = root / "repo" / "dataflow" / "statics" / "api_pipelines" / "seed_pipelines.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SEED_PIPELINES)
    name = f"seed_pipelines_{abs(hash(str(root)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def make_image(path: Path, size: tuple[int, int] = (256, 256), mode: str = "RGB") -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (40, 120, 200, 128) if mode == "RGBA" else (40, 120, 200)).save(path)
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("DF_API_KEY", TEST_KEY)
    return monkeypatch


T2I_ROWS = [
    {"conversations": [{"role": "user", "content": "a fox darting between snow-covered pines at dusk"}]},
    {"conversations": [{"role": "user", "content": "a kite surfer"}, {"role": "user", "content": "a lighthouse"}]},
    {"conversations": [{"role": "user", "content": "a teapot on linen"}]},
]


# ---------------------------------------------------------------- text-to-image


@pytest.mark.parametrize("api_format", ["openai", "gemini"])
def test_seed_text_to_image_pipeline(tmp_path: Path, env: pytest.MonkeyPatch, emulator_thread: Any,
                                     api_format: str) -> None:
    emu = emulator_thread
    base = emu.openai_base_url if api_format == "openai" else emu.gemini_base_url
    env.setenv("DF_BASE_URL", base)
    model = "gpt-image-2" if api_format == "openai" else "gemini-3-pro-image-preview"
    src = write_jsonl(tmp_path / "prompts.jsonl", T2I_ROWS)
    cache = tmp_path / "cache"
    pipeline = seed_module(tmp_path).ImageGenerationAPIPipeline(
        api_format=api_format, model_name=model, batch_size=4, first_entry_file_name=str(src),
        cache_path=str(cache))
    pipeline.forward()

    assert emu.count() == 4  # one request per user message
    assert {r.family for r in emu.log} == {api_format}
    rows = read_rows(cache / "dataflow_cache_step_step1.jsonl")
    assert [r["conversations"] for r in rows] == [r["conversations"] for r in T2I_ROWS]
    save = tmp_path / "cache_local" / "text2image_api"
    assert rows[0]["images"] == [str(save / "sample0_condition0" / "sample0_condition0_0.png")]
    assert rows[1]["images"] == [str(save / "sample1_condition0" / "sample1_condition0_0.png"),
                                 str(save / "sample1_condition1" / "sample1_condition1_0.png")]
    for row in rows:
        assert row["images_error"] is None
        assert row["pixelmill"]["images"]["status"] == "done"
        for path in row["images"]:
            assert Path(path).read_bytes().startswith(b"\x89PNG")
    prompts = sorted(r.prompt for r in emu.log)
    assert prompts == sorted(["a fox darting between snow-covered pines at dusk", "a kite surfer", "a lighthouse",
                              "a teapot on linen"])


@pytest.mark.parametrize("suffix", ["", "/v1", "/v1/"])
def test_openai_base_url_with_or_without_v1(tmp_path: Path, env: pytest.MonkeyPatch, emulator_thread: Any,
                                            suffix: str) -> None:
    emu = emulator_thread
    env.setenv("DF_BASE_URL", emu.url + suffix)
    src = write_jsonl(tmp_path / "p.jsonl", T2I_ROWS[:1])
    seed_module(tmp_path).ImageGenerationAPIPipeline(
        api_format="openai", model_name="gpt-image-2", first_entry_file_name=str(src),
        cache_path=str(tmp_path / "c")).forward()
    assert [r.path for r in emu.log] == ["/v1/images/generations"]
    # The emulator checks every request against the model's rules: nothing the seed sent by mistake
    # (quality "standard", response_format) would pass.
    assert emu.log[0].status == 200


@pytest.mark.parametrize("suffix", ["", "/v1beta"])
def test_gemini_base_url_with_or_without_version(tmp_path: Path, env: pytest.MonkeyPatch, emulator_thread: Any,
                                                 suffix: str) -> None:
    emu = emulator_thread
    env.setenv("DF_BASE_URL", emu.gemini_base_url + suffix)
    src = write_jsonl(tmp_path / "p.jsonl", T2I_ROWS[:1])
    seed_module(tmp_path).ImageGenerationAPIPipeline(
        api_format="gemini", first_entry_file_name=str(src), cache_path=str(tmp_path / "c")).forward()
    assert len(emu.log) == 1
    assert emu.log[0].path.startswith("/v1beta/models/") and emu.log[0].path.endswith(":generateContent")


def test_rerun_resumes_and_pays_nothing_twice(tmp_path: Path, env: pytest.MonkeyPatch, emulator_thread: Any) -> None:
    emu = emulator_thread
    env.setenv("DF_BASE_URL", emu.openai_base_url)
    src = write_jsonl(tmp_path / "p.jsonl", T2I_ROWS)
    module = seed_module(tmp_path)

    def run() -> list[dict[str, Any]]:
        module.ImageGenerationAPIPipeline(api_format="openai", model_name="gpt-image-2",
                                          first_entry_file_name=str(src), cache_path=str(tmp_path / "c")).forward()
        return read_rows(tmp_path / "c" / "dataflow_cache_step_step1.jsonl")

    first = run()
    assert emu.count() == 4
    second = run()
    assert emu.count() == 4  # nothing sent again
    assert [r["images"] for r in second] == [r["images"] for r in first]


def test_interrupted_run_leaves_pending_rows_and_resumes(tmp_path: Path, env: pytest.MonkeyPatch,
                                                         emulator_thread: Any) -> None:
    """An authentication failure after 2 requests stops the run: the file says which rows are pending, and the
    re-run sends only those."""
    emu = emulator_thread
    env.setenv("DF_BASE_URL", emu.openai_base_url)
    rows = [{"conversations": [{"role": "user", "content": f"prompt {i}"}]} for i in range(6)]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    module = seed_module(tmp_path)
    emu.configure(fail_after=2, fail_with="auth")

    def pipeline() -> Any:
        return module.ImageGenerationAPIPipeline(api_format="openai", model_name="gpt-image-2", batch_size=1,
                                                 first_entry_file_name=str(src), cache_path=str(tmp_path / "c"))

    with pytest.raises(StepAborted, match="run the pipeline again"):
        pipeline().forward()
    out = read_rows(tmp_path / "c" / "dataflow_cache_step_step1.jsonl")
    done = [r for r in out if r["images"]]
    pending = [r for r in out if r["images_error"] and r["images_error"]["kind"] == "pending"]
    assert len(done) == 2 and len(pending) == 4
    assert all("run the pipeline again" in r["images_error"]["message"] for r in pending)
    sent_before = emu.count(status=200)

    emu.configure(fail_after=None)
    emu.reset_log()
    pipeline().forward()
    assert emu.count() == 4 and sent_before == 2
    out = read_rows(tmp_path / "c" / "dataflow_cache_step_step1.jsonl")
    assert all(len(r["images"]) == 1 and r["images_error"] is None for r in out)


def test_failed_rows_are_recorded_not_dropped(tmp_path: Path, env: pytest.MonkeyPatch, emulator_thread: Any) -> None:
    emu = emulator_thread
    env.setenv("DF_BASE_URL", emu.openai_base_url)
    rows = [
        {"conversations": [{"role": "user", "content": "fine"}]},
        {"conversations": [{"role": "user", "content": "blocked [[fault:moderation]]"}]},
        {"conversations": [{"role": "user", "content": "fine too"},
                           {"role": "user", "content": "x [[fault:moderation]]"}]},
        {"conversations": []},
        {"other": 1},
    ]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    seed_module(tmp_path).ImageGenerationAPIPipeline(
        api_format="openai", model_name="gpt-image-2", first_entry_file_name=str(src),
        cache_path=str(tmp_path / "c")).forward()
    out = read_rows(tmp_path / "c" / "dataflow_cache_step_step1.jsonl")
    assert len(out) == 5
    assert len(out[0]["images"]) == 1 and out[0]["images_error"] is None
    assert out[1]["images"] == []
    assert out[1]["images_error"]["kind"] == "refused" and out[1]["images_error"]["http_status"] == 400
    # A row with one failed message of two: no images in the column (it would not line up with the messages),
    # the done message's image kept in the pixelmill column.
    assert out[2]["images"] == []
    assert out[2]["images_error"]["condition"] == 1 and out[2]["images_error"]["key"] == "sample2_condition1"
    conditions = out[2]["pixelmill"]["images"]["conditions"]
    assert conditions[0]["status"] == "done" and Path(conditions[0]["images"][0]).exists()
    assert conditions[1]["status"] == "failed"
    assert out[3]["images_error"]["kind"] == "input" and "no user message" in out[3]["images_error"]["message"]
    assert out[4]["images_error"]["kind"] == "input"
    assert out[4]["other"] == 1


def test_gemini_text_only_answer_is_an_error_not_a_silent_gap(tmp_path: Path, env: pytest.MonkeyPatch,
                                                              emulator_thread: Any) -> None:
    emu = emulator_thread
    env.setenv("DF_BASE_URL", emu.gemini_base_url)
    rows = [{"conversations": [{"role": "user", "content": "just talk [[fault:text_only]]"}]}]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    seed_module(tmp_path).ImageGenerationAPIPipeline(
        first_entry_file_name=str(src), cache_path=str(tmp_path / "c")).forward()
    out = read_rows(tmp_path / "c" / "dataflow_cache_step_step1.jsonl")
    assert out[0]["images"] == [] and out[0]["images_error"]["kind"] == "refused"


def test_transient_errors_are_retried(tmp_path: Path, env: pytest.MonkeyPatch, emulator_thread: Any) -> None:
    emu = emulator_thread
    emu.configure(faults={"server_error": 0.3, "unavailable": 0.1, "rate_limit": 0.1}, retry_after=0.01)
    rows = [{"conversations": [{"role": "user", "content": f"p{i}"}]} for i in range(12)]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    storage = FileStorage(str(src), cache_path=str(tmp_path / "c"))
    serving = APIImageGenServing(api_url=emu.openai_base_url, image_io=ImageIO(str(tmp_path / "img")),
                                 batch_size=4, api_format="openai", model_name="gpt-image-2", api_key=TEST_KEY,
                                 max_retries=10, engine={"retry_base": 0.005, "retry_cap": 0.02})
    result = PromptedImageGenerator(serving).run(storage.step())
    assert result.done == 12 and result.failed == 0
    assert emu.count(status=lambda s: s is not None and s >= 429) > 0  # faults happened, and were retried


def test_batch_size_is_requests_in_flight(tmp_path: Path, emulator_thread: Any) -> None:
    emu = emulator_thread
    emu.configure(latency=0.2)
    rows = [{"conversations": [{"role": "user", "content": f"p{i}"}]} for i in range(8)]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    serving = APIImageGenServing(api_url=emu.openai_base_url, image_io=ImageIO(str(tmp_path / "img")),
                                 batch_size=4, api_format="openai", model_name="gpt-image-2", api_key=TEST_KEY)
    started = time.monotonic()
    PromptedImageGenerator(serving).run(FileStorage(str(src), cache_path=str(tmp_path / "c")).step())
    assert emu.max_in_flight == 4
    assert time.monotonic() - started < 8 * 0.2  # not one after another


def test_real_format_and_transparency_are_kept(tmp_path: Path, emulator_thread: Any) -> None:
    from PIL import Image

    emu = emulator_thread
    src = write_jsonl(tmp_path / "p.jsonl", T2I_ROWS[:1])
    for fmt, options in (("jpg", {"output_format": "jpeg"}), ("png", {"background": "transparent"})):
        serving = APIImageGenServing(api_url=emu.openai_base_url, image_io=ImageIO(str(tmp_path / fmt)),
                                     api_format="openai", model_name="gpt-image-2", api_key=TEST_KEY, **options)
        PromptedImageGenerator(serving).run(FileStorage(str(src), cache_path=str(tmp_path / f"c{fmt}")).step())
        path = tmp_path / fmt / "sample0_condition0" / f"sample0_condition0_0.{fmt}"
        with Image.open(path) as img:
            assert img.format == ("JPEG" if fmt == "jpg" else "PNG")
            if fmt == "png":
                assert img.mode == "RGBA" and img.getextrema()[3][0] < 255


def test_save_interval_writes_the_step_file_while_running(tmp_path: Path, emulator_thread: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from pixelmill.compat.dataflow import step_run

    monkeypatch.setattr(step_run, "FLUSH_MIN_GAP", 0.0)
    emu = emulator_thread
    rows = [{"conversations": [{"role": "user", "content": f"p{i}"}]} for i in range(3)]
    rows.append({"conversations": [{"role": "user", "content": "slow [[latency:1.5]]"}]})
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    storage = FileStorage(str(src), cache_path=str(tmp_path / "c"))
    serving = APIImageGenServing(api_url=emu.openai_base_url, image_io=ImageIO(str(tmp_path / "img")),
                                 batch_size=4, api_format="openai", model_name="gpt-image-2", api_key=TEST_KEY,
                                 progress=False)
    target = storage.step().output_path()
    worker = threading.Thread(target=PromptedImageGenerator(serving, save_interval=1).run, args=(storage,))
    worker.start()
    try:
        partial: list[dict[str, Any]] = []
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            if target.exists():
                partial = read_rows(target)
                if sum(1 for r in partial if r["images"]) == 3:
                    break
            time.sleep(0.05)
        assert [bool(r["images"]) for r in partial] == [True, True, True, False]
        assert partial[3]["images_error"]["kind"] == "pending"
        assert Path(partial[0]["images"][0]).exists()
    finally:
        worker.join()
    assert all(r["images"] for r in read_rows(target))


def test_changed_input_reuses_done_requests(tmp_path: Path, emulator_thread: Any) -> None:
    """Rows inserted, moved and removed between runs: a request done earlier is never sent again (its images get
    the row's new name), only new ones are sent, and a removed row's pending request is never sent."""
    emu = emulator_thread
    serving = APIImageGenServing(api_url=emu.openai_base_url, image_io=ImageIO(str(tmp_path / "img")),
                                 api_format="openai", model_name="gpt-image-2", api_key=TEST_KEY, progress=False)

    def run(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        src = write_jsonl(tmp_path / "p.jsonl", rows)
        storage = FileStorage(str(src), cache_path=str(tmp_path / "c")).step()
        PromptedImageGenerator(serving).run(storage)
        return read_rows(storage.output_path())

    def conv(*texts: str) -> dict[str, Any]:
        return {"conversations": [{"role": "user", "content": t} for t in texts]}

    first = run([conv("a"), conv("b"), conv("b")])  # a duplicate prompt is a request of its own
    assert emu.count() == 3
    image_of_a = Path(first[0]["images"][0]).read_bytes()
    emu.reset_log()
    second = run([conv("new"), conv("b"), conv("a"), conv("b")])
    assert [r.prompt for r in emu.log] == ["new"]
    assert second[2]["images"] == [str(tmp_path / "img" / "sample2_condition0" / "sample2_condition0_0.png")]
    assert Path(second[2]["images"][0]).read_bytes() == image_of_a
    assert Path(second[0]["images"][0]).read_bytes() != image_of_a  # the file of row 0 is row 0's new image
    emu.reset_log()
    third = run([conv("a")])
    assert emu.count() == 0 and third[0]["images"]


def test_seed_image_editing_pipeline_gemini(tmp_path: Path, env: pytest.MonkeyPatch, emulator_thread: Any) -> None:
    emu = emulator_thread
    env.setenv("DF_BASE_URL", emu.gemini_base_url)
    data = tmp_path / "data"
    make_image(data / "image.png", mode="RGBA")
    make_image(data / "human_inpaint.jpg")
    rows = [
        {"images": "image.png", "conversations": [{"role": "user", "content": "Change the guitar to a piano."}]},
        {"images": ["image.png", "human_inpaint.jpg"],
         "conversations": [{"role": "user", "content": "Recolour the vase like the second picture."}]},
        {"images": "human_inpaint.jpg", "conversations": [{"role": "user", "content": "Complete the portrait."},
                                                          {"role": "user", "content": "Make it English."}]},
    ]
    src = write_jsonl(data / "prompts_api.jsonl", rows)
    seed_module(tmp_path).ImageEditingAPIPipeline(
        api_format="gemini", model_name="gemini-3-pro-image-preview", first_entry_file_name=str(src),
        cache_path=str(tmp_path / "c")).forward()

    assert emu.count() == 4  # the multi-turn row is one chat of two turns
    by_prompt = {r.prompt: r for r in emu.log}
    assert by_prompt["Recolour the vase like the second picture."].input_images == 2
    # Turn 2 is sent in the same chat: its history holds turn 1's input image and the image it answered with.
    assert by_prompt["Make it English."].input_images == 2
    out = read_rows(tmp_path / "c" / "dataflow_cache_step_step1.jsonl")
    save = tmp_path / "cache_local" / "image_edit_api"
    for i, row in enumerate(out):
        assert row["output_image"] == [str(save / f"sample_{i}" / f"sample_{i}_0.png")]
        assert Path(row["output_image"][0]).exists() and row["output_image_error"] is None
        assert row["images"] == rows[i]["images"]  # the input row unchanged
    turns = out[2]["pixelmill"]["output_image"]["turns"]
    assert [t["prompt"] for t in turns] == ["Complete the portrait.", "Make it English."]
    assert all(Path(p).exists() for t in turns for p in t["images"])


def test_seed_image_editing_pipeline_openai(tmp_path: Path, env: pytest.MonkeyPatch, emulator_thread: Any) -> None:
    """OpenAI: several input images go in one edit request; a multi-turn row is a chain of edits."""
    emu = emulator_thread
    env.setenv("DF_BASE_URL", emu.openai_base_url)
    data = tmp_path / "data"
    make_image(data / "a.png")
    make_image(data / "b.png")
    rows = [
        {"images": "a.png", "conversations": [{"role": "user", "content": "one"}]},
        {"images": ["a.png", "b.png"], "conversations": [{"role": "user", "content": "two images"}]},
        {"images": ["b.png"], "conversations": [{"role": "user", "content": "turn 1"},
                                                {"role": "user", "content": "turn 2"}]},
        {"images": "missing.png", "conversations": [{"role": "user", "content": "no file"}]},
        {"conversations": [{"role": "user", "content": "no image"}]},
        {"images": "a.png", "conversations": [{"role": "user", "content": "kept"}], "output_image": ["done.png"]},
    ]
    src = write_jsonl(data / "edits.jsonl", rows)
    seed_module(tmp_path).ImageEditingAPIPipeline(
        api_format="openai", model_name="gpt-image-2", first_entry_file_name=str(src),
        cache_path=str(tmp_path / "c")).forward()
    by_prompt = {r.prompt: r for r in emu.log}
    assert set(by_prompt) == {"one", "two images", "turn 1", "turn 2"}
    assert all(r.endpoint == "edits" for r in emu.log)
    assert by_prompt["two images"].input_images == 2
    assert by_prompt["turn 2"].input_images == 1  # the previous turn's result
    out = read_rows(tmp_path / "c" / "dataflow_cache_step_step1.jsonl")
    assert [len(r["output_image"]) for r in out[:3]] == [1, 1, 1]
    assert out[3]["output_image"] == [] and out[3]["output_image_error"]["kind"] == "input"
    assert "missing.png" in out[3]["output_image_error"]["message"]
    assert out[4]["output_image"] == [] and out[4]["output_image_error"]["kind"] == "input"
    assert out[5]["output_image"] == ["done.png"] and out[5]["pixelmill"]["output_image"]["status"] == "kept"


def test_two_operators_chained_on_one_storage(tmp_path: Path, emulator_thread: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Generate, then edit what was generated: step 1's file feeds step 2, whose paths (relative to the working
    directory, as DataFlow wrote them) are found; both steps' `pixelmill` entries are kept."""
    emu = emulator_thread
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "p.jsonl", [{"conversations": [{"role": "user", "content": "a red chair"}]}])
    storage = FileStorage("p.jsonl", cache_path="./cache", file_name_prefix="dataflow_cache_step", cache_type="jsonl")
    gen = APIImageGenServing(api_url=emu.openai_base_url, image_io=ImageIO("./cache/gen"), api_format="openai",
                             model_name="gpt-image-2", api_key=TEST_KEY, progress=False)
    edit = APIImageGenServing(api_url=emu.openai_base_url, image_io=ImageIO("./cache/edit"),
                              Image_gen_task="imageedit", api_format="openai", model_name="gpt-image-2",
                              api_key=TEST_KEY, progress=False)
    PromptedImageGenerator(gen).run(storage.step(), input_conversation_key="conversations", output_image_key="images")
    PromptedImageEditGenerator(edit).run(storage.step(), input_image_key="images",
                                         input_conversation_key="conversations", output_image_key="edited")
    out = read_rows(tmp_path / "cache" / "dataflow_cache_step_step2.jsonl")
    assert out[0]["images"] == ["./cache/gen/sample0_condition0/sample0_condition0_0.png"]
    assert out[0]["edited"] == ["./cache/edit/sample_0/sample_0_0.png"]
    assert set(out[0]["pixelmill"]) == {"images", "edited"}
    assert [r.endpoint for r in emu.log] == ["generations", "edits"]


def test_parquet_and_csv_step_files(tmp_path: Path, emulator_thread: Any) -> None:
    import pyarrow.parquet as pq

    emu = emulator_thread
    src = write_jsonl(tmp_path / "p.jsonl", T2I_ROWS)
    for cache_type in ("parquet", "csv", "json"):
        storage = FileStorage(str(src), cache_path=str(tmp_path / cache_type), cache_type=cache_type)
        serving = APIImageGenServing(api_url=emu.openai_base_url, image_io=ImageIO(str(tmp_path / "img")),
                                     api_format="openai", model_name="gpt-image-2", api_key=TEST_KEY,
                                     progress=False)
        PromptedImageGenerator(serving).run(storage.step())
        path = tmp_path / cache_type / f"dataflow_cache_step1.{cache_type}"
        if cache_type == "parquet":
            table = pq.read_table(path).to_pylist()
            assert len(table[1]["images"]) == 2
            assert orjson.loads(table[1]["pixelmill"])["images"]["status"] == "done"
        rows = storage.read("dict")  # the storage is at step 0 still: it reads its input
        assert len(rows) == 3
        later = FileStorage(str(src), cache_path=str(tmp_path / cache_type), cache_type=cache_type).step().step()
        back = later.read("dict")
        assert len(back) == 3 and back[0]["images_error"] in (None, "")
    assert emu.count() == 12  # each cache path is a run of its own


def test_key_never_written(tmp_path: Path, env: pytest.MonkeyPatch, emulator_thread: Any) -> None:
    emu = emulator_thread
    env.setenv("DF_BASE_URL", emu.openai_base_url)
    unauthorised = {"conversations": [{"role": "user", "content": "x [[fault:auth]]"}]}
    src = write_jsonl(tmp_path / "p.jsonl", [*T2I_ROWS[:1], unauthorised])
    with pytest.raises(StepAborted) as info:
        seed_module(tmp_path).ImageGenerationAPIPipeline(
            api_format="openai", model_name="gpt-image-2", first_entry_file_name=str(src), batch_size=1,
            cache_path=str(tmp_path / "c")).forward()
    assert TEST_KEY not in str(info.value)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes(), path


# ---------------------------------------------------------------- mistakes that are told, not run


def test_configuration_mistakes_are_clear(tmp_path: Path, emulator_thread: Any) -> None:
    io = ImageIO(str(tmp_path / "img"))
    with pytest.raises(DataFlowConfigError, match="api_format"):
        APIImageGenServing(api_url=None, image_io=io, api_format="dalle")
    with pytest.raises(ValueError, match="Image_gen_task"):  # also a ValueError, as DataFlow raised
        APIImageGenServing(api_url=None, image_io=io, Image_gen_task="img2vid")
    with pytest.raises(DataFlowConfigError, match="qualty"):
        APIImageGenServing(api_url=None, image_io=io, qualty="high")
    with pytest.raises(DataFlowConfigError, match="concurrency"):
        APIImageGenServing(api_url=None, image_io=io, concurrency=3)
    src = write_jsonl(tmp_path / "p.jsonl", T2I_ROWS[:1])
    storage = FileStorage(str(src), cache_path=str(tmp_path / "c"))
    edit = APIImageGenServing(api_url=None, image_io=io, Image_gen_task="imageedit", api_key=TEST_KEY)
    with pytest.raises(DataFlowConfigError, match="text2image"):
        PromptedImageGenerator(edit).run(storage.step())
    with pytest.raises(DataFlowConfigError, match=r"storage\.step\(\)"):
        PromptedImageGenerator(APIImageGenServing(api_url=None, image_io=io)).run(FileStorage(str(src)))
    # No key anywhere: said before anything is sent, naming the variable to set; no step file written.
    keyless = APIImageGenServing(api_url=emulator_thread.openai_base_url, image_io=io, model_name="gpt-image-2")
    with pytest.raises(DataFlowConfigError, match="DF_API_KEY"):
        PromptedImageGenerator(keyless).run(FileStorage(str(src), cache_path=str(tmp_path / "k")).step())
    assert emulator_thread.count() == 0
    assert not (tmp_path / "k" / "dataflow_cache_step1.jsonl").exists()
    with pytest.raises(DataFlowConfigError, match="pickle"):
        FileStorage(str(src), cache_type="pickle")
