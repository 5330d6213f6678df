"""One pipeline call for a batch of rows on one device, in that device's worker thread.

Each row brings its prompt, its input images and its seed; image i of a row is made from its own generator
seeded `seed + i`, so a row's images do not depend on what else shared the call. Generators live on the CPU:
the starting noise is then the same on every device, and only the arithmetic differs between devices.

A batch that fails (out of GPU memory above all) is run again one row at a time, so that one row too big or
one bad input does not fail its neighbours; a single row that still fails is `Rejected` with what to change.
Images that come back NaN, all black (what a safety checker returns) or flagged by the pipeline are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pixelmill.errors import ProviderError, Rejected
from pixelmill.providers.diffusers.loader import LoadedCopy, call_kwargs

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

log = logging.getLogger("pixelmill.providers.diffusers.provider")

_MESSAGE_CHARS = 600


@dataclass(slots=True)
class Work:
    """One row's share of a pipeline call."""

    model: str  # LocalModel.source: which loaded copy runs it
    prompt: str
    class_name: str  # the pipeline class for its task (text-to-image, image-to-image, inpainting)
    kwargs: dict[str, Any]  # the kwargs every row of the batch shares (sizes, steps, guidance, --param)
    seed: int
    n: int
    images: list[Image.Image]
    mask: Image.Image | None = None


@dataclass(slots=True)
class Made:
    """What a row got: its images (uint8 HxWx3) and how many of its images were refused."""

    images: list[np.ndarray]
    refused: int
    device: str
    batch_rows: int


Outcome = Made | ProviderError


def run_batch(copy: LoadedCopy, works: Sequence[Work]) -> list[Outcome]:
    """Run `works` as one call (they share class and kwargs); one outcome per work, in order."""
    retry_singly = False
    try:
        arrays, flagged = _call(copy, works)
    except Exception as exc:  # mapped below; nothing of the traceback is kept (it pins GPU memory)
        oom = _is_oom(exc)
        summary = f"{type(exc).__name__}: {exc}"[:_MESSAGE_CHARS]
        if len(works) == 1:
            return [_row_error(copy, works[0], oom, summary)]
        log.warning("a batch of %d rows failed on %s (%s); running them one by one", len(works), copy.device,
                    "out of memory" if oom else summary)
        retry_singly = True
    if retry_singly:
        _free_memory(copy.device)
        return [run_batch(copy, [work])[0] for work in works]
    outcomes: list[Outcome] = []
    start = 0
    for work in works:
        own = slice(start, start + work.n)
        start += work.n
        outcomes.append(_keep_good(arrays[own], flagged[own], copy.device, len(works)))
    return outcomes


def _call(copy: LoadedCopy, works: Sequence[Work]) -> tuple[Any, list[bool]]:
    import torch

    first = works[0]
    pipe = copy.pipeline(first.class_name)
    accepted = call_kwargs(first.class_name)
    kwargs = dict(first.kwargs)
    if "height" not in accepted:  # image-to-image pipelines that take the input's size (images resized)
        kwargs.pop("height", None)
        kwargs.pop("width", None)
    if len(first.images) > 1:  # several input images for one prompt (Qwen-Image-Edit Plus): one row a call
        kwargs["prompt"] = first.prompt
        kwargs["image"] = first.images
    else:
        kwargs["prompt"] = [w.prompt for w in works]
        if first.images:
            kwargs["image"] = [w.images[0] for w in works]
    if first.mask is not None:
        kwargs["mask_image"] = [w.mask for w in works]
    kwargs["generator"] = [torch.Generator("cpu").manual_seed(w.seed + i) for w in works for i in range(w.n)]
    kwargs["output_type"] = "np"
    out = pipe(**kwargs)
    images = out.images
    expected = sum(w.n for w in works)
    if len(images) != expected:
        raise RuntimeError(f"{first.class_name} returned {len(images)} images for {expected} asked")
    flags = getattr(out, "nsfw_content_detected", None)
    flagged = [bool(f) for f in flags] if isinstance(flags, list) and len(flags) == expected else [False] * expected
    return images, flagged


def _keep_good(arrays: Any, flagged: list[bool], device: str, rows: int) -> Outcome:
    good: list[np.ndarray] = []
    for image, flag in zip(arrays, flagged, strict=True):
        u8 = to_uint8(image)
        if flag or u8 is None or not u8.any():
            continue
        good.append(u8)
    refused = len(flagged) - len(good)
    if not good:
        from pixelmill.errors import Refused

        return Refused(
            "the pipeline returned no usable image (NaN, all black or flagged by its safety checker): "
            "the prompt may be flagged, or the dtype may overflow (try dtype=bf16 or fp32)",
            reason="nsfw_or_nan",
        )
    return Made(good, refused, device, rows)


def to_uint8(image: Any) -> np.ndarray | None:
    """A float image in [0, 1] (HxWxC) as uint8, the way diffusers makes PIL images; None when it holds NaN or
    infinities (checked first: casting them would give noise, not an error)."""
    import numpy as np

    if not np.isfinite(image).all():
        return None
    u8: np.ndarray = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    return u8


def _row_error(copy: LoadedCopy, work: Work, oom: bool, summary: str) -> ProviderError:
    size = f"{work.kwargs['width']}x{work.kwargs['height']}" if "width" in work.kwargs else "default size"
    if oom:
        return Rejected(
            f"out of memory on {copy.device} for one row ({size}, {work.n} image(s), {copy.dtype}): lower --size "
            "or --n, or set the options cpu_offload=true, vae_tiling=true or attention_slicing=true",
            code="out_of_memory",
        )
    return Rejected(f"{work.class_name} failed on this row ({size}): {summary}", code="pipeline_error")


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_memory(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        with torch.cuda.device(device):
            torch.cuda.empty_cache()
