"""The emulator's OpenAI request rules agree with the official spec on schema-level questions.

Each body is judged twice: by jsonschema's Draft 2020-12 validator over the spec's schema, and by the
emulator over HTTP. The model is one that takes every schema value (gpt-image-2 for shapes the model table
does not restrict), so any disagreement is a schema disagreement. Skipped when the spec file is absent.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pixelmill.testing import Emulator

SPEC = Path(__file__).resolve().parents[2] / "shared" / "reference" / "openai-images.openapi.yaml"
KEY = "sk-test-schema-0001"


def _data_url() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "green").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def components() -> dict[str, Any]:
    if not SPEC.exists():
        pytest.skip(f"the official spec is not at {SPEC}")
    import yaml

    return dict(yaml.safe_load(SPEC.read_text(encoding="utf-8"))["components"])


def _spec_accepts(components: dict[str, Any], schema: str, body: dict[str, Any]) -> bool:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator({"$ref": f"#/components/schemas/{schema}", "components": components})
    return validator.is_valid(body)


def _emulator_accepts(emu: Emulator, endpoint: str, body: dict[str, Any]) -> bool:
    request = urllib.request.Request(f"{emu.openai_base_url}/images/{endpoint}", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
                                     method="POST")
    try:
        with urllib.request.urlopen(request) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as err:
        answer = json.loads(err.read())
        assert err.code == 400 and set(answer["error"]) >= {"message", "type", "param", "code"}
        return False


GENERATIONS = [
    {"prompt": "x", "model": "gpt-image-2"},
    {"prompt": "x", "model": "gpt-image-2", "n": 3, "quality": "high", "output_format": "webp",
     "background": "transparent", "moderation": "low", "output_compression": 80, "user": "u-1"},
    {"prompt": "x", "model": "gpt-image-2", "partial_images": 2},
    {"model": "gpt-image-2"},  # no prompt
    {"prompt": "x", "model": "gpt-image-2", "quality": "ultra"},
    {"prompt": "x", "model": "gpt-image-2", "n": 11},
    {"prompt": "x", "model": "gpt-image-2", "n": 0},
    {"prompt": "x", "model": "gpt-image-2", "n": "2"},
    {"prompt": "x", "model": "gpt-image-2", "partial_images": 4},
    {"prompt": "x", "model": "gpt-image-2", "background": "none"},
    {"prompt": "x", "model": "gpt-image-2", "moderation": "high"},
    {"prompt": "x", "model": "gpt-image-2", "output_format": "gif"},
    {"prompt": 5, "model": "gpt-image-2"},
]

EDITS = [
    {"prompt": "x", "model": "gpt-image-2", "images": [{"image_url": "DATA"}]},
    {"prompt": "x", "model": "gpt-image-2", "images": [{"image_url": "DATA"}, {"file_id": "file-abc"}],
     "mask": {"image_url": "DATA"}, "size": "1024x1024", "quality": "low"},
    {"prompt": "x", "model": "gpt-image-2", "images": [{"image_url": "DATA", "file_id": "file-abc"}]},
    {"prompt": "x", "model": "gpt-image-2", "images": [{}]},
    {"prompt": "x", "model": "gpt-image-2", "images": [{"image_url": "DATA", "detail": "high"}]},
    {"prompt": "x", "model": "gpt-image-2", "images": []},
    {"prompt": "x", "model": "gpt-image-2", "images": [{"file_id": "file-abc"}] * 17},
    {"prompt": "x", "model": "gpt-image-2", "images": [{"image_url": "DATA"}], "size": "1280x720"},
    {"prompt": "x", "model": "gpt-image-2", "images": [{"image_url": "DATA"}], "quality": "standard"},
    {"prompt": "", "model": "gpt-image-2", "images": [{"image_url": "DATA"}]},
    {"model": "gpt-image-2", "images": [{"image_url": "DATA"}]},
    {"prompt": "x", "model": "gpt-image-2"},
]


def _fill(value: Any, url: str) -> Any:
    if value == "DATA":
        return url
    if isinstance(value, dict):
        return {k: _fill(v, url) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, url) for v in value]
    return value


@pytest.mark.parametrize("body", GENERATIONS)
def test_generation_bodies_agree_with_the_spec(components: dict[str, Any], emulator_thread: Emulator,
                                               body: dict[str, Any]) -> None:
    assert _emulator_accepts(emulator_thread, "generations", body) == _spec_accepts(
        components, "CreateImageRequest", body
    )


@pytest.mark.parametrize("body", EDITS)
def test_json_edit_bodies_agree_with_the_spec(components: dict[str, Any], emulator_thread: Emulator,
                                              body: dict[str, Any]) -> None:
    body = _fill(body, _data_url())
    assert _emulator_accepts(emulator_thread, "edits", body) == _spec_accepts(
        components, "EditImageBodyJsonParam", body
    )
