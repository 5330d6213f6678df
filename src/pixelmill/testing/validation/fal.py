"""fal queue models' input rules (the reference's §3.8), turning a submit body into a `FalJob` or a 422.

fal validates with pydantic (FastAPI): a bad field answers 422 `{"detail": [{loc, msg, type, ctx?, input?}]}`
with pydantic v2's messages; fields a model does not know are ignored, as pydantic does by default. An
unknown model id answers 404 (UNCONFIRMED wording). The sizes of presets are fal's documented ones; limits the
reference does not give (custom width/height) are marked UNCONFIRMED where they are chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pybase64

from pixelmill.testing import wire_errors as we
from pixelmill.testing.images import inspect

IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
ASPECT_RATIOS = ("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")
SAFETY_TOLERANCES = ("1", "2", "3", "4", "5", "6")
NAMESPACES = ("workflows", "comfy")  # ids in these namespaces have one more leading segment (fal-client AppId)
CUSTOM_SIDE = (64, 4096)  # UNCONFIRMED: fal's limits for a custom {width, height}


@dataclass(frozen=True, slots=True)
class FalModel:
    id: str
    sizing: str  # image_size | aspect_ratio (ultra: ~4 MP) | edit (Kontext: optional aspect_ratio, ~1 MP)
    default_size: str
    max_images: int
    format_field: str = "output_format"
    steps: tuple[int, int, int] | None = None  # (min, max, default); None: no steps field
    steps_enum: tuple[str, ...] = ()  # fast-lightning-sdxl: steps as strings
    guidance: tuple[float, float, float] | None = None  # guidance_scale (min, max, default)
    safety_tolerance: bool = False  # flux-pro models: "1".."6"
    safety_checker: bool = False  # enable_safety_checker
    image_url: bool = False  # the input image (required for edits)

    @property
    def base(self) -> str:
        return app_base(self.id)


_DEV = dict(sizing="image_size", default_size="landscape_4_3", max_images=4, guidance=(1.0, 20.0, 3.5),
            safety_checker=True)
MODELS: dict[str, FalModel] = {m.id: m for m in (
    FalModel("fal-ai/flux/dev", steps=(1, 50, 28), **_DEV),  # type: ignore[arg-type]
    FalModel("fal-ai/flux-1/dev", steps=(1, 50, 28), **_DEV),  # type: ignore[arg-type]
    FalModel("fal-ai/flux/schnell", steps=(1, 12, 4), **_DEV),  # type: ignore[arg-type]
    FalModel("fal-ai/flux-1/schnell", steps=(1, 12, 4), **_DEV),  # type: ignore[arg-type]
    FalModel("fal-ai/flux-pro/v1.1", sizing="image_size", default_size="landscape_4_3", max_images=4,
             safety_tolerance=True),
    FalModel("fal-ai/flux-pro/v1.1-ultra", sizing="aspect_ratio", default_size="16:9", max_images=4,
             safety_tolerance=True, image_url=True),
    FalModel("fal-ai/fast-lightning-sdxl", sizing="image_size", default_size="square_hd", max_images=8,
             format_field="format", steps_enum=("1", "2", "4", "8"), safety_checker=True),
    FalModel("fal-ai/flux-pro/kontext", sizing="edit", default_size="", max_images=4, guidance=(1.0, 20.0, 3.5),
             safety_tolerance=True, image_url=True),
    FalModel("fal-ai/flux-pro/kontext/max", sizing="edit", default_size="", max_images=4,
             guidance=(1.0, 20.0, 3.5), safety_tolerance=True, image_url=True),
    # Not in the reference's table: rules as FLUX dev (UNCONFIRMED), so runs naming it can be rehearsed.
    FalModel("fal-ai/qwen-image", steps=(2, 250, 30), **_DEV),  # type: ignore[arg-type]
)}


def app_base(model_id: str) -> str:
    """`owner/app` of a model id: status, result and cancel live there, not under the full id."""
    parts = model_id.strip("/").split("/")
    keep = 3 if parts[0] in NAMESPACES else 2
    return "/".join(parts[:keep])


@dataclass(frozen=True, slots=True)
class FalJob:
    model: FalModel
    prompt: str
    n: int
    width: int
    height: int
    format: str  # jpeg | png
    seed: int | None
    sync_mode: bool
    input_image: bool
    size_asked: str


def build_job(model_id: str, body: Any) -> FalJob:
    model = MODELS.get(model_id)
    if model is None:
        raise we.fal_request_error(404, f"Application '{model_id}' not found", "not_found")
    if not isinstance(body, dict):
        raise we.fal_validation([], "Input should be a valid dictionary", "dict_type", input=body)
    prompt = body.get("prompt")
    if prompt is None:
        raise we.fal_validation(["prompt"], "Field required", "missing")
    if not isinstance(prompt, str):
        raise we.fal_validation(["prompt"], "Input should be a valid string", "string_type", input=prompt)
    n = _int(body, "num_images", 1, 1, model.max_images)
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise we.fal_validation(["seed"], "Input should be a valid integer", "int_type", input=seed)
    fmt = body.get(model.format_field, "jpeg")
    _enum(model.format_field, fmt, ("jpeg", "png"))
    if model.steps is not None:
        _int(body, "num_inference_steps", model.steps[2], model.steps[0], model.steps[1])
    if model.steps_enum:
        _enum("num_inference_steps", body.get("num_inference_steps", "4"), model.steps_enum)
    if model.guidance is not None and "guidance_scale" in body:
        _number(body, "guidance_scale", model.guidance[0], model.guidance[1])
    if model.safety_tolerance and "safety_tolerance" in body:
        _enum("safety_tolerance", body["safety_tolerance"], SAFETY_TOLERANCES)
    for flag in ("sync_mode", "enable_safety_checker", "enhance_prompt", "raw"):
        if flag in body and not isinstance(body[flag], bool):
            raise we.fal_validation([flag], "Input should be a valid boolean", "bool_type", input=body[flag])
    input_image = None
    if model.image_url:
        input_image = _image_url(body, required=model.sizing == "edit")
    width, height, asked = _size(model, body, input_image)
    return FalJob(model, prompt, n, width, height, str(fmt), seed, bool(body.get("sync_mode", False)),
                  input_image is not None, asked)


def _size(model: FalModel, body: dict[str, Any], input_image: tuple[int, int] | None) -> tuple[int, int, str]:
    if model.sizing == "image_size":
        size = body.get("image_size", model.default_size)
        if isinstance(size, str):
            _enum("image_size", size, tuple(IMAGE_SIZES))
            return (*IMAGE_SIZES[size], size)
        if isinstance(size, dict):
            w = _int(size, "width", None, *CUSTOM_SIDE, loc=["image_size", "width"])
            h = _int(size, "height", None, *CUSTOM_SIDE, loc=["image_size", "height"])
            return w, h, f"{w}x{h}"
        raise we.fal_validation(["image_size"], "Input should be a valid dictionary or a valid enumeration member",
                                "union_type", input=size)
    ratio = body.get("aspect_ratio")
    if ratio is None and model.sizing == "edit":
        if input_image is not None:  # Kontext keeps the input's shape at about one megapixel
            return (*_by_area(input_image[0] / input_image[1], 1024 * 1024, 16), "input")
        ratio = "1:1"
    ratio = ratio or model.default_size
    _enum("aspect_ratio", ratio, ASPECT_RATIOS)
    a, b = (int(x) for x in str(ratio).split(":"))
    area = 4 * 1024 * 1024 if model.sizing == "aspect_ratio" else 1024 * 1024
    return (*_by_area(a / b, area, 32 if model.sizing == "aspect_ratio" else 16), str(ratio))


def _by_area(ratio: float, area: int, multiple: int) -> tuple[int, int]:
    w = math.sqrt(area * ratio)
    h = w / ratio
    return max(multiple, round(w / multiple) * multiple), max(multiple, round(h / multiple) * multiple)


def _image_url(body: dict[str, Any], *, required: bool) -> tuple[int, int] | None:
    """The input image's size: a data URI is decoded and inspected; an http(s) URL is taken as given."""
    url = body.get("image_url")
    if url is None:
        if required:
            raise we.fal_validation(["image_url"], "Field required", "missing")
        return None
    if not isinstance(url, str):
        raise we.fal_validation(["image_url"], "Input should be a valid string", "string_type", input=url)
    if url.startswith(("http://", "https://")):
        return (1024, 1024)  # not fetched: the emulator answers offline (UNCONFIRMED what fal does on a 404)
    if url.startswith("data:") and ";base64," in url:
        try:
            info = inspect(pybase64.b64decode(url.split(",", 1)[1], validate=True))
        except ValueError:
            info = None
        if info is not None:
            return info.width, info.height
    raise we.fal_validation(["image_url"], "Failed to load the image. Please ensure the image file is not corrupted "
                            "and is in a supported format.", "image_load_error")


