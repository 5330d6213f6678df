"""The diffusers provider on tiny random pipelines built on disk and loaded through `from_pretrained`:
generation, seeds, batching, editing, refusals, out-of-memory fallback, and a resumed run on the CPU."""

from __future__ import annotations

import asyncio
import io
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from PIL import Image

from pixelmill.errors import ConfigError, InputError, ModelUnavailable, Refused, Rejected
from pixelmill.params import ImageParams
from pixelmill.providers.base import ImageRequest, ImageResult, InputImage, ProviderSettings
from pixelmill.providers.diffusers.families import inspect_model
from pixelmill.providers.diffusers.provider import DiffusersProvider
from tests.runs import cli, read_output, write_jsonl
from tests.tiny_pipelines import build_flux, build_sd


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "sd": str(build_sd(root / "sd")),
        "flagging": str(build_sd(root / "flagging", safety_checker=True)),
        "flux": str(build_flux(root / "flux")),
        "kontext": str(build_flux(root / "kontext", kontext=True)),
    }


Factory = Callable[..., DiffusersProvider]


@pytest.fixture
async def make_provider() -> AsyncIterator[Factory]:
    made: list[DiffusersProvider] = []

    def make(**options: Any) -> DiffusersProvider:
        provider = DiffusersProvider(ProviderSettings(options=options), {})
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


async def _call(provider: DiffusersProvider, model: str, prompt: str = "a red cube", task: str = "generate",
                row: int = 0, images: list[InputImage] | None = None, mask: InputImage | None = None,
                **params: Any) -> ImageResult:
    spec = provider.spec_for(model)
    plan = provider.plan(spec, ImageParams(**{"size": "32x32", "steps": 2, **params}), task)  # type: ignore[arg-type]
    request = ImageRequest(task=task, model=model, prompt=prompt, params=plan.params,  # type: ignore[arg-type]
                           images=images or [], mask=mask, row=row)
    return await provider.call(request, spec)


def _png(width: int, height: int, colour: tuple[int, ...] = (200, 40, 40), mode: str = "RGB") -> InputImage:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buffer, format="PNG")
    return InputImage(buffer.getvalue(), "image/png", "input.png", width, height)


def _pixels(data: bytes) -> Any:
    import numpy as np

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def assert_same_picture(a: bytes, b: bytes) -> None:
    """Equal up to float rounding: on the CPU a batch's arithmetic is not bit-identical to a single call's
    (BLAS blocks by batch size), which moves a few pixels by one level out of 255. The seeds, hence the
    starting noise, are exactly the same."""
    diff = abs(_pixels(a) - _pixels(b))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return img.size


# ---------------------------------------------------------------- generate


async def test_generate_returns_png_of_the_asked_size(models: dict[str, str], make_provider: Factory) -> None:
    provider = make_provider()
    result = await _call(provider, models["sd"], size="48x32", seed=3)
    assert len(result.images) == 1
    image = result.images[0]
    assert image.mime == "image/png" and _size(image.data) == (48, 32)
    assert result.extra == {"seed": 3, "device": "cpu", "batch_rows": 1, "size": "48x32"}
    with Image.open(io.BytesIO(image.data)) as img:  # a real picture, not a flat or black one
        import numpy as np

        assert len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)) > 10


async def test_same_seed_same_bytes_other_seed_other_image(models: dict[str, str], make_provider: Factory) -> None:
    provider = make_provider()
    first = await _call(provider, models["sd"], seed=11)
    again = await _call(make_provider(), models["sd"], seed=11)  # a fresh load: nothing cached
    other = await _call(make_provider(), models["sd"], seed=12)
    assert first.images[0].data == again.images[0].data
    assert first.images[0].data != other.images[0].data
    await provider.aclose()  # closed, then used again: it loads the model again
    assert (await _call(provider, models["sd"], seed=11)).images[0].data == first.images[0].data


