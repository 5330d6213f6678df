"""Replicate model inputs (the reference's §4.6), turning a create body into a `ReplicateJob` or a 422/404.

A model is named by `owner/name` (the models route, or `version: "owner/name"` for official models), by
`owner/name:<64 hex>` or by a bare version id. The emulator cannot know every real version of a model, so any
64-hex version of a known model is taken as that model; a bare version id must be one of `VERSIONS` (the
emulator's own). Validation errors are Replicate's 422 problem details with `invalid_fields` (UNCONFIRMED beyond
`{type, title, status, detail}`, which REP-PY reads).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

from pixelmill.testing import wire_errors as we

HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class ReplicateModel:
    name: str  # owner/name
    ratios: tuple[str, ...]
    max_outputs: int  # 0: one image, `output` is a single URI; else `num_outputs` up to this, `output` an array
    steps: tuple[int, int] | None = None
    guidance: tuple[float, float] | None = None
    custom_size: bool = False  # aspect_ratio "custom" with width/height 256-1440
    edit_field: str | None = None  # the input image's field when the model edits (required)
    formats: tuple[str, ...] = ("webp", "jpg", "png")
    default_format: str = "webp"

    @property
    def version(self) -> str:
        """The emulator's version id of this model (stable: derived from its name)."""
        return hashlib.sha256(self.name.encode()).hexdigest()


_FLUX_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
MODELS: dict[str, ReplicateModel] = {m.name: m for m in (
    ReplicateModel("black-forest-labs/flux-schnell", _FLUX_RATIOS, 4, steps=(1, 4)),
    ReplicateModel("black-forest-labs/flux-dev", _FLUX_RATIOS, 4, steps=(1, 50), guidance=(0.0, 10.0)),
    ReplicateModel("black-forest-labs/flux-1.1-pro", (*_FLUX_RATIOS, "custom"), 0, custom_size=True),
    # Beyond the reference's table (UNCONFIRMED inputs): one edit model and one more generator, so the
    # `owner/name` passthrough and edits can be rehearsed.
    ReplicateModel("black-forest-labs/flux-kontext-pro", ("match_input_image", *_FLUX_RATIOS), 0,
                   edit_field="input_image", formats=("jpg", "png"), default_format="png"),
    ReplicateModel("qwen/qwen-image", _FLUX_RATIOS, 0),
)}
VERSIONS = {m.version: m for m in MODELS.values()}


@dataclass(frozen=True, slots=True)
class ReplicateJob:
    model: ReplicateModel
    version: str
    prompt: str
    n: int
    width: int
    height: int
    format: str  # webp | jpg | png
    input: dict[str, Any]


def resolve(owner_name: str | None, version: object) -> tuple[ReplicateModel, str]:
    """The model and version a create names (models route: `owner_name`; `/v1/predictions`: `version`)."""
    if owner_name is not None:
        model = MODELS.get(owner_name)
        if model is None:
            raise we.replicate_problem(404, "Not found", "The requested resource could not be found.")
        return model, model.version
    if not isinstance(version, str) or not version:
        raise we.replicate_problem(422, "Input validation failed", "- version: Field required\n")
    name, _, hexid = version.partition(":")
    if HEX64.match(name):
        found = VERSIONS.get(name)
        if found is not None:
            return found, name
    elif name in MODELS and (not hexid or HEX64.match(hexid)):
        model = MODELS[name]
        return model, hexid or model.version
    raise we.replicate_problem(422, "Invalid version or not permitted", "Invalid version or not permitted")


def build_job(model: ReplicateModel, version: str, body: Any) -> ReplicateJob:
    if not isinstance(body, dict):
        raise _invalid("", "Invalid type. Expected: object, given: " + type(body).__name__, "invalid_type")
    given = body.get("input")
    if not isinstance(given, dict):
        raise _invalid("input", "Invalid type. Expected: object", "invalid_type")
    prompt = given.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise _invalid("input.prompt", "prompt is required" if prompt is None else "Invalid type. Expected: string",
                       "required" if prompt is None else "invalid_type")
    n = 1
    if model.max_outputs:
        n = _int(given, "num_outputs", 1, 1, model.max_outputs)
    if model.steps is not None:
        _int(given, "num_inference_steps", model.steps[1], *model.steps)
    if model.guidance is not None and "guidance" in given:
        value = given["guidance"]
        if not isinstance(value, int | float) or not model.guidance[0] <= value <= model.guidance[1]:
            raise _invalid("input.guidance", f"Must be between {model.guidance[0]:g} and {model.guidance[1]:g}",
                           "number_range")
    fmt = given.get("output_format", model.default_format)
    _enum("output_format", fmt, model.formats)
    if "output_quality" in given:
        _int(given, "output_quality", 80, 0, 100)
    if model.edit_field is not None and not isinstance(given.get(model.edit_field), str):
        raise _invalid(f"input.{model.edit_field}", f"{model.edit_field} is required", "required")
    ratio = given.get("aspect_ratio", model.ratios[0] if model.edit_field is None else "1:1")
    _enum("aspect_ratio", ratio, model.ratios)
    if ratio == "custom":
        width = _int(given, "width", 1024, 256, 1440)
        height = _int(given, "height", 1024, 256, 1440)
        width, height = width - width % 32, height - height % 32  # rounded down to a multiple of 32
    elif ratio == "match_input_image":
        width, height = 1024, 1024
    else:
        a, b = (int(x) for x in str(ratio).split(":"))
        megapixels = 0.25 if given.get("megapixels") == "0.25" else 1.0
        w = math.sqrt(megapixels * 1024 * 1024 * a / b)
        width, height = round(w / 16) * 16, round(w * b / a / 16) * 16
    return ReplicateJob(model, version, prompt, n, width, height, str(fmt), given)


def _invalid(field: str, description: str, kind: str) -> we.WireError:
    err = we.replicate_problem(422, "Input validation failed", f"- {field}: {description}\n")
    err.body["invalid_fields"] = [{"type": kind, "field": field, "description": description}]
    return err


def _int(given: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = given.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid(f"input.{name}", "Invalid type. Expected: integer", "invalid_type")
    if value < low:
        raise _invalid(f"input.{name}", f"Must be greater than or equal to {low}", "number_gte")
    if value > high:
        raise _invalid(f"input.{name}", f"Must be less than or equal to {high}", "number_lte")
    return value


def _enum(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        listed = ", ".join(f'"{a}"' for a in allowed)
        raise _invalid(f"input.{name}", f"{name} must be one of the following: {listed}", "enum")
