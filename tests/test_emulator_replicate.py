"""The emulator's Replicate routes, driven by the official `replicate` SDK (`base_url` at the emulator) and raw HTTP.

The SDK's `Prediction.status` is a Literal without `aborted` (replicate 1.x), so the `Cancel-After` deadline that
ends a prediction before it starts is checked over raw HTTP.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import replicate
from replicate.exceptions import ReplicateError

from pixelmill.testing import Emulator

TOKEN = "r8_test_token_0001"
SCHNELL = "black-forest-labs/flux-schnell"


@pytest.fixture
def client(emulator_thread: Emulator) -> replicate.Client:
    return replicate.Client(api_token=TOKEN, base_url=emulator_thread.url)


def _http(method: str, url: str, body: dict[str, Any] | None = None, *, token: str | None = TOKEN,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=all_headers, method=method)
    try:
        with urllib.request.urlopen(request) as resp:
            raw = resp.read()
            status, got = resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        raw, status, got = err.read(), err.code, dict(err.headers)
    try:
        return status, got, json.loads(raw)
    except ValueError:
        return status, got, raw


def test_sdk_models_create_wait_and_output_array(client: replicate.Client, emulator_thread: Emulator) -> None:
    prediction = client.models.predictions.create(SCHNELL, input={"prompt": "a red bicycle", "num_outputs": 2,
                                                                   "output_format": "png"})
    assert prediction.status in ("starting", "processing") and prediction.output is None
    assert prediction.urls["get"] == f"{emulator_thread.url}/v1/predictions/{prediction.id}"
    prediction.wait()
    assert prediction.status == "succeeded" and prediction.completed_at and prediction.metrics
    assert isinstance(prediction.output, list) and len(prediction.output) == 2
    status, headers, data = _http("GET", prediction.output[0], token=None)
    assert status == 200 and headers["Content-Type"] == "image/png" and data[:4] == b"\x89PNG"
    assert emulator_thread.records(family="replicate", endpoint="media")[0].key_sent is False
    assert emulator_thread.submits("replicate") == {"a red bicycle": 1}


def test_sdk_version_create_get_and_single_uri(client: replicate.Client) -> None:
    prediction = client.predictions.create(version="black-forest-labs/flux-1.1-pro",
                                           input={"prompt": "one image", "aspect_ratio": "custom", "width": 700,
                                                  "height": 500})
    got = client.predictions.get(prediction.id)
    assert got.id == prediction.id and got.model == "black-forest-labs/flux-1.1-pro"
    got.wait()
    assert isinstance(got.output, str) and got.output.endswith(".webp")
    assert got.input == {"prompt": "one image", "aspect_ratio": "custom", "width": 700, "height": 500}


def test_sdk_prefer_wait(client: replicate.Client, emulator_thread: Emulator) -> None:
    emulator_thread.configure(job_latency=0.1)
    done = client.models.predictions.create(SCHNELL, input={"prompt": "quick"}, wait=5)
    assert done.status == "succeeded" and len(done.output) == 1
    emulator_thread.configure(job_latency=30)
    started = time.monotonic()
    pending = client.models.predictions.create(SCHNELL, input={"prompt": "slow"}, wait=1)
    assert pending.status in ("starting", "processing") and pending.output is None
    assert time.monotonic() - started >= 0.9


def test_sdk_cancel_and_list_pages(client: replicate.Client, emulator_thread: Emulator) -> None:
    emulator_thread.configure(job_latency=30)
    prediction = client.predictions.create(version=SCHNELL, input={"prompt": "to cancel"})
    prediction.cancel()
    assert prediction.status == "canceled"
    assert client.predictions.get(prediction.id).status == "canceled"
    emulator_thread.configure(job_latency=0)
    for i in range(100):
        _http("POST", f"{emulator_thread.url}/v1/models/{SCHNELL}/predictions", {"input": {"prompt": f"p{i}"}})
    first = client.predictions.list()
    assert len(first.results) == 100 and first.next and first.previous is None
    assert first.results[0].input["prompt"] == "p99"  # newest first
    second = client.predictions.list(first.next)
    assert [p.id for p in second.results] == [prediction.id] and second.next is None


def test_sdk_errors_are_problem_details(client: replicate.Client, emulator_thread: Emulator) -> None:
    with pytest.raises(ReplicateError) as err:
        client.models.predictions.create(SCHNELL, input={"prompt": "x", "num_outputs": 5})
    assert err.value.status == 422 and err.value.title == "Input validation failed"
    assert "num_outputs" in (err.value.detail or "")
    with pytest.raises(ReplicateError) as err:
        client.predictions.get("nosuchprediction")
    assert err.value.status == 404
    with pytest.raises(ReplicateError) as err:
        replicate.Client(api_token="", base_url=emulator_thread.url).predictions.get("x")
    assert err.value.status == 401 and err.value.title == "Unauthenticated"
    with pytest.raises(ReplicateError) as err:
        client.models.predictions.create("someone/unknown-model", input={"prompt": "x"})
    assert err.value.status == 404


def test_refusal_and_failure_end_the_prediction_failed(client: replicate.Client) -> None:
    refused = client.models.predictions.create(SCHNELL, input={"prompt": "x [[fault:moderation]]"})
    refused.wait()
    assert refused.status == "failed" and "NSFW" in (refused.error or "") and refused.output is None
    failed = client.models.predictions.create(SCHNELL, input={"prompt": "y [[fault:job_failed]]"})
    failed.wait()
    assert failed.status == "failed" and failed.error


def test_cancel_after_aborts_or_cancels(emulator_thread: Emulator) -> None:
    url = f"{emulator_thread.url}/v1/models/{SCHNELL}/predictions"
    emulator_thread.configure(job_queue_time=5, job_latency=5)
    status, _, queued = _http("POST", url, {"input": {"prompt": "never starts"}}, headers={"Cancel-After": "200ms"})
    assert status == 201 and queued["status"] == "starting" and queued["deadline"]
    emulator_thread.configure(job_queue_time=0)
    _, _, running = _http("POST", url, {"input": {"prompt": "runs"}}, headers={"Cancel-After": "0.3s"})
    time.sleep(0.5)
    assert _http("GET", queued["urls"]["get"])[2]["status"] == "aborted"
    assert _http("GET", running["urls"]["get"])[2]["status"] == "canceled"
    status, _, body = _http("POST", url, {"input": {"prompt": "x"}}, headers={"Cancel-After": "soon"})
    assert status == 400 and body["title"] == "Invalid Cancel-After header"


def test_data_removed_after_retention(emulator_thread: Emulator) -> None:
    emulator_thread.configure(job_latency=0, retention_scale=0.0002)  # 1 h -> 0.72 s
    _, _, prediction = _http("POST", f"{emulator_thread.url}/v1/models/{SCHNELL}/predictions",
                             {"input": {"prompt": "fleeting"}}, headers={"Prefer": "wait=5"})
    assert prediction["status"] == "succeeded" and prediction["data_removed"] is False
    output = prediction["output"][0]
    assert _http("GET", output, token=None)[0] == 200
    time.sleep(0.8)
    _, _, later = _http("GET", prediction["urls"]["get"])
    assert later["status"] == "succeeded" and later["data_removed"] is True and later["output"] is None
    assert _http("GET", output, token=None)[0] == 404


def test_rate_limit_text_and_faults(emulator_thread: Emulator) -> None:
    url = f"{emulator_thread.url}/v1/models/{SCHNELL}/predictions"
    status, headers, body = _http("POST", url, {"input": {"prompt": "x [[fault:rate_limit]]"}})
    assert status == 429 and body["detail"].startswith("Request was throttled. Your rate limit resets in ~")
    assert headers["Retry-After"] == "1"
    status, _, body = _http("POST", url, {"input": {"prompt": "x [[fault:quota]]"}})
    assert status == 402 and body["title"] == "Insufficient credit"
    status, _, body = _http("POST", url, {"input": {"prompt": "x [[fault:server_error]]"}})
    assert status == 500 and body["status"] == 500
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        _http("POST", url, {"input": {"prompt": "lost [[fault:reset]]"}})
    assert emulator_thread.submits("replicate") == {"lost [[fault:reset]]": 1}  # created; its answer was lost
    status, _, body = _http("POST", f"{emulator_thread.url}/v1/predictions", {"version": "f" * 64, "input": {}})
    assert status == 422 and body["title"] == "Invalid version or not permitted"