async def test_rows_without_a_seed_get_a_stable_one_recorded(models: dict[str, str], make_provider: Factory) -> None:
    provider = make_provider()
    a = await _call(provider, models["sd"], row=5)
    b = await _call(provider, models["sd"], row=5)
    c = await _call(provider, models["sd"], row=6)
    assert isinstance(a.extra["seed"], int) and a.extra["seed"] == b.extra["seed"] != c.extra["seed"]
    assert a.images[0].data == b.images[0].data != c.images[0].data
    explicit = await _call(provider, models["sd"], row=99, seed=a.extra["seed"])
    assert explicit.images[0].data == a.images[0].data  # the recorded seed reproduces the image


@pytest.mark.parametrize("kind", ["sd", "flux"])
async def test_a_batch_of_four_equals_four_single_calls(kind: str, models: dict[str, str],
                                                        make_provider: Factory) -> None:
    prompts = ["a red cube", "a blue ball", "a green tree", "a yellow car"]
    batched = make_provider(batch_size=4)
    together = await asyncio.gather(*[_call(batched, models[kind], p, seed=100 + i) for i, p in enumerate(prompts)])
    assert batched.pipeline_calls == 1
    assert [r.extra["batch_rows"] for r in together] == [4, 4, 4, 4]
    single = make_provider(batch_size=1)
    alone = [await _call(single, models[kind], p, seed=100 + i) for i, p in enumerate(prompts)]
    assert single.pipeline_calls == 4
    for batched_image, single_image in zip(together, alone, strict=True):
        assert_same_picture(batched_image.images[0].data, single_image.images[0].data)
    assert abs(_pixels(together[0].images[0].data) - _pixels(together[1].images[0].data)).max() > 20


async def test_n_images_per_row_use_consecutive_seeds(models: dict[str, str], make_provider: Factory) -> None:
    provider = make_provider(batch_size=4)
    two = await _call(provider, models["sd"], n=2, seed=40)
    assert len(two.images) == 2
    firsts = [await _call(provider, models["sd"], seed=s) for s in (40, 41)]
    for image, single in zip(two.images, firsts, strict=True):
        assert_same_picture(image.data, single.images[0].data)
    assert abs(_pixels(two.images[0].data) - _pixels(two.images[1].data)).max() > 20


async def test_only_rows_with_identical_parameters_share_a_call(models: dict[str, str],
                                                               make_provider: Factory) -> None:
    provider = make_provider(batch_size=8, batch_window=0.2)
    results = await asyncio.gather(
        _call(provider, models["sd"], "one", seed=1),
        _call(provider, models["sd"], "two", seed=2),
        _call(provider, models["sd"], "three", seed=3, steps=3),
    )
    assert provider.pipeline_calls == 2
    assert [r.extra["batch_rows"] for r in results] == [2, 2, 1]


# ---------------------------------------------------------------- edit


async def test_image_to_image_edit_keeps_the_input_size(models: dict[str, str], make_provider: Factory) -> None:
    provider = make_provider(batch_size=2)
    source = _png(48, 32)
    spec = provider.spec_for(models["sd"])
    plan = provider.plan(spec, ImageParams(steps=2, seed=5, extra={"strength": 0.9}), "edit")
    assert plan.params["strength"] == 0.9

    async def edit(prompt: str) -> ImageResult:
        request = ImageRequest(task="edit", model=models["sd"], prompt=prompt, params=plan.params, images=[source])
        return await provider.call(request, spec)

    first, second = await asyncio.gather(edit("make it blue"), edit("make it blue"))
    assert provider.pipeline_calls == 1  # two edits of same-sized images share a call
    assert _size(first.images[0].data) == (48, 32)
    assert first.images[0].data == second.images[0].data
    generated = await _call(provider, models["sd"], size="48x32", seed=5)
    assert generated.images[0].data != first.images[0].data


async def test_edit_with_a_size_resizes_the_input(models: dict[str, str], make_provider: Factory) -> None:
    result = await _call(make_provider(), models["sd"], task="edit", images=[_png(64, 64)], size="32x32", seed=1)
    assert _size(result.images[0].data) == (32, 32)


