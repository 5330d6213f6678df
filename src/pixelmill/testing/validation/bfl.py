"""Black Forest Labs models' inputs and prices (the reference's §5.2, §5.6), turning a submit into a `BflJob`.

Errors are FastAPI's (BFL's API is FastAPI-generated): 404 `{"detail": "Not Found"}` for an unknown model path,
422 `{"detail": [{loc, msg, type}]}` for a bad field (UNCONFIRMED shape, inferred). Defaults the reference does
not give (FLUX.2's size) are marked UNCONFIRMED. `cost` is in credits (1 credit = $0.01): per image for FLUX.1
models, per megapixel for FLUX.2 (first MP + further output MP + input MP).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import pybase64

from pixelmill.testing import wire_errors as we
from pixelmill.testing.images import inspect

MEBI = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BflModel:
    name: str
    sizing: str  # dims (width/height) | ratio (aspect_ratio)
    side: tuple[int, int, int] = (256, 1440, 32)  # dims: min, max, multiple
    default_size: tuple[int, int] = (1024, 768)
    area: int = 1024 * 1024  # ratio: output area
    formats: tuple[str, ...] = ("jpeg", "png")
    safety: int = 6  # safety_tolerance upper bound
    inputs: int = 0  # input images accepted (input_image, input_image_2, ...)
    price: float = 4.0  # credits per image; FLUX.2: first MP
    mp_price: float | None = None  # FLUX.2: credits per further output MP and per input MP
    steps: tuple[int, int] | None = None
    guidance: tuple[float, float] | None = None
    active_limit: int | None = None  # its own limit on active tasks (Kontext Max: 6)


def _flux2(name: str, first: float, per_mp: float, inputs: int, **extra: Any) -> BflModel:
    return BflModel(name, "dims", side=(64, 4096, 16), default_size=(1024, 1024), safety=5, inputs=inputs,
                    price=first, mp_price=per_mp, **extra)


MODELS: dict[str, BflModel] = {m.name: m for m in (
    _flux2("flux-2-klein-4b", 1.4, 0.1, 4),
    _flux2("flux-2-klein-9b", 1.5, 0.2, 4),
    _flux2("flux-2-pro", 3.0, 1.5, 8),
    _flux2("flux-2-max", 7.0, 3.0, 8),
    _flux2("flux-2-flex", 5.0, 5.0, 8, steps=(1, 50), guidance=(1.5, 10.0)),
    BflModel("flux-pro-1.1", "dims", price=4.0),
    BflModel("flux-dev", "dims", price=2.5, steps=(1, 50), guidance=(1.5, 5.0)),  # UNCONFIRMED price and ranges
    BflModel("flux-pro-1.1-ultra", "ratio", area=4 * 1024 * 1024, formats=("jpeg", "png", "webp"), price=6.0),
    BflModel("flux-kontext-pro", "ratio", safety=2, inputs=1, price=4.0),
    BflModel("flux-kontext-max", "ratio", safety=2, inputs=1, price=8.0, active_limit=6),
)}


@dataclass(frozen=True, slots=True)
class BflJob:
    model: BflModel
    prompt: str
    width: int
    height: int
    format: str
    seed: int | None
    input_images: int
    input_mp: float
    cost: float  # credits

    @property
    def output_mp(self) -> float:
        return self.width * self.height / 1_000_000


def build_job(model_name: str, body: Any) -> BflJob:
    model = MODELS.get(model_name)
    if model is None:
        raise we.bfl_error(404, "Not Found", "not_found")
    if not isinstance(body, dict):
        raise we.bfl_validation([], "Input should be a valid dictionary", "dict_type")
    prompt = body.get("prompt")
    if prompt is None and model.inputs == 0:
        raise we.bfl_validation(["prompt"], "Field required", "missing")
    if prompt is not None and not isinstance(prompt, str):
        raise we.bfl_validation(["prompt"], "Input should be a valid string", "string_type")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise we.bfl_validation(["seed"], "Input should be a valid integer", "int_type")
    fmt = body.get("output_format", "jpeg")
    if fmt not in model.formats:
        listed = " or ".join(f"'{f}'" for f in model.formats)
        raise we.bfl_validation(["output_format"], f"Input should be {listed}", "enum")
    if "safety_tolerance" in body:
        _int(body, "safety_tolerance", 0, model.safety)
    if model.steps is not None and "steps" in body:
        _int(body, "steps", *model.steps)
    if model.guidance is not None and "guidance" in body:
        value = body["guidance"]
        if not isinstance(value, int | float) or not model.guidance[0] <= value <= model.guidance[1]:
            raise we.bfl_validation(["guidance"], f"Input should be between {model.guidance[0]} and "
                                    f"{model.guidance[1]}", "range")
    sizes = _input_images(model, body)
    if model.sizing == "dims":
        width, height = _dims(model, body)
    else:
        width, height = _ratio(model, body, sizes[0] if sizes else None)
    input_mp = sum(w * h for w, h in sizes) / 1_000_000
    job = BflJob(model, prompt or "", width, height, str(fmt), seed, len(sizes), input_mp, 0.0)
    return dataclasses.replace(job, cost=cost(job))


def cost(job: BflJob) -> float:
    model = job.model
    if model.mp_price is None:
        return model.price
    # Priced per 2^20 pixels, in proportion (UNCONFIRMED): the reference's example charges 3.0 credits for a
    # 1024x1024 FLUX.2 [pro] image while reporting `output_mp` 1.05 (pixels / 10^6).
    output = job.width * job.height / MEBI
    inputs = job.input_mp * 1_000_000 / MEBI
    return round(model.price + max(0.0, output - 1) * model.mp_price + inputs * model.mp_price, 2)


def _dims(model: BflModel, body: dict[str, Any]) -> tuple[int, int]:
    low, high, multiple = model.side
    width = _int(body, "width", low, high, model.default_size[0])
    height = _int(body, "height", low, high, model.default_size[1])
    for name, value in (("width", width), ("height", height)):
        if value % multiple:
            raise we.bfl_validation([name], f"Input should be a multiple of {multiple}", "multiple_of")
    if model.mp_price is not None and width * height > 4 * 1024 * 1024:
        raise we.bfl_validation(["width"], "width x height must be at most 4 megapixels", "value_error")
    return width, height


def _ratio(model: BflModel, body: dict[str, Any], first_input: tuple[int, int] | None) -> tuple[int, int]:
    ratio = body.get("aspect_ratio")
    if ratio is None:
        if first_input is not None:
            value = first_input[0] / first_input[1]
        else:
            value = 16 / 9 if model.area > 1024 * 1024 else 1.0
    else:
        try:
            a, b = (int(x) for x in str(ratio).split(":"))
            value = a / b
        except ValueError:
            raise we.bfl_validation(["aspect_ratio"], "Aspect ratio must be of the form 'W:H'", "value_error") \
                from None
        if not 9 / 21 - 1e-9 <= value <= 21 / 9 + 1e-9:
            raise we.bfl_validation(["aspect_ratio"], "Aspect ratio must be between 21:9 and 9:21", "value_error")
    w = math.sqrt(model.area * value)
    return max(32, round(w / 32) * 32), max(32, round(w / value / 32) * 32)


def _input_images(model: BflModel, body: dict[str, Any]) -> list[tuple[int, int]]:
    names = ["input_image"] + [f"input_image_{i}" for i in range(2, 9)]
    sizes = []
    for index, name in enumerate(names):
        value = body.get(name)
        if value is None:
            continue
        if index >= model.inputs:
            raise we.bfl_validation([name], f"{model.name} accepts at most {model.inputs} input images"
                                    if model.inputs else f"{model.name} takes no input image", "value_error")
        if not isinstance(value, str):
            raise we.bfl_validation([name], "Input should be a valid string", "string_type")
        sizes.append(_image_size(name, value))
    return sizes


def _image_size(name: str, value: str) -> tuple[int, int]:
    """A URL is taken as given (1 MP, not fetched); base64 (or a data URI) must decode to an image."""
    if value.startswith(("http://", "https://")):
        return (1024, 1024)
    text = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        info = inspect(pybase64.b64decode(text, validate=True))
    except ValueError:
        info = None
    if info is None:
        raise we.bfl_validation([name], "Could not decode the input image", "value_error")
    return info.width, info.height


def _int(body: dict[str, Any], name: str, low: int, high: int, default: int | None = None) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise we.bfl_validation([name], "Input should be a valid integer", "int_type")
    if value < low:
        raise we.bfl_validation([name], f"Input should be greater than or equal to {low}", "greater_than_equal")
    if value > high:
        raise we.bfl_validation([name], f"Input should be less than or equal to {high}", "less_than_equal")
    return value