def _int(body: dict[str, Any], name: str, default: int | None, low: int, high: int,
         loc: list[str | int] | None = None) -> int:
    where: list[str | int] = loc or [name]
    value = body.get(name, default)
    if value is None:
        raise we.fal_validation(where, "Field required", "missing")
    if not isinstance(value, int) or isinstance(value, bool):
        raise we.fal_validation(where, "Input should be a valid integer", "int_type", input=value)
    if value < low:
        raise we.fal_validation(where, f"Input should be greater than or equal to {low}", "greater_than_equal",
                                input=value, ctx={"ge": low})
    if value > high:
        raise we.fal_validation(where, f"Input should be less than or equal to {high}", "less_than_equal",
                                input=value, ctx={"le": high})
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float:
    value = body[name]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise we.fal_validation([name], "Input should be a valid number", "float_type", input=value)
    if not low <= value <= high:
        bound, word, kind = (low, "greater", "greater_than_equal") if value < low else \
            (high, "less", "less_than_equal")
        raise we.fal_validation([name], f"Input should be {word} than or equal to {bound}", kind, input=value,
                                ctx={"ge" if value < low else "le": bound})
    return float(value)


def _enum(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed or not isinstance(value, str):
        listed = ", ".join(f"'{a}'" for a in allowed[:-1]) + f" or '{allowed[-1]}'"
        raise we.fal_validation([name], f"Input should be {listed}", "literal_error", input=value,
                                ctx={"expected": listed})