async def test_inpainting_with_a_mask(models: dict[str, str], make_provider: Factory) -> None:
    provider = make_provider()
    source = _png(32, 32)
    plain = await _call(provider, models["sd"], task="edit", images=[source], seed=9)
    # OpenAI's convention: the transparent half is the part to repaint.
    buffer = io.BytesIO()
    mask = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 16, 32))
    mask.save(buffer, format="PNG")
    masked = await _call(provider, models["sd"], task="edit", images=[source],
                         mask=InputImage(buffer.getvalue(), "image/png", "mask.png"), seed=9)
    assert _size(masked.images[0].data) == (32, 32)
    assert masked.images[0].data != plain.images[0].data
    copy = provider._copies[(inspect_model(models["sd"]).source, 0)]
    assert "StableDiffusionInpaintPipeline" in copy.variants


async def test_kontext_edits_and_generates(models: dict[str, str], make_provider: Factory) -> None:
    provider = make_provider(batch_size=2)
    edited = await _call(provider, models["kontext"], "make it green", task="edit", images=[_png(32, 32)], seed=2,
                         extra={"_auto_resize": False})
    assert _size(edited.images[0].data) == (32, 32)
    made = await _call(provider, models["kontext"], "a green cube", seed=2)
    assert _size(made.images[0].data) == (32, 32) and made.images[0].data != edited.images[0].data


async def test_rows_a_model_cannot_take_are_input_errors(models: dict[str, str], make_provider: Factory) -> None:
    provider = make_provider()
    with pytest.raises(InputError, match="at most 1"):
        await _call(provider, models["sd"], task="edit", images=[_png(32, 32), _png(32, 32)])
    with pytest.raises(InputError, match="needs an input image"):
        await _call(provider, models["sd"], task="edit")
    broken = InputImage(b"not an image", "image/png", "broken.png")
    with pytest.raises(InputError, match=r"broken\.png"):
        await _call(provider, models["sd"], task="edit", images=[broken])


# ---------------------------------------------------------------- failures


async def test_safety_checker_black_images_are_refused(models: dict[str, str], make_provider: Factory) -> None:
    with pytest.raises(Refused) as caught:
        await _call(make_provider(), models["flagging"], seed=1)
    assert caught.value.reason == "nsfw_or_nan"


def test_nan_and_black_images_are_refused_partially_or_wholly() -> None:
    import numpy as np

    from pixelmill.providers.diffusers.execute import Made, _keep_good

    good = np.full((4, 4, 3), 0.5, dtype=np.float32)
    nan = np.full((4, 4, 3), np.nan, dtype=np.float32)
    black = np.zeros((4, 4, 3), dtype=np.float32)
    partial = _keep_good([good, nan, black], [False, False, False], "cpu", 1)
    assert isinstance(partial, Made) and len(partial.images) == 1 and partial.refused == 2
    flagged = _keep_good([good], [True], "cpu", 1)
    assert isinstance(flagged, Refused) and flagged.reason == "nsfw_or_nan"


