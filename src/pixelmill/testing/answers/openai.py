"""GPT image answers from a validated `ImageJob`: the rendered images, the `ImagesResponse` body and its usage.

The synchronous routes (`routes/openai`) and the batch lines (`routes/openai_batch`) answer through these, so a
batch line's body is exactly what the same request would get synchronously. DALL·E `url` answers stay in the
route: they need the request's origin.
"""

from __future__ import annotations

import math
import time
from typing import Any

from pixelmill.testing.images import Rendered, colour_for
from pixelmill.testing.state import EmulatorState
from pixelmill.testing.validation.openai import ImageJob, Upload


def render(state: EmulatorState, job: ImageJob, index: int) -> Rendered:
    fmt = "png" if job.dalle else job.output_format
    quality = job.compression if job.compression is not None else 95
    return state.images.get(
        job.width,
        job.height,
        fmt,
        colour_for(f"{job.prompt}#{index}"),
        transparent=job.background == "transparent",
        pad_to=state.config.image_bytes,
        quality=max(1, quality),
    )


def gpt_answer(job: ImageJob, rendered: list[Rendered]) -> dict[str, Any]:
    """The `ImagesResponse` of a GPT image model: base64 images, the resolved settings and the usage."""
    return {
        "created": int(time.time()),
        "data": [{"b64_json": image.b64} for image in rendered],
        "background": job.background,
        "output_format": job.output_format,
        "size": f"{job.width}x{job.height}",
        "quality": job.quality,
        "usage": usage(job),
    }


def usage(job: ImageJob, images: int | None = None) -> dict[str, Any]:
    """Token counts consistent with the model table: output tokens per image from `price.output_tokens`
    (scaled by pixels for sizes it does not list), text tokens about a quarter of the prompt's characters,
    image tokens from the usual 512-pixel tile count of each input image."""
    count = job.n if images is None else images
    tokens_table = job.spec.price.output_tokens
    key = f"{job.quality}:{job.width}x{job.height}"
    per_image = tokens_table.get(key)
    if per_image is None:
        base = tokens_table.get(f"{job.quality}:1024x1024") or tokens_table.get("medium:1024x1024") or 1056
        per_image = max(1, round(base * job.width * job.height / (1024 * 1024)))
    text_tokens = max(1, math.ceil(len(job.prompt) / 4))
    image_tokens = sum(_input_image_tokens(u, job.input_fidelity == "high") for u in job.images)
    output = per_image * count
    inputs = text_tokens + image_tokens
    return {
        "input_tokens": inputs,
        "output_tokens": output,
        "total_tokens": inputs + output,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
        "output_tokens_details": {"image_tokens": output, "text_tokens": 0},
    }


def _input_image_tokens(upload: Upload, high_fidelity: bool) -> int:
    w: float = upload.info.width
    h: float = upload.info.height
    scale = min(1.0, 2048 / max(w, h))
    w, h = w * scale, h * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return 65 + 129 * tiles + (4096 if high_fidelity else 0)


