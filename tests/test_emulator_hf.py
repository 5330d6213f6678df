"""The emulator's Hugging Face routes: the router's `hf-inference` text-to-image and a dedicated endpoint, driven
by raw HTTP as huggingface_hub's `InferenceClient.text_to_image` sends it (the library is not a dependency)."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from typing import Any

from PIL import Image

from pixelmill.testing import Emulator

TOKEN = "hf_test_token_0001"


def _post(url: str, body: dict[str, Any], *, token: str | None = TOKEN, accept: str = "image/png") \
        -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", "Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_router_returns_image_bytes(emulator_thread: Emulator) -> None:
    status, headers, data = _post(f"{emulator_thread.url}/hf-inference/models/black-forest-labs/FLUX.1-dev",
                                  {"inputs": "a red bicycle", "parameters": {"width": 768, "height": 512,
                                                                             "num_inference_steps": 20, "seed": 3}})
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(data)).size == (768, 512)
    record = emulator_thread.records(family="hf")[0]
    assert record.model == "black-forest-labs/FLUX.1-dev" and record.auth == "valid"
    status, headers, data = _post(f"{emulator_thread.url}/hf-endpoint/my-flux", {"inputs": "x"}, accept="image/jpeg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(data)).size == (1024, 1024)


def test_cold_start_then_warm(emulator_thread: Emulator) -> None:
    emulator_thread.configure(hf_cold_start=30)
    url = f"{emulator_thread.url}/hf-inference/models/stabilityai/sdxl-turbo"
    status, _, body = _post(url, {"inputs": "x"})
    answer = json.loads(body)
    assert status == 503 and answer["error"] == "Model stabilityai/sdxl-turbo is currently loading"
    assert 29 <= answer["estimated_time"] <= 30
    emulator_thread.configure(hf_cold_start=0)
    assert _post(url, {"inputs": "x"})[0] == 200
    status, _, body = _post(f"{emulator_thread.url}/hf-endpoint/e1", {"inputs": "y [[fault:unavailable]]"})
    assert status == 503 and json.loads(body)["estimated_time"] == 1.0


def test_errors(emulator_thread: Emulator) -> None:
    base = f"{emulator_thread.url}/hf-inference/models/black-forest-labs/FLUX.1-dev"
    status, _, body = _post(base, {"inputs": "x"}, token=None)
    assert status == 401 and json.loads(body) == {"error": "Invalid credentials in Authorization header"}
    assert _post(base, {"inputs": ""})[0] == 400
    assert _post(base, {"inputs": "x", "parameters": {"width": 1001}})[0] == 400
    assert _post(f"{emulator_thread.url}/hf-inference/models/noslash", {"inputs": "x"})[0] == 404
    assert _post(base, {"inputs": "x [[fault:server_error]]"})[0] == 500


def test_submits_counter_over_http(emulator_thread: Emulator) -> None:
    """Drills that run `pixelmill emulate` in its own process read the submits per prompt over HTTP."""
    for prompt in ("a", "a", "b"):
        request = urllib.request.Request(f"{emulator_thread.url}/v1/flux-pro-1.1",
                                         data=json.dumps({"prompt": prompt}).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "x-key": "k"})
        urllib.request.urlopen(request).close()
    with urllib.request.urlopen(f"{emulator_thread.url}/_emulator/submits?family=bfl") as resp:
        assert json.loads(resp.read()) == {"a": 2, "b": 1}
    with urllib.request.urlopen(f"{emulator_thread.url}/_emulator/submits?by=model") as resp:
        assert json.loads(resp.read()) == {"flux-pro-1.1": 3}
    assert emulator_thread.hf_endpoint_url("e") == f"{emulator_thread.url}/hf-endpoint/e"
