"""Local diffusers models: `--provider diffusers --model PATH_OR_HUB_ID` (extra `pixelmill[local]`).

The engine calls `call` once per row, many rows at a time. Here those calls become batches: rows whose
pipeline kwargs are identical share one pipeline call of up to `batch_size` images, each image with its own
seeded generator; one model copy per device (`devices`), one call at a time per device, spread over the
devices as they free up. The model loads once, lazily, on the first call, in the devices' own threads.

Options (`ProviderSettings.options`; `--param batch_size=4` on the command line): see
`pixelmill.providers.diffusers.options.LocalOptions`. Parameters: see `pixelmill.providers.diffusers.params`.

What a row records: the pipeline kwargs sent (`pixelmill.parameters`), and in `pixelmill.response` the seed
used (derived from the row's index and prompt when none was given, so a re-run makes the same image), the
device, how many rows shared the call, and the size made.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import orjson

from pixelmill.errors import ConfigError, InputError, ModelUnavailable, ProviderError
from pixelmill.models.table import FreeSize, ModelSpec, Price
from pixelmill.providers.base import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    InputImage,
    Provider,
    ProviderSettings,
    Task,
)
from pixelmill.providers.diffusers.batcher import Batcher
from pixelmill.providers.diffusers.families import LocalModel, inspect_model
from pixelmill.providers.diffusers.loader import (
    LoadedCopy,
    call_kwargs,
    dtype_name,
    load_copy,
    require_extra,
    scheduler_class,
    visible_devices,
)
from pixelmill.providers.diffusers.options import device_list, parse_options
from pixelmill.providers.diffusers.params import plan_diffusers, round_size

if TYPE_CHECKING:
    from PIL import Image

    from pixelmill.params import ImageParams, WirePlan
    from pixelmill.providers.diffusers.execute import Outcome, Work

__all__ = ["DiffusersProvider", "derive_seed", "encode_pngs", "load_mapped", "prepare_work"]

# Wire parameters that are not pipeline kwargs: the provider uses them itself.
_NOT_KWARGS = ("seed", "scheduler")


class DiffusersProvider(Provider):
    """Stable Diffusion 1.x/2.x, SDXL, SD3, FLUX.1, FLUX.1 Kontext and Qwen-Image pipelines, run locally."""

    name = "diffusers"
    family = "diffusers"
    chat = False

    def __init__(self, settings: ProviderSettings, env: Mapping[str, str]) -> None:
        super().__init__(settings, env)
        require_extra()
        self.options = parse_options(dict(settings.options))
        cuda, mps = visible_devices()
        self.devices = device_list(self.options.devices, cuda, mps)
        if self.options.cpu_offload and not all(d.startswith("cuda") for d in self.devices):
            raise ConfigError("cpu_offload needs GPUs (it moves models between the CPU and a GPU): drop it, or "
                              "set devices to cuda devices")
        # Rows in flight that keep every device busy with full batches (the engine reads this).
        self.preferred_concurrency = self.options.batch_size * len(self.devices) * 2
        self._loading: dict[str, asyncio.Task[list[LoadedCopy]]] = {}
        self._copies: dict[tuple[str, int], LoadedCopy] = {}
        self._threads = self._device_threads()
        self._batcher: Batcher[Work, Outcome] | None = None

    # ------------------------------------------------------------------ rules and plans (before anything loads)
    def spec_for(self, model: str) -> ModelSpec:
        local = inspect_model(model)
        family = local.family
        return ModelSpec(
            name=model,
            family="diffusers",
            tasks=family.tasks(),
            size_rule="free",
            free_size=FreeSize(multiple=local.multiple, min_ratio=0.0, max_ratio=1e9, max_width=16384,
                               max_height=16384, max_pixels=16384 * 16384),
            n_max=100,
            mask=family.inpaint is not None,
            max_input_images=family.max_input_images,
            max_prompt_chars=10**6,
            max_input_image_bytes=200 * 1024 * 1024,
            price=Price(per_image={"local": 0.0}),  # the electricity is the user's: --max-cost still works
        )

    def plan(self, spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
        local = inspect_model(spec.name)
        class_name = local.family.pipeline_class(task, mask=False)
        signature = (class_name, call_kwargs(class_name)) if class_name else None
        plan = plan_diffusers(local, params, task, signature=signature)
        if self.options.scheduler:
            scheduler_class(self.options.scheduler)  # an unknown name is a ConfigError now, not at load
            plan.calls[0]["scheduler"] = self.options.scheduler
        if self.devices == ["cpu"]:
            plan.notices.append(f"no GPU: running on the CPU ({dtype_name(self.options.dtype, 'cpu')}), which is "
                                "slow: minutes per image for full-size models")
        return plan

    # ------------------------------------------------------------------ one row
    async def call(self, request: ImageRequest, spec: ModelSpec) -> ImageResult:
        try:
            local = inspect_model(request.model)
        except ConfigError as exc:
            raise ModelUnavailable(str(exc)) from None
        await self._load(local)
        seed = request.params.get("seed")
        seed = derive_seed(request) if seed is None else int(seed)
        work, key, share = await asyncio.to_thread(prepare_work, local, request, seed, self.options.batch_size)
        outcome = await self._batches().submit(work, key, share)
        if isinstance(outcome, ProviderError):
            raise outcome
        pngs = await asyncio.to_thread(encode_pngs, outcome.images)
        height, width = outcome.images[0].shape[:2]
        extra: dict[str, Any] = {"seed": seed, "device": outcome.device, "batch_rows": outcome.batch_rows,
                                 "size": f"{width}x{height}"}
        if outcome.refused:
            extra["refused_images"] = outcome.refused
        return ImageResult(
            images=[GeneratedImage(data, "image/png") for data in pngs],
            finish_reason="nsfw_or_nan" if outcome.refused else "stop",
            extra=extra,
        )

    async def aclose(self) -> None:
        if self._batcher is not None:
            await self._batcher.aclose()
            self._batcher = None
        for loading in self._loading.values():
            loading.cancel()
        self._loading.clear()
        for copy in self._copies.values():
            copy.release()
        self._copies.clear()
        for pool in self._threads:  # a call running finishes in its thread; nothing new starts there
            pool.shutdown(wait=False, cancel_futures=True)
        self._threads = self._device_threads()  # usable again: the model reloads on the next call
        if any(d.startswith("cuda") for d in self.devices):
            import torch

            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ for tests and benchmarks
    @property
    def pipeline_calls(self) -> int:
        """Pipeline calls made so far (each one batch)."""
        return self._batcher.calls if self._batcher is not None else 0

    @property
    def busy_seconds(self) -> float:
        """Seconds the devices spent in pipeline calls, summed over devices."""
        return self._batcher.busy_seconds if self._batcher is not None else 0.0

    # ------------------------------------------------------------------ inside
    def _device_threads(self) -> list[ThreadPoolExecutor]:
        """One thread per device: one pipeline call at a time on it (the thread starts on first use)."""
        return [ThreadPoolExecutor(1, thread_name_prefix=f"pixelmill-{d}") for d in self.devices]

    def _batches(self) -> Batcher[Work, Outcome]:
        if self._batcher is None:
            self._batcher = Batcher(len(self.devices), self.options.batch_size, self.options.batch_window,
                                    self._run_batch)
        return self._batcher

    async def _run_batch(self, device: int, works: list[Work]) -> list[Outcome]:
        from pixelmill.providers.diffusers.execute import run_batch

        copy = self._copies[(works[0].model, device)]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads[device], run_batch, copy, works)

    async def _load(self, local: LocalModel) -> None:
        """Load a copy per device once (concurrent first calls wait for the same load)."""
        loading = self._loading.get(local.source)
        if loading is None:
            loading = asyncio.create_task(self._load_copies(local))
            self._loading[local.source] = loading
        await asyncio.shield(loading)

    async def _load_copies(self, local: LocalModel) -> list[LoadedCopy]:
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(pool, load_mapped, local, device, self.options)
                for pool, device in zip(self._threads, self.devices, strict=True)]
        copies = await asyncio.gather(*jobs)
        for index, copy in enumerate(copies):
            self._copies[(local.source, index)] = copy
        return copies


def derive_seed(request: ImageRequest) -> int:
    """A seed for a row that gave none: stable across re-runs of the same row and prompt."""
    digest = hashlib.sha256(f"{request.row}\x1f{request.prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def load_mapped(local: LocalModel, device: str, options: Any) -> LoadedCopy:
    """`load_copy` with its failures mapped: a model that cannot load stops the run (every row would fail)."""
    try:
        return load_copy(local, device, options)
    except ConfigError as exc:
        raise ModelUnavailable(str(exc)) from None
    except ImportError as exc:
        missing = exc.name or str(exc)
        raise ModelUnavailable(f"{local.name} needs the package {missing} to load: pip install {missing}") from None
    except Exception as exc:
        oom = "out of memory" in str(exc).lower()
        hint = ("set cpu_offload=true, or a smaller dtype (bf16/fp16)" if oom else
                "check that the folder holds the weights (what save_pretrained writes), or that the hub id is "
                "right and the hub reachable (HF_TOKEN for gated models)")
        raise ModelUnavailable(f"cannot load {local.name} ({local.describe()}) on {device}: "
                               f"{type(exc).__name__}: {str(exc)[:500]}; {hint}") from None


def prepare_work(local: LocalModel, request: ImageRequest, seed: int, batch_size: int) -> tuple[Work, Hashable, int]:
    """The row's work, its batch key, and the share of a batch it takes (in a thread: images are decoded)."""
    from pixelmill.providers.diffusers.execute import Work

    family = local.family
    task = request.task
    if task not in family.tasks():
        raise InputError(f"{local.name} cannot {task}; it can {' and '.join(family.tasks())}")
    if task == "edit" and not request.images:
        raise InputError("an edit needs an input image: give it in the image field", field="images")
    if len(request.images) > family.max_input_images:
        raise InputError(f"{len(request.images)} input images; {local.describe()} takes at most "
                         f"{family.max_input_images}", field="images")
    if request.mask is not None and family.inpaint is None:
        raise InputError(f"{local.describe()} cannot take a mask (no inpainting pipeline)", field="mask")
    class_name = family.pipeline_class(task, mask=request.mask is not None)
    assert class_name is not None
    kwargs = {k: v for k, v in request.params.items() if k not in _NOT_KWARGS}
    n = int(kwargs.get("num_images_per_prompt", 1))
    images = [_rgb(image) for image in request.images] if task == "edit" else []
    mask = _mask(request.mask) if request.mask is not None and images else None
    if images:
        takes_size = "height" in call_kwargs(class_name)
        if "width" in kwargs and not takes_size:  # the pipeline makes the input's size: resize the input
            target = (int(kwargs["width"]), int(kwargs["height"]))
            images = [_resized(image, target) for image in images]
        elif "width" not in kwargs and takes_size and family.edit_keeps_size:
            # Image-to-image keeps the input's size (rounded), rather than the pipeline's default square.
            kwargs["width"], kwargs["height"] = round_size(*images[0].size, local.multiple)
        if mask is not None and mask.size != images[0].size:
            mask = _resized(mask, images[0].size, nearest=True)
    work = Work(model=local.source, prompt=request.prompt, class_name=class_name, kwargs=kwargs, seed=seed, n=n,
                images=images, mask=mask)
    shared = orjson.dumps(kwargs, option=orjson.OPT_SORT_KEYS)
    alone = bool(images) and (n > 1 or len(images) > 1 or not family.batch_edits)
    if alone:  # rows that cannot share a call take a whole batch and run at once
        return work, ("alone", id(work)), max(n, batch_size)
    sizes = tuple(image.size for image in images)
    return work, (local.source, class_name, shared, sizes, mask is not None), n


