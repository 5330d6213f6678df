"""Gemini `generateContent` request rules: the proto-JSON shape (camelCase or snake_case field names, unknown
names refused), then the model table (aspect ratios, image sizes, input image count and bytes, prompt length,
candidate count) and, for models that enforce them, the thought signatures of echoed model turns."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from pixelmill.models.table import ModelSpec, ModelTable
from pixelmill.testing import signatures
from pixelmill.testing import wire_errors as we
from pixelmill.testing.images import ImageInfo, inspect

TOP_FIELDS = frozenset({"contents", "generationConfig", "safetySettings", "systemInstruction", "tools",
                        "toolConfig", "cachedContent", "labels", "model"})
CONTENT_FIELDS = frozenset({"role", "parts"})
PART_FIELDS = frozenset({"text", "inlineData", "fileData", "thought", "thoughtSignature", "functionCall",
                         "functionResponse", "executableCode", "codeExecutionResult", "videoMetadata",
                         "partMetadata", "mediaResolution"})
BLOB_FIELDS = frozenset({"mimeType", "data", "displayName"})
FILE_FIELDS = frozenset({"mimeType", "fileUri", "displayName"})
GENERATION_FIELDS = frozenset({
    "responseModalities", "imageConfig", "thinkingConfig", "temperature", "topP", "topK", "candidateCount",
    "maxOutputTokens", "stopSequences", "seed", "presencePenalty", "frequencyPenalty", "responseMimeType",
    "responseSchema", "responseJsonSchema", "responseLogprobs", "logprobs", "mediaResolution", "speechConfig",
    "enableEnhancedCivicAnswers", "routingConfig", "modelSelectionConfig", "audioTimestamp",
})
IMAGE_CONFIG_FIELDS = frozenset({"aspectRatio", "imageSize"})
THINKING_FIELDS = frozenset({"includeThoughts", "thinkingBudget", "thinkingLevel"})
MODALITIES = ("TEXT", "IMAGE", "AUDIO", "VIDEO")
ASSUMED_FILE = ImageInfo("png", 1024, 1024, False)  # what a fileData reference stands for
_SNAKE = re.compile(r"_([a-z])")


@dataclass(slots=True)
class GeminiJob:
    spec: ModelSpec
    model_asked: str
    prompt: str  # the text of the last user turn
    text_chars: int
    input_images: int  # inline or file images in all turns
    turn_images: list[ImageInfo]  # images of the last user turn
    modalities: tuple[str, ...]
    aspect_ratio: str | None  # as asked
    image_size: str | None  # as asked
    width: int = 0
    height: int = 0
    include_thoughts: bool = False
    model_turns: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _camel(name: str) -> str:
    return _SNAKE.sub(lambda m: m.group(1).upper(), name)


def _fields(obj: object, allowed: frozenset[str], where: str) -> dict[str, Any]:
    """`obj` as a dict with camelCase keys; unknown names refused as the API does."""
    if not isinstance(obj, dict):
        raise we.gemini_invalid(f"Invalid value at '{where}': expected an object.")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _camel(key)
        if name not in allowed:
            raise we.gemini_invalid(
                f'Invalid JSON payload received. Unknown name "{key}" at \'{where}\': Cannot find field.'
            )
        out[name] = value
    return out


def resolve_gemini_model(table: ModelTable, name: str, *, serve_retired: bool, today: dt.date | None) -> ModelSpec:
    spec = table.get(name)
    if spec is None or spec.family != "gemini" or (spec.retired(today) and not serve_retired):
        raise we.gemini_model_not_found(name)
    return spec


def build_gemini_job(
    body: object,
    model: str,
    *,
    table: ModelTable,
    serve_retired: bool,
    today: dt.date | None,
    secret: bytes,
) -> GeminiJob:
    top = _fields(body, TOP_FIELDS, "")
    spec = resolve_gemini_model(table, model, serve_retired=serve_retired, today=today)
    contents = top.get("contents")
    if not contents:
        raise we.gemini_invalid("* GenerateContentRequest.contents: contents is not specified\n")
    if not isinstance(contents, list):
        raise we.gemini_invalid("Invalid value at 'contents': expected a list.")
    text_chars = 0
    input_images = 0
    turn_images: list[ImageInfo] = []
    prompt = ""
    model_turns = 0
    for i, raw in enumerate(contents):
        content = _fields(raw, CONTENT_FIELDS, f"contents[{i}]")
        role = content.get("role") or "user"
        if role not in ("user", "model"):
            raise we.gemini_invalid("Please use a valid role: user, model.")
        parts = content.get("parts")
        if not parts or not isinstance(parts, list):
            raise we.gemini_invalid(
                f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"
            )
        texts: list[str] = []
        images: list[ImageInfo] = []
        checked: list[tuple[dict[str, Any], bytes | None]] = []
        for j, raw_part in enumerate(parts):
            where = f"contents[{i}].parts[{j}]"
            part = _fields(raw_part, PART_FIELDS, where)
            data: bytes | None = None
            if "text" in part:
                if not isinstance(part["text"], str):
                    raise we.gemini_invalid(f"Invalid value at '{where}.text' (TYPE_STRING).")
                if not part.get("thought"):
                    texts.append(part["text"])
                text_chars += len(part["text"])
            elif "inlineData" in part:
                blob = _fields(part["inlineData"], BLOB_FIELDS, f"{where}.inline_data")
                mime = blob.get("mimeType")
                encoded = blob.get("data")
                if not isinstance(encoded, str) or not encoded:
                    raise we.gemini_invalid(f"* GenerateContentRequest.{where}.inline_data.data: data is empty\n")
                try:
                    data = signatures.decode_bytes(encoded)
                except ValueError:
                    raise we.gemini_invalid(
                        f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 decoding failed."
                    ) from None
                if not isinstance(mime, str) or not mime:
                    raise we.gemini_invalid(f"* GenerateContentRequest.{where}.inline_data.mime_type: "
                                            "mime_type is not specified\n")
                if mime.startswith("image/"):
                    if spec.input_formats and mime not in spec.input_formats:
                        raise we.gemini_invalid(f"Unsupported MIME type: {mime}")
                    if len(data) > spec.max_input_image_bytes:
                        raise we.gemini_invalid(
                            f"Request payload size exceeds the limit: image at '{where}' is {len(data)} bytes, "
                            f"{spec.name} takes up to {spec.max_input_image_bytes}."
                        )
                    info = inspect(data)
                    if info is None:
                        raise we.gemini_invalid("Unable to process input image. Please retry or report in "
                                                "https://developers.generativeai.google/guide/troubleshooting")
                    if not part.get("thought"):
                        images.append(info)
                        input_images += 1
                else:
                    raise we.gemini_invalid(f"Unsupported MIME type: {mime}")
            elif "fileData" in part:
                ref = _fields(part["fileData"], FILE_FIELDS, f"{where}.file_data")
                if not str(ref.get("mimeType", "")).startswith("image/") or not ref.get("fileUri"):
                    raise we.gemini_invalid(f"Invalid value at '{where}.file_data'.")
                images.append(ASSUMED_FILE)
                input_images += 1
            checked.append((part, data))
        if role == "model":
            model_turns += 1
            if spec.strict_thought_signatures:
                _check_signatures(checked, i, secret)
        else:
            prompt = "\n".join(texts)
            turn_images = images
    if input_images > spec.max_input_images:
        raise we.gemini_invalid(
            f"Too many input images: {input_images}; {spec.name} takes at most {spec.max_input_images}."
        )
    if text_chars > spec.max_prompt_chars:
        raise we.gemini_invalid(
            f"The input token count exceeds the maximum number of tokens allowed ({spec.max_prompt_chars // 4})."
        )
    job = GeminiJob(spec, model, prompt, text_chars, input_images, turn_images, ("TEXT", "IMAGE"), None, None,
                    model_turns=model_turns)
    _generation_config(top.get("generationConfig"), job)
    return job


def _check_signatures(parts: list[tuple[dict[str, Any], bytes | None]], index: int, secret: bytes) -> None:
    """Echoed model turns must carry the signatures issued: on the first non-thought part and on every
    non-thought image part, unchanged, over unchanged content."""
    first = True
    for part, data in parts:
        if part.get("thought"):
            continue
        needed = first or data is not None
        first = False
        signature = part.get("thoughtSignature")
        if signature is None:
            if needed:
                raise _bad_signature(index)
            continue
        ok = isinstance(signature, str) and signatures.verify(
            secret, signature, text=part.get("text") if data is None else None, image=data
        )
        if not ok:
            raise _bad_signature(index)


def _bad_signature(index: int) -> we.WireError:
    return we.gemini_invalid(
        f"Unable to submit request because it has an invalid thought signature for content at index {index}"
    )


def _generation_config(raw: object, job: GeminiJob) -> None:
    if raw is None:
        return
    config = _fields(raw, GENERATION_FIELDS, "generation_config")
    spec = job.spec
    modalities = config.get("responseModalities")
    if modalities is not None:
        if not isinstance(modalities, list) or not modalities:
            raise we.gemini_invalid("Invalid value at 'generation_config.response_modalities': expected a list.")
        for k, value in enumerate(modalities):
            if value not in MODALITIES:
                raise we.gemini_invalid(
                    f"Invalid value at 'generation_config.response_modalities[{k}]' "
                    f"(type.googleapis.com/google.ai.generativelanguage.v1beta.GenerationConfig.Modality), "
                    f'"{value}"'
                )
            if value not in ("TEXT", "IMAGE"):
                raise we.gemini_invalid(f"The requested combination of response modalities ({value}) is not "
                                        f"supported by the model {spec.name}.")
        job.modalities = tuple(dict.fromkeys(modalities))
    count = config.get("candidateCount")
    if count is not None and count != 1 and count > spec.n_max:
        raise we.gemini_invalid(f"Multiple candidates is not enabled for models/{spec.name}.")
    image = config.get("imageConfig")
    if image is not None:
        image = _fields(image, IMAGE_CONFIG_FIELDS, "generation_config.image_config")
        ratio = image.get("aspectRatio")
        if ratio is not None and ratio not in spec.aspect_ratios:
            raise we.gemini_invalid(
                f"Unsupported aspect ratio: {ratio}. {spec.name} supports {', '.join(spec.aspect_ratios)}."
            )
        size = image.get("imageSize")
        if size is not None:
            allowed = list(spec.image_sizes) + (["512px"] if "512" in spec.image_sizes else [])
            if size not in allowed:
                supported = ", ".join(spec.image_sizes) if spec.image_sizes else "none (the size is fixed)"
                raise we.gemini_invalid(f"Unsupported image size: {size}. {spec.name} supports {supported}.")
        job.aspect_ratio, job.image_size = ratio, size
    thinking = config.get("thinkingConfig")
    if thinking is not None:
        thinking = _fields(thinking, THINKING_FIELDS, "generation_config.thinking_config")
        job.include_thoughts = bool(thinking.get("includeThoughts"))