@pytest.fixture
def oom_limit(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The pipeline runs out of GPU memory on calls of more than `limit` prompts (as a big batch would); the
    prompt counts of every call are logged in `calls`."""
    import torch
    from diffusers import StableDiffusionPipeline

    real = StableDiffusionPipeline.__call__
    state: dict[str, Any] = {"limit": 1, "calls": []}

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        state["calls"].append(len(kwargs["prompt"]))
        if len(kwargs["prompt"]) > state["limit"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", call)
    return state


async def test_out_of_memory_on_a_batch_retries_rows_one_by_one(
    models: dict[str, str], make_provider: Factory, oom_limit: dict[str, Any]
) -> None:
    provider = make_provider(batch_size=3)
    results = await asyncio.gather(*[_call(provider, models["sd"], f"p{i}", seed=i) for i in range(3)])
    assert oom_limit["calls"] == [3, 1, 1, 1]
    assert [r.extra["batch_rows"] for r in results] == [1, 1, 1]
    assert all(len(r.images) == 1 for r in results)


async def test_a_single_row_out_of_memory_is_rejected_with_the_fix(
    models: dict[str, str], make_provider: Factory, oom_limit: dict[str, Any]
) -> None:
    oom_limit["limit"] = 0
    with pytest.raises(Rejected, match="cpu_offload") as caught:
        await _call(make_provider(), models["sd"], seed=1)
    assert caught.value.code == "out_of_memory"


async def test_a_model_that_cannot_load_stops_the_run(tmp_path: Path, models: dict[str, str],
                                                      make_provider: Factory) -> None:
    broken = tmp_path / "broken"  # the index without the weights
    broken.mkdir()
    shutil.copy(Path(models["sd"], "model_index.json"), broken)
    provider = make_provider()
    with pytest.raises(ModelUnavailable, match="cannot load"):
        await _call(provider, str(broken))


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pixelmill\[local\] \(missing: diffusers\)"):
        DiffusersProvider(ProviderSettings(), {})


def test_options_and_preferred_concurrency(models: dict[str, str]) -> None:
    provider = DiffusersProvider(ProviderSettings(options={"batch_size": 4}), {})
    assert provider.devices == ["cpu"] and provider.preferred_concurrency == 8
    spec = provider.spec_for(models["sd"])
    assert spec.family == "diffusers" and spec.tasks == ("generate", "edit") and spec.mask
    assert spec.free_size is not None and spec.free_size.multiple == 8  # what StableDiffusionPipeline checks
    rounded = provider.plan(spec, ImageParams(size="30x30"), "generate")
    assert (rounded.params["width"], rounded.params["height"]) == (32, 32)
    assert any("30x30" in n and "32x32" in n for n in rounded.notices)
    plan = provider.plan(spec, ImageParams(size="32x32"), "generate")
    assert any("CPU" in n for n in plan.notices)
    with pytest.raises(ConfigError, match="cpu_offload needs GPUs"):
        DiffusersProvider(ProviderSettings(options={"cpu_offload": True}), {})
    with pytest.raises(ConfigError, match="not a diffusers scheduler"):
        DiffusersProvider(ProviderSettings(options={"scheduler": "FastestScheduler"}), {}).plan(
            spec, ImageParams(), "generate")
    with pytest.raises(ConfigError, match="strength"):
        provider.plan(spec, ImageParams(extra={"strength": 0.5}), "generate")


async def test_scheduler_override_is_used_and_recorded(models: dict[str, str], make_provider: Factory) -> None:
    provider = make_provider(scheduler="DDPMScheduler")
    result = await _call(provider, models["sd"], seed=4)
    default = await _call(make_provider(), models["sd"], seed=4)
    assert result.images[0].data != default.images[0].data
    plan = provider.plan(provider.spec_for(models["sd"]), ImageParams(), "generate")
    assert plan.params["scheduler"] == "DDPMScheduler"


@pytest.mark.parametrize("kind", ["sd", "flux"])
async def test_memory_options_still_make_the_image(kind: str, models: dict[str, str], make_provider: Factory) -> None:
    plain = await _call(make_provider(), models[kind], seed=8)
    lean = await _call(make_provider(attention_slicing=True, vae_tiling=True), models[kind], seed=8)
    assert_same_picture(lean.images[0].data, plain.images[0].data)


# ---------------------------------------------------------------- through the command line


def test_a_run_resumes_and_remakes_the_same_images(models: dict[str, str], tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"tiny picture {i}"} for i in range(6)])
    run = tmp_path / "run"
    args = ("generate", src, "-o", run, "--provider", "diffusers", "--model", models["sd"], "--size", "32x32",
            "--steps", "2", "--batch-size", "4", "--quiet")
    first = cli(*args, "--limit", "3")
    assert first.code == 0, first.output
    done = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (run / "images").rglob("*.png")}
    assert len(done) == 3
    second = cli(*args)
    assert second.code == 0, second.output
    rows = read_output(run)
    assert len(rows) == 6 and all(r["pixelmill"]["status"] == "done" for r in rows)
    for name, (mtime, _) in done.items():  # not made again
        assert next((run / "images").rglob(name)).stat().st_mtime_ns == mtime
    seeds = [r["pixelmill"]["response"]["seed"] for r in rows]
    assert len(set(seeds)) == 6
    assert rows[0]["pixelmill"]["parameters"]["num_inference_steps"] == 2
    again = cli(*args, "--restart")
    assert again.code == 0, again.output
    remade = {p.name: p.read_bytes() for p in (run / "images").rglob("*.png")}
    for name, (_, data) in done.items():  # same seeds, same pictures (batched differently this time)
        assert_same_picture(remade[name], data)
