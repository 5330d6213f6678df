"""The answer boundary that the cloud providers share: what a server sends is data of any shape, any size and
any content, and what leaves a provider is typed, bounded and free of secrets.

- Shapes: every field of an answer is read through a reader that checks its type (`obj`, `seq`, `text`,
  `code`, `number`, `field`). Metadata of an odd type reads as absent (the image is still good); a structural
  field of an odd type (`data`, `candidates`, `parts`, `b64_json`) is `malformed`: a `TransientError`
  that may have been billed, like an answer that is not JSON. Never a `TypeError` that ends the run.
- Size: `answer_limit` bounds a call's answer by what the model can send: n images at its largest size,
  uncompressed, as base64, plus the envelope.
- Secrets: `scrub_result` and `scrub_error` redact everything that came from the server (request ids,
  revised prompts, texts, finish reasons, metadata, the raw model turn, error messages and codes) with the
  provider's `secrets()`, before anything is journaled or shown.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pixelmill.errors import ProviderError, TransientError, redact, redact_json

if TYPE_CHECKING:
    from pixelmill.models.table import ModelSpec
    from pixelmill.providers.base import ImageResult

__all__ = ["answer_limit", "code", "field", "malformed", "number", "obj", "scrub_error", "scrub_result", "seq",
           "text"]

# A model whose largest size the table does not say (a permissive stand-in): 4096x4096.
_UNKNOWN_PIXELS = 4096 * 4096
# What an image file may hold beyond its pixels (PNG rows, chunks, metadata, a JPEG's worst case), per image.
_FILE_MARGIN = 1 << 20
# Fields of a model turn that go back byte for byte and are far too large to scan: image data, signatures.
_OPAQUE = frozenset({"data", "thoughtSignature", "thought_signature"})


# ------------------------------------------------------------------------------------------------- shapes


def obj(value: Any) -> dict[str, Any]:
    """A JSON object, or {} for anything else."""
    return value if isinstance(value, dict) else {}


def seq(value: Any) -> list[Any]:
    """A JSON array, or [] for anything else."""
    return value if isinstance(value, list) else []


def text(value: Any) -> str | None:
    """A non-empty string, or None for anything else."""
    return value if isinstance(value, str) and value else None


def code(value: Any) -> str | None:
    """An error code or enum: a non-empty string, or an integer as text; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    return text(value)


def number(value: Any) -> float | None:
    """A finite number (not a boolean), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def field(container: dict[str, Any], name: str, kind: type, *, label: str, request_id: str | None = None) -> Any:
    """A structural field: None when absent (or null), the value when of type `kind`, else `malformed`."""
    value = container.get(name)
    if value is None or isinstance(value, kind):
        return value
    raise malformed(label, f"`{name}` is a {_json_type(value)}, not a{_article(kind)} {_json_name(kind)}",
                    request_id)


def malformed(label: str, what: str, request_id: str | None = None) -> TransientError:
    """The error for an answer of the wrong shape: it arrived after the work was done, so it may be billed."""
    return TransientError(f"{label}: the answer does not have the expected shape ({what}); the row will be "
                          "retried", http_status=200, request_id=request_id, maybe_billed=True,
                          code="malformed_body")


_JSON_NAMES: dict[type, str] = {dict: "object", list: "array", str: "string"}


def _json_name(kind: type) -> str:
    return _JSON_NAMES.get(kind, kind.__name__)


def _article(kind: type) -> str:
    return "n" if _json_name(kind)[0] in "aeiou" else ""


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    for kind in (dict, list, str):
        if isinstance(value, kind):
            return _json_name(kind)
    return type(value).__name__


# --------------------------------------------------------------------------------------------------- size


def largest_pixels(spec: ModelSpec) -> int:
    """The pixels of the largest image `spec` can produce (from its sizes, free-size rule or ratio table)."""
    found = [spec.free_size.max_pixels] if spec.free_size is not None else []
    for size in spec.sizes:
        width, sep, height = size.partition("x")
        if sep and width.isdigit() and height.isdigit():
            found.append(int(width) * int(height))
    if spec.ratio_pixels:
        # ratio_pixels holds the 1K size of each ratio; 2K doubles each side, 4K quadruples.
        scale = 4 if "4K" in spec.image_sizes else 2 if "2K" in spec.image_sizes else 1
        found += [w * h * scale * scale for w, h in spec.ratio_pixels.values()]
    return max(found) if found and spec.known else max([*found, _UNKNOWN_PIXELS])


def answer_limit(spec: ModelSpec, images: int, *, per_image_cap: int, envelope: int) -> int:
    """The most bytes a genuine answer of `images` images can take: each at the model's largest size as
    uncompressed RGBA (no PNG or JPEG is larger), at most `per_image_cap`, as base64, plus `envelope`."""
    per_image = min(largest_pixels(spec) * 4 + _FILE_MARGIN, per_image_cap)
    return max(1, images) * per_image * 4 // 3 + envelope


# ------------------------------------------------------------------------------------------------ secrets


def scrub_result(result: ImageResult, secrets: tuple[str, ...]) -> ImageResult:
    """The result with every server-given string redacted (image bytes untouched)."""

    def clean(value: str | None) -> str | None:
        return redact(value, secrets) if value else value

    result.images = [replace(image, revised_prompt=clean(image.revised_prompt)) for image in result.images]
    result.text = clean(result.text)
    result.finish_reason = clean(result.finish_reason)
    result.request_id = clean(result.request_id)
    result.usage = redact_json(result.usage, secrets) if result.usage is not None else None
    result.extra = redact_json(result.extra, secrets)
    if result.model_content is not None:
        result.model_content = redact_json(result.model_content, secrets, keep=_OPAQUE)
    return result


def scrub_error(exc: ProviderError, secrets: tuple[str, ...]) -> ProviderError:
    """The error with its message, request id, code and reason redacted (in place: it is re-raised)."""
    exc.args = (redact(str(exc), secrets), *exc.args[1:])
    if exc.request_id:
        exc.request_id = redact(exc.request_id, secrets)
    if exc.code:
        exc.code = redact(exc.code, secrets)
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        exc.reason = redact(reason, secrets)  # type: ignore[attr-defined]
    return exc
