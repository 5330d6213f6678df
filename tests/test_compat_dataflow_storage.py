"""The DataFlow layer's parts on their own: step files, the request ledger, image naming, the serving's
mapping onto the engine's configuration, and running from inside an event loop."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from pixelmill.compat.dataflow import (
    APIImageGenServing,
    DataFlowConfigError,
    FileStorage,
    ImageIO,
    PromptedImageGenerator,
)
from pixelmill.compat.dataflow.ledger import Request, write_ledger
from tests.runs import TEST_KEY, write_jsonl

ROWS = [{"id": 1, "conversations": [{"role": "user", "content": "a"}], "tags": ["x", "y"]},
        {"id": 2, "conversations": [{"role": "user", "content": "b"}], "tags": []}]


# ---------------------------------------------------------------- FileStorage


def test_steps_read_the_first_file_then_the_cache_files(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    storage = FileStorage(str(src), cache_path=str(tmp_path / "cache"), file_name_prefix="pre", cache_type="jsonl")
    assert storage.step() is storage and storage.operator_step == 0
    assert storage.input_path() == src
    assert storage.output_path() == tmp_path / "cache" / "pre_step1.jsonl"
    assert storage.read("dict") == ROWS
    written = storage.write([{**r, "n": i} for i, r in enumerate(storage.read("dict"))])
    assert written == str(tmp_path / "cache" / "pre_step1.jsonl")
    storage.step()
    assert [r["n"] for r in storage.read("dict")] == [0, 1]
    assert storage.output_path().name == "pre_step2.jsonl"
    assert storage.reset().operator_step == -1


@pytest.mark.parametrize("cache_type", ["jsonl", "json", "csv", "parquet"])
def test_every_cache_type_round_trips(tmp_path: Path, cache_type: str) -> None:
    storage = FileStorage(str(write_jsonl(tmp_path / "in.jsonl", ROWS)), cache_path=str(tmp_path / "c"),
                          cache_type=cache_type).step()
    frame = storage.read()  # DataFlow's default: a pandas DataFrame
    assert list(frame["id"]) == [1, 2]
    path = storage.write(frame)  # a DataFrame is written as DataFlow wrote it
    assert path.endswith(f"_step1.{cache_type}") and not list(Path(path).parent.glob(".*.tmp"))
    back = storage.step().read("dict")
    assert [int(r["id"]) for r in back] == [1, 2]
    tags = back[0]["tags"]
    assert (orjson.loads(tags) if isinstance(tags, str) else list(tags)) == ["x", "y"]


def test_unreadable_lines_and_missing_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"a": 1}\n{"a": \n')
    with pytest.raises(DataFlowConfigError, match="line 2"):
        FileStorage(str(bad)).step().read("dict")
    with pytest.raises(DataFlowConfigError, match="does not exist"):
        FileStorage(str(tmp_path / "nope.jsonl")).step().read("dict")
    with pytest.raises(DataFlowConfigError, match="run the steps before it"):
        FileStorage(str(bad), cache_path=str(tmp_path)).step().step().read("dict")
    with pytest.raises(DataFlowConfigError, match="output_type"):
        FileStorage(str(bad)).step().read("frame")
    with pytest.raises(DataFlowConfigError, match="list of dicts"):
        FileStorage(str(bad), cache_path=str(tmp_path)).step().write("text")


# ---------------------------------------------------------------- the ledger


def _requests(*prompts: str) -> list[list[Request] | None]:
    return [[Request(f"sample{i}_condition0", {"conversations": [{"role": "user", "content": p}]})]
            for i, p in enumerate(prompts)]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_ledger_positions_are_stable_and_only_grow(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    positions, total = write_ledger(path, "generate", _requests("a", "b", "a"))
    assert positions == [[0], [1], [2]] and total == 3
    mtime = path.stat().st_mtime_ns
    assert write_ledger(path, "generate", _requests("a", "b", "a")) == ([[0], [1], [2]], 3)
    assert path.stat().st_mtime_ns == mtime  # nothing changed: not rewritten

    # Moved, inserted and removed: known requests keep their positions, new ones are appended, and the one
    # no longer asked for (the second "a") is retired: it keeps its identity but loses its prompt.
    positions, total = write_ledger(path, "generate", [*_requests("c", "b", "a"), None])
    assert positions == [[3], [1], [0], []] and total == 4
    lines = _lines(path)
    assert lines[2]["_retired"] is True and "conversations" not in lines[2]
    assert lines[3]["conversations"][0]["content"] == "c"

    # Asked for again, a retired request gets a fresh position (it may never have been sent).
    positions, _ = write_ledger(path, "generate", _requests("a", "a"))
    assert positions == [[0], [4]]


def test_ledger_tells_tasks_and_images_apart(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    write_ledger(path, "edit", [[Request("sample_0", {"images": ["/x.png"], "conversations": []})]])
    positions, _ = write_ledger(path, "edit", [[Request("sample_0", {"images": ["/y.png"], "conversations": []})]])
    assert positions == [[1]]


# ---------------------------------------------------------------- ImageIO


def test_place_links_atomically_and_replaces_stale_files(tmp_path: Path) -> None:
    io_ = ImageIO(str(tmp_path / "save"))
    first = tmp_path / "run" / "a.png"
    first.parent.mkdir()
    first.write_bytes(b"\x89PNG\r\n\x1a\nfirst")
    path = io_.place(first, "sample0_condition0", 0)
    assert path == str(tmp_path / "save" / "sample0_condition0" / "sample0_condition0_0.png")
    assert os.path.samefile(path, first)  # a hard link: no copy
    assert io_.place(first, "sample0_condition0", 0) == path  # idempotent
    jpeg = tmp_path / "run" / "b.jpg"
    jpeg.write_bytes(b"\xff\xd8\xffjpeg")
    path2 = io_.place(jpeg, "sample0_condition0", 0)
    assert path2.endswith("sample0_condition0_0.jpg") and not Path(path).exists()  # no stale .png beside it
    assert io_.place(first, "../../etc", 1).startswith(str(tmp_path / "save"))  # keys are sanitised
    assert not list((tmp_path / "save").rglob("*.pixelmill-tmp"))


def test_place_copies_across_file_systems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    source = tmp_path / "a.webp"
    source.write_bytes(b"RIFF\x00\x00\x00\x00WEBPdata")
    path = ImageIO(str(tmp_path / "save")).place(source, "k", 0)
    assert Path(path).read_bytes() == source.read_bytes() and not os.path.samefile(path, source)


def test_imageio_saves_bytes_in_their_format_and_pil_images_with_transparency(tmp_path: Path) -> None:
    from PIL import Image

    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(jpeg, format="JPEG")
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    saved = ImageIO(str(tmp_path)).__call__({"sample_0": [jpeg.getvalue(), clear]})
    assert [Path(p).name for p in saved["sample_0"]] == ["sample_0_0.jpg", "sample_0_1.png"]
    back = ImageIO(str(tmp_path)).read(saved["sample_0"])
    assert back[1].mode == "RGBA" and back[1].getextrema()[3] == (0, 0)
    with pytest.raises(ValueError, match="not a PNG"):
        ImageIO(str(tmp_path))({"x": [b"not an image"]})


# ---------------------------------------------------------------- the serving


def test_serving_maps_onto_the_engine_configuration(tmp_path: Path) -> None:
    from pixelmill.engine.plan import plan_run

    serving = APIImageGenServing(
        api_url="https://gateway.example/v1", image_io=ImageIO(str(tmp_path)), Image_gen_task="imageedit",
        batch_size=12, timeout=90, connect_timeout=7, api_format="openai", api_key=TEST_KEY,
        model_name="gpt-image-1-mini", quality="low", size="1024x1536", rpm=120, param={"moderation": "low"})
    assert TEST_KEY not in repr(serving)
    config = serving.run_config(tmp_path, tmp_path / "run", image_field="pics", output_field="edited")
    step = config.steps[0]
    assert (step.task, step.model.provider, step.model.model) == ("edit", "openai", "gpt-image-1-mini")
    assert step.model.base_url == "https://gateway.example/v1" and step.image_field == "pics"
    assert (config.limits.concurrency, config.limits.timeout, config.limits.rpm) == (12, 90.0, 120.0)
    assert (step.params.quality, step.params.size, step.params.extra) == ("low", "1024x1536", {"moderation": "low"})
    plan = plan_run(config, env={})
    assert plan.steps[0].provider.http.connect_timeout == 7.0  # type: ignore[attr-defined]

    gemini = APIImageGenServing(api_url=None, image_io=ImageIO(str(tmp_path)), api_format="gemini")
    step = gemini.run_config(tmp_path, tmp_path / "g", image_field=None, output_field="images").steps[0]
    assert step.model.provider == "gemini" and step.task == "generate"


async def test_runs_from_inside_an_event_loop(tmp_path: Path, emulator_thread: Any) -> None:
    """A notebook calls `run()` from a running event loop: the engine runs on a loop of its own."""
    src = write_jsonl(tmp_path / "p.jsonl", [{"conversations": [{"role": "user", "content": "a"}]}])
    serving = APIImageGenServing(api_url=emulator_thread.openai_base_url, image_io=ImageIO(str(tmp_path / "i")),
                                 api_format="openai", model_name="gpt-image-2", api_key=TEST_KEY, progress=False)
    result = PromptedImageGenerator(serving).run(FileStorage(str(src), cache_path=str(tmp_path / "c")).step())
    assert result.done == 1 and result.images == 1
