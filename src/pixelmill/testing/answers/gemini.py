"""Gemini answers from a validated `GeminiJob`: the `GenerateContentResponse` (thought parts with drafts,
words, the image with its thought signature, usage) or the refusal a fault names, and the output size.

The synchronous routes (`routes/gemini`) and the batch lines (`routes/gemini_batch`) answer through these, so a
batch line's `response` is exactly what the same request would get synchronously.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from pixelmill.params import nearest_ratio
from pixelmill.testing import signatures
from pixelmill.testing.images import Rendered, colour_for
from pixelmill.testing.state import EmulatorState
from pixelmill.testing.validation.gemini import GeminiJob

SIZE_FACTOR = {"512": 0.5, "512px": 0.5, "1K": 1.0, "2K": 2.0, "4K": 4.0}
PROMPT_IMAGE_TOKENS = 258


def answer(state: EmulatorState, job: GeminiJob, *, thoughts: bool, fault: str | None) -> dict[str, Any]:
    """The `GenerateContentResponse` for `job`: the image (and words), or the refusal `fault` names
    (`prompt_blocked`, `image_safety`, `no_image`, `text_only`); `thoughts` adds thought parts with drafts."""
    spec = job.spec
    secret = state.secret
    prompt_tokens = max(1, math.ceil(job.text_chars / 4)) + PROMPT_IMAGE_TOKENS * job.input_images
    usage: dict[str, Any] = {
        "promptTokenCount": prompt_tokens,
        "totalTokenCount": prompt_tokens,
        "promptTokensDetails": _details(max(1, math.ceil(job.text_chars / 4)),
                                        PROMPT_IMAGE_TOKENS * job.input_images),
    }
    base: dict[str, Any] = {"usageMetadata": usage, "modelVersion": job.model_asked,
                            "responseId": secrets.token_urlsafe(16)}
    if fault == "prompt_blocked":
        return {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": _ratings(blocked=True)}, **base}
    if fault in ("image_safety", "no_image"):
        finish = "IMAGE_SAFETY" if fault == "image_safety" else "NO_IMAGE"
        candidate: dict[str, Any] = {"finishReason": finish, "index": 0}
        if fault == "image_safety":
            candidate["finishMessage"] = "Unable to show the generated image: it may violate our policies."
        return {"candidates": [candidate], **base}
    parts: list[dict[str, Any]] = []
    thought_tokens = 0
    thinking = spec.thinking
    if thinking and (thoughts or job.include_thoughts):
        parts.append({"text": "**Composing the scene**\n\nI am planning the layout and the light.",
                      "thought": True})
        thought_tokens += 120
        for k in range(state.config.thought_drafts if thoughts else 0):
            draft = render(state, job, f"draft{k}")
            parts.append({"inlineData": {"mimeType": draft.mime, "data": draft.b64}, "thought": True})
            thought_tokens += _image_tokens(job)
    text_tokens = 0
    if fault == "text_only" or "IMAGE" not in job.modalities:
        words = ("I can't create that image. Try describing the scene differently."
                 if fault == "text_only" else f"A description of: {job.prompt[:200]}")
        part: dict[str, Any] = {"text": words}
        if thinking:
            part["thoughtSignature"] = signatures.sign_text(secret, words)
        parts.append(part)
        text_tokens = max(1, len(words) // 4)
        images = 0
    else:
        if "TEXT" in job.modalities:
            words = "Here is the image you asked for."
            part = {"text": words}
            if thinking:
                part["thoughtSignature"] = signatures.sign_text(secret, words)
            parts.append(part)
            text_tokens = max(1, len(words) // 4)
        image = render(state, job, "final")
        image_part: dict[str, Any] = {"inlineData": {"mimeType": image.mime, "data": image.b64}}
        if thinking:
            image_part["thoughtSignature"] = signatures.sign_image(secret, image.digest)
        parts.append(image_part)
        images = 1
    output_tokens = text_tokens + images * _image_tokens(job)
    usage["candidatesTokenCount"] = output_tokens
    usage["totalTokenCount"] = prompt_tokens + output_tokens + thought_tokens
    usage["candidatesTokensDetails"] = _details(text_tokens, images * _image_tokens(job))
    if thought_tokens:
        usage["thoughtsTokenCount"] = thought_tokens
    return {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        **base,
    }


def render(state: EmulatorState, job: GeminiJob, salt: str) -> Rendered:
    fmt = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}.get(state.config.gemini_mime, "png")
    return state.images.get(job.width, job.height, fmt, colour_for(f"{job.prompt}#{salt}"),
                               pad_to=state.config.image_bytes)


def resolve_size(job: GeminiJob) -> None:
    spec = job.spec
    ratio = job.aspect_ratio
    if ratio is None and job.turn_images and spec.aspect_ratios:
        first = job.turn_images[0]
        ratio = nearest_ratio(first.width / first.height, spec.aspect_ratios)
    ratio = ratio or "1:1"
    width, height = spec.ratio_pixels.get(ratio, (1024, 1024))
    factor = SIZE_FACTOR.get(job.image_size or spec.default_image_size or "1K", 1.0)
    job.width, job.height = max(1, round(width * factor)), max(1, round(height * factor))


def _image_tokens(job: GeminiJob) -> int:
    table = job.spec.price.output_tokens
    size = job.image_size or job.spec.default_image_size or "1K"
    return table.get("512" if size == "512px" else size) or next(iter(table.values()), 1290)


def _details(text: int, image: int) -> list[dict[str, Any]]:
    out = []
    if text:
        out.append({"modality": "TEXT", "tokenCount": text})
    if image:
        out.append({"modality": "IMAGE", "tokenCount": image})
    return out


def _ratings(*, blocked: bool) -> list[dict[str, Any]]:
    return [
        {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH" if blocked else "NEGLIGIBLE",
         **({"blocked": True} if blocked else {})},
    ]


def count_images(payload: dict[str, Any]) -> int:
    count = 0
    for candidate in payload.get("candidates") or []:
        for part in (candidate.get("content") or {}).get("parts", []):
            if "inlineData" in part and not part.get("thought"):
                count += 1
    return count
