"""OpenAI-family request rules: the official schema's shapes first, then the model table's per-model rules.

The schema part mirrors `CreateImageRequest`, `CreateImageEditRequest`, `EditImageBodyJsonParam` and
`CreateImageVariationRequest` (required fields, types, enums, ranges, `ImageRefParam` exactly-one-of, unknown
parameters). The model part holds what the spec keeps in prose: sizes per model (gpt-image-2's free sizes),
n per model, qualities, styles, formats, background + format, prompt length, image count and bytes, masks,
input fidelity, DALL·E-only and GPT-image-only parameters. Errors use the API's codes and messages.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pybase64

from pixelmill.models.table import ModelSpec, ModelTable
from pixelmill.testing import wire_errors as we
from pixelmill.testing.images import ImageInfo, inspect

GPT_ONLY = ("output_format", "output_compression", "background", "moderation", "stream", "partial_images")
_COMMON = ("prompt", "model", "n", "size", "quality", "user", "safety_identifier")
GENERATION_FIELDS = frozenset(
    (*_COMMON, "response_format", "output_format", "output_compression", "stream", "partial_images",
     "moderation", "background", "style")
)
EDIT_MULTIPART_FIELDS = frozenset(
    (*_COMMON, "image", "image[]", "mask", "background", "input_fidelity", "output_format",
     "output_compression", "response_format", "stream", "partial_images")
)
EDIT_JSON_FIELDS = frozenset(
    (*_COMMON, "images", "mask", "input_fidelity", "output_format", "output_compression", "moderation",
     "background", "stream", "partial_images")
)
VARIATION_FIELDS = frozenset(("image", "model", "n", "response_format", "size", "user"))

QUALITY_ENUM = {
    ("generations", "json"): ("standard", "hd", "low", "medium", "high", "auto"),
    ("edits", "multipart"): ("standard", "low", "medium", "high", "auto"),
    ("edits", "json"): ("low", "medium", "high", "auto"),
}
JSON_EDIT_SIZES = ("auto", "1024x1024", "1536x1024", "1024x1536")
VARIATION_SIZES = ("256x256", "512x512", "1024x1024")
MASK_MAX_BYTES = 4 * 1024 * 1024
ASSUMED_FILE = ImageInfo("png", 1024, 1024, False)  # what a `file_id` reference stands for


@dataclass(slots=True)
class Upload:
    """One input image as received (multipart file, data URL, or a file_id reference)."""

    data: bytes
    info: ImageInfo
    content_type: str | None = None


@dataclass(slots=True)
class ImageJob:
    """A validated OpenAI-family request: what to answer with."""

    endpoint: str  # generations | edits | variations
    spec: ModelSpec
    model_asked: str
    prompt: str
    n: int
    size_asked: str | None
    width: int
    height: int
    quality: str | None  # resolved (what the answer reports)
    style: str | None
    response_format: str | None  # url | b64_json for DALL·E; None for GPT image models
    output_format: str  # png | jpeg | webp
    compression: int | None
    background: str | None  # transparent | opaque (GPT image models)
    moderation: str | None
    input_fidelity: str | None
    images: list[Upload] = field(default_factory=list)
    mask: Upload | None = None
    stream: bool = False
    partial_images: int = 0

    @property
    def dalle(self) -> bool:
        return bool(self.spec.response_formats)


# ---------------------------------------------------------------- model lookup


def resolve_model(
    table: ModelTable, name: str, *, serve_retired: bool, today: dt.date | None, family: str = "openai"
) -> ModelSpec:
    spec = table.get(name)
    if spec is None or spec.family != family:
        raise we.openai_model_not_found(name)
    if spec.retired(today) and not serve_retired:
        raise we.openai_model_not_found(name)
    return spec


# ---------------------------------------------------------------- schema-level checks


def _int(body: dict[str, Any], name: str, form: str, lo: int | None = None, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if form == "multipart" and isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise we.invalid_type(name, "an integer", value) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise we.invalid_type(name, "an integer", value)
    if lo is not None and value < lo:
        raise we.openai_error(
            400,
            f"Invalid '{name}': integer below minimum value. Expected a value >= {lo}, but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    if hi is not None and value > hi:
        raise we.openai_error(
            400,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {hi}, but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )
    return value


def _bool(body: dict[str, Any], name: str, form: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if form == "multipart" and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise we.invalid_type(name, "a boolean", value)
    return value


def _str(body: dict[str, Any], name: str, enum: tuple[str, ...] | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise we.invalid_type(name, "a string", value)
    if enum is not None and value not in enum:
        raise we.invalid_value(name, value, enum)
    return value


def _check_unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    for name in body:
        if name not in allowed:
            raise we.unknown_parameter(name)


def _prompt(body: dict[str, Any]) -> str:
    if "prompt" not in body or body["prompt"] is None:
        raise we.missing_parameter("prompt")
    prompt = body["prompt"]
    if not isinstance(prompt, str):
        raise we.invalid_type("prompt", "a string", prompt)
    if not prompt:
        raise we.openai_error(
            400, "Invalid 'prompt': empty string. Expected a string with minimum length 1, but got an empty "
            "string instead.", param="prompt", code="empty_string"
        )
    return prompt


# ---------------------------------------------------------------- images


def read_upload(data: bytes, param: str, content_type: str | None = None) -> Upload:
    info = inspect(data)
    if info is None:
        raise we.openai_error(
            400,
            f"Invalid input image - format must be in ['image/jpeg', 'image/png', 'image/webp'] "
            f"(could not read the '{param}' upload as an image).",
            param=param,
            code="invalid_image_format",
        )
    return Upload(data, info, content_type)


def read_image_ref(ref: object, param: str) -> Upload:
    """An `ImageRefParam`: exactly one of `image_url` (a data URL here) or `file_id`, nothing else."""
    if not isinstance(ref, dict):
        raise we.invalid_type(param, "an object", ref)
    extra = set(ref) - {"image_url", "file_id"}
    if extra:
        raise we.unknown_parameter(f"{param}.{sorted(extra)[0]}")
    has_url, has_file = ref.get("image_url") is not None, ref.get("file_id") is not None
    if has_url == has_file:
        raise we.openai_error(
            400,
            f"Invalid '{param}': provide exactly one of 'image_url' or 'file_id'.",
            param=param,
            code="invalid_value",
        )
    if has_file:
        file_id = ref["file_id"]
        if not isinstance(file_id, str) or not file_id.startswith("file-"):
            raise we.invalid_value(f"{param}.file_id", file_id, ("file-...",))
        return Upload(b"", ASSUMED_FILE)
    url = ref["image_url"]
    if not isinstance(url, str):
        raise we.invalid_type(f"{param}.image_url", "a string", url)
    if len(url) > 20_971_520:
        raise we.openai_error(400, f"Invalid '{param}.image_url': string too long.", param=param,
                              code="string_above_max_length")
    if not url.startswith("data:"):
        raise we.openai_error(
            400,
            f"Invalid '{param}.image_url': the emulator cannot fetch remote URLs; send a data: URL or a file_id.",
            param=param,
            code="invalid_image_url",
        )
    head, _, payload = url.partition(",")
    if ";base64" not in head:
        raise we.openai_error(400, f"Invalid '{param}.image_url': data URL must be base64.", param=param,
                              code="invalid_image_url")
    try:
        data = pybase64.b64decode(payload, validate=True)
    except ValueError:
        raise we.openai_error(400, f"Invalid '{param}.image_url': invalid base64 data.", param=param,
                              code="invalid_base64") from None
    return read_upload(data, param, head[5:].split(";")[0] or None)


def _check_images(spec: ModelSpec, images: list[Upload], mask: Upload | None, param: str) -> None:
    if not images:
        raise we.missing_parameter(param)
    if len(images) > max(1, spec.max_input_images):
        raise we.openai_error(
            400,
            f"Invalid '{param}': {spec.name} takes at most {max(1, spec.max_input_images)} image(s), "
            f"got {len(images)}.",
            param=param,
            code="array_above_max_length",
        )
    for upload in images:
        if len(upload.data) > spec.max_input_image_bytes:
            raise we.openai_error(
                400,
                f"Invalid '{param}': image is {len(upload.data)} bytes; {spec.name} takes images up to "
                f"{spec.max_input_image_bytes} bytes.",
                param=param,
                code="image_too_large",
            )
        mime = f"image/{upload.info.format}"
        if spec.input_formats and mime not in spec.input_formats:
            allowed = ", ".join(f"'{f}'" for f in spec.input_formats)
            raise we.openai_error(
                400,
                f"Invalid input image - format must be in [{allowed}], but got '{mime}'.",
                param=param,
                code="invalid_image_format",
            )
        if spec.square_input and upload.info.width != upload.info.height:
            raise we.openai_error(
                400, f"Invalid input image - {spec.name} needs a square image, got "
                f"{upload.info.width}x{upload.info.height}.", param=param, code="invalid_image"
            )
    if mask is not None:
        if not spec.mask:
            raise we.unknown_parameter("mask")
        if mask.info.format != "png":
            raise we.openai_error(400, "Invalid mask: the mask must be a PNG file.", param="mask",
                                  code="invalid_image_format")
        if len(mask.data) > MASK_MAX_BYTES:
            raise we.openai_error(400, "Invalid mask: the mask must be less than 4 MB.", param="mask",
                                  code="image_too_large")
        first = images[0].info
        if (mask.info.width, mask.info.height) != (first.width, first.height):
            raise we.openai_error(
                400,
                f"Invalid mask: mask size {mask.info.width}x{mask.info.height} does not match image size "
                f"{first.width}x{first.height}.",
                param="mask",
                code="invalid_image",
            )


# ---------------------------------------------------------------- sizes


def _resolve_size(spec: ModelSpec, size: str | None, endpoint: str, images: list[Upload]) -> tuple[int, int]:
    dalle = bool(spec.response_formats)
    if size is None:
        size = "1024x1024" if dalle or endpoint == "variations" else "auto"
    allowed_listed = VARIATION_SIZES if endpoint == "variations" else spec.sizes
    code = "invalid_size" if dalle else "invalid_value"
    if size == "auto":
        if "auto" not in allowed_listed:
            raise we.invalid_value("size", size, allowed_listed, code=code)
        if endpoint == "edits" and images:
            info = images[0].info
            ratio = info.width / info.height
            if ratio > 1.2:
                return 1536, 1024
            if ratio < 1 / 1.2:
                return 1024, 1536
        return 1024, 1024
    if size in allowed_listed:
        w, _, h = size.partition("x")
        return int(w), int(h)
    if spec.size_rule != "free" or spec.free_size is None or endpoint == "variations":
        raise we.invalid_value("size", size, allowed_listed, code=code)
    rule = spec.free_size
    try:
        w_text, h_text = size.lower().split("x")
        width, height = int(w_text), int(h_text)
    except ValueError:
        raise we.openai_error(
            400, f"Invalid size '{size}': expected WIDTHxHEIGHT, for example 1536x864.", param="size",
            code="invalid_value"
        ) from None
    problems = []
    if width % rule.multiple or height % rule.multiple:
        problems.append(f"width and height must be multiples of {rule.multiple}")
    if width <= 0 or height <= 0:
        problems.append("width and height must be positive")
    elif not rule.min_ratio - 1e-3 <= width / height <= rule.max_ratio + 1e-3:
        problems.append("the aspect ratio must be between 1:3 and 3:1")
    if width > rule.max_width or height > rule.max_height:
        problems.append(f"sides must be at most {rule.max_width}x{rule.max_height}")
    if width * height > rule.max_pixels:
        problems.append(f"at most {rule.max_pixels} pixels")
    if width * height < rule.min_pixels:
        problems.append(f"at least {rule.min_pixels} pixels")
    if problems:
        raise we.openai_error(
            400, f"Invalid size '{size}' for {spec.name}: " + "; ".join(problems) + ".", param="size",
            code="invalid_value"
        )
    return width, height


# ---------------------------------------------------------------- the whole request


def build_job(
    *,
    endpoint: str,
    form: str,
    body: dict[str, Any],
    uploads: dict[str, list[Upload]],
    table: ModelTable,
    serve_retired: bool,
    today: dt.date | None,
    azure: bool = False,
    model_override: str | None = None,
) -> ImageJob:
    """Check a request against the schema and the model table. `body` holds the non-file fields (JSON values,
    or strings from a multipart form); `uploads` the decoded images by field (`image`, `mask`)."""
    body = {k: v for k, v in body.items() if v is not None}  # the spec's fields are nullable
    allowed = {
        ("generations", "json"): GENERATION_FIELDS,
        ("edits", "multipart"): EDIT_MULTIPART_FIELDS,
        ("edits", "json"): EDIT_JSON_FIELDS,
        ("variations", "multipart"): VARIATION_FIELDS,
    }[(endpoint, form)]
    _check_unknown(body, allowed)

    # Schema: required fields, types, enums, ranges.
    prompt = _prompt(body) if endpoint != "variations" else ""
    images: list[Upload] = []
    mask: Upload | None = None
    if form == "json" and endpoint == "edits":
        refs = body.get("images")
        if refs is None:
            raise we.missing_parameter("images")
        if not isinstance(refs, list):
            raise we.invalid_type("images", "an array", refs)
        if not 1 <= len(refs) <= 16:
            raise we.openai_error(
                400, f"Invalid 'images': expected an array with 1 to 16 items, got {len(refs)}.",
                param="images", code="array_above_max_length" if refs else "empty_array"
            )
        images = [read_image_ref(ref, f"images[{i}]") for i, ref in enumerate(refs)]
        if "mask" in body:
            mask = read_image_ref(body["mask"], "mask")
    elif endpoint in ("edits", "variations"):
        images = uploads.get("image", [])
        if not images:
            raise we.missing_parameter("image")
        if endpoint == "edits" and len(images) > 16:
            raise we.openai_error(400, f"Invalid 'image': expected at most 16 images, got {len(images)}.",
                                  param="image", code="array_above_max_length")
        masks = uploads.get("mask", [])
        mask = masks[0] if masks else None
    n = _int(body, "n", form, 1, 10)
    partial_images = _int(body, "partial_images", form, 0, 3) or 0
    compression = _int(body, "output_compression", form, 0, 100)
    stream = _bool(body, "stream", form)
    quality = _str(body, "quality", QUALITY_ENUM.get((endpoint, form)))
    response_format = _str(body, "response_format", ("url", "b64_json"))
    output_format = _str(body, "output_format", ("png", "jpeg", "webp"))
    background = _str(body, "background", ("transparent", "opaque", "auto"))
    moderation = _str(body, "moderation", ("low", "auto"))
    style = _str(body, "style", ("vivid", "natural"))
    fidelity = _str(body, "input_fidelity", ("high", "low"))
    size = _str(body, "size", JSON_EDIT_SIZES if form == "json" and endpoint == "edits" else None)
    _str(body, "user")
    model_asked = model_override or _str(body, "model")
    if model_asked is None:
        gpt_specific = any(k in body for k in GPT_ONLY)
        model_asked = {"generations": "gpt-image-1.5" if gpt_specific else "dall-e-2",
                       "edits": "gpt-image-1.5", "variations": "dall-e-2"}[endpoint]

    # The model table.
    spec = resolve_model(table, model_asked, serve_retired=serve_retired or azure, today=today)
    task = {"generations": "generate", "edits": "edit", "variations": "variation"}[endpoint]
    if task not in spec.tasks or (azure and spec.response_formats and endpoint != "generations"):
        raise we.openai_error(
            400, f"Invalid value: '{model_asked}'. The model {spec.name} does not support image {endpoint}.",
            param="model", code="invalid_value"
        )
    dalle = bool(spec.response_formats)
    if form == "json" and endpoint == "edits" and dalle:
        raise we.openai_error(400, "JSON edits support GPT image models only; send dall-e-2 edits as multipart.",
                              param="model", code="invalid_value")
    if len(prompt) > spec.max_prompt_chars:
        raise we.openai_error(
            400,
            f"Invalid 'prompt': string too long. Expected a string with maximum length {spec.max_prompt_chars}, "
            f"but got a string with length {len(prompt)} instead.",
            param="prompt",
            code="string_above_max_length",
        )
    n = 1 if n is None else n
    if n > spec.n_max:
        raise we.openai_error(
            400, f"Invalid 'n': {spec.name} only supports n<={spec.n_max}." if spec.n_max > 1
            else f"Invalid 'n': {spec.name} only supports n=1.", param="n", code="invalid_value"
        )
    if dalle:
        for name in ("output_format", "output_compression", "background", "moderation", "stream",
                     "partial_images", "input_fidelity"):
            if name in body:
                raise we.unknown_parameter(name)
    else:
        if "response_format" in body:
            raise we.unknown_parameter("response_format")
    if style is not None and not spec.styles:
        raise we.unknown_parameter("style")
    if moderation is not None and not spec.moderation:
        raise we.unknown_parameter("moderation")
    if quality is not None and quality not in spec.qualities:
        raise we.invalid_value("quality", quality, spec.qualities)
    if fidelity is not None and not spec.input_fidelity:
        raise we.openai_error(400, f"Invalid 'input_fidelity': not supported for {spec.name}.",
                              param="input_fidelity", code="invalid_value")
    fmt = output_format or "png"
    if azure and fmt == "webp":
        raise we.openai_error(400, "Invalid value: 'webp'. Supported values are: 'png' and 'jpeg'.",
                              param="output_format", code="invalid_value")
    if background == "transparent" and fmt not in ("png", "webp"):
        raise we.openai_error(
            400, f"Transparent background is not supported for the {fmt} output format; use png or webp.",
            param="background", code="invalid_value"
        )
    if compression is not None and compression < 100 and fmt == "png":
        raise we.openai_error(400, "Compression less than 100 is not supported for PNG output format.",
                              param="output_compression", code="invalid_value")
    if endpoint != "generations":
        _check_images(spec, images, mask, "images" if form == "json" else "image")
    width, height = _resolve_size(spec, size, endpoint, images)

    if dalle:
        resolved_quality: str | None = quality or "standard"
        response_format = response_format or "url"
        resolved_background: str | None = None
    else:
        resolved_quality = quality if quality not in (None, "auto") else "high"
        resolved_background = "transparent" if background == "transparent" else "opaque"
    return ImageJob(
        endpoint=endpoint,
        spec=spec,
        model_asked=model_asked,
        prompt=prompt,
        n=n,
        size_asked=size,
        width=width,
        height=height,
        quality=resolved_quality,
        style=(style or "vivid") if spec.styles else None,
        response_format=response_format,
        output_format=fmt,
        compression=compression,
        background=resolved_background,
        moderation=moderation,
        input_fidelity=fidelity,
        images=images,
        mask=mask,
        stream=stream,
        partial_images=partial_images,
    )