def _open(image: InputImage) -> Image.Image:
    from PIL import Image, ImageOps

    try:
        opened = Image.open(io.BytesIO(image.data))
        opened.load()
    except Exception as exc:
        raise InputError(f"cannot read image {image.name}: {exc}", field="images") from None
    return ImageOps.exif_transpose(opened)


def _rgb(image: InputImage) -> Image.Image:
    """RGB for the pipeline; transparent parts become white (not the black that dropping alpha would give)."""
    from PIL import Image

    opened = _open(image)
    if opened.mode in ("RGBA", "LA", "PA") or (opened.mode == "P" and "transparency" in opened.info):
        rgba = opened.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return opened.convert("RGB")


def _mask(image: InputImage) -> Image.Image:
    """diffusers' mask convention: white is repainted. A mask with transparency follows OpenAI's convention
    (transparent is edited), so its alpha is inverted; an opaque mask is taken as it is (white = edit)."""
    from PIL import ImageOps

    opened = _open(image)
    if opened.mode in ("RGBA", "LA", "PA") or (opened.mode == "P" and "transparency" in opened.info):
        alpha = opened.convert("RGBA").getchannel("A")
        lowest, _ = alpha.getextrema()
        if isinstance(lowest, int | float) and lowest < 255:
            return ImageOps.invert(alpha)
    return opened.convert("L")


def _resized(image: Image.Image, size: tuple[int, int], nearest: bool = False) -> Image.Image:
    from PIL import Image

    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS)


def encode_pngs(arrays: list[Any]) -> list[bytes]:
    from PIL import Image

    out = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out
