"""The emulator's fal queue routes, driven by the official `fal-client` SDK and by raw HTTP.

fal-client builds its queue URLs as `https://{FAL_QUEUE_RUN_HOST}/` when it is imported (`client.QUEUE_URL_FORMAT`):
the scheme is fixed to https, so neither `FAL_QUEUE_RUN_HOST` nor `FAL_RUN_HOST` can name a plain-http loopback
server. The tests set that module constant to the emulator's `http://127.0.0.1:PORT/` instead; everything after
it (headers, retries, JSON parsing, the status/response/cancel URLs the submit answer returns) is the SDK's own.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from typing import Any

import fal_client
import fal_client.client
import pytest
from PIL import Image

from pixelmill.testing import Emulator

KEY = "fal-test-key-id:secret"
MODEL = "fal-ai/flux/dev"


@pytest.fixture
def fal(emulator_thread: Emulator, monkeypatch: pytest.MonkeyPatch) -> fal_client.SyncClient:
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", emulator_thread.url + "/")
    return fal_client.SyncClient(key=KEY)


def _http(method: str, url: str, body: dict[str, Any] | None = None, *, key: str | None = KEY,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if key:
        all_headers["Authorization"] = f"Key {key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=all_headers, method=method)
    try:
        with urllib.request.urlopen(request) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _until_done(url: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = _http("GET", url)
        answer = json.loads(body)
        if answer["status"] == "COMPLETED":
            assert status == 200
            return dict(answer)
        assert status == 202
        time.sleep(0.02)
    raise AssertionError("the request did not complete")


def test_sdk_submit_status_result(fal: fal_client.SyncClient, emulator_thread: Emulator) -> None:
    handle = fal.submit(MODEL, {"prompt": "a red bicycle", "image_size": "square", "num_images": 2, "seed": 7,
                                "output_format": "png"})
    # status, result and cancel live under owner/app, not under the full model id
    assert handle.status_url == f"{emulator_thread.url}/fal-ai/flux/requests/{handle.request_id}/status"
    first = handle.status(with_logs=True)
    assert isinstance(first, fal_client.Queued | fal_client.InProgress)
    result = handle.get()
    assert isinstance(handle.status(), fal_client.Completed)
    assert result["seed"] == 7 and result["prompt"] == "a red bicycle"
    assert result["has_nsfw_concepts"] == [False, False]
    assert [(i["width"], i["height"], i["content_type"]) for i in result["images"]] == [(512, 512, "image/png")] * 2
    # the media URL is on the CDN path and needs no key
    status, _, data = _http("GET", result["images"][0]["url"], key=None)
    assert status == 200 and Image.open(io.BytesIO(data)).size == (512, 512)
    assert emulator_thread.count(family="fal", endpoint="submit", prompt="a red bicycle") == 1
    media = emulator_thread.records(family="fal", endpoint="media")
    assert len(media) == 1 and media[0].key_sent is False
    assert all(r.key_sent for r in emulator_thread.records(family="fal", endpoint=lambda e: e != "media"))


def test_sdk_result_and_status_by_request_id(fal: fal_client.SyncClient) -> None:
    handle = fal.submit("fal-ai/flux/schnell", {"prompt": "by id"})
    handle.get()
    assert isinstance(fal.status("fal-ai/flux/schnell", handle.request_id), fal_client.Completed)
    assert fal.result("fal-ai/flux/schnell", handle.request_id)["images"][0]["width"] == 1024


def test_sdk_cancel_a_queued_request(fal: fal_client.SyncClient, emulator_thread: Emulator) -> None:
    emulator_thread.configure(fal_concurrency=1, job_latency=30)
    running = fal.submit(MODEL, {"prompt": "first"})
    queued = fal.submit(MODEL, {"prompt": "second"})
    status = queued.status()
    assert isinstance(status, fal_client.Queued) and status.position == 0
    assert isinstance(running.status(), fal_client.InProgress)
    queued.cancel()  # 200 OK
    done = queued.status()
    assert isinstance(done, fal_client.Completed) and done.error_type == "request_cancelled"
    running.cancel()  # 202 CANCELLATION_REQUESTED
    with pytest.raises(fal_client.client.FalClientHTTPError) as err:
        running.cancel()  # 400 ALREADY_COMPLETED
    assert err.value.status_code == 400


def test_sdk_validation_error(fal: fal_client.SyncClient) -> None:
    with pytest.raises(fal_client.client.FalClientHTTPError) as err:
        fal.submit(MODEL, {"prompt": "x", "num_images": 9})
    assert err.value.status_code == 422
    assert err.value.message == [{"loc": ["body", "num_images"], "msg": "Input should be less than or equal to 4",
                                  "type": "less_than_equal", "input": 9, "ctx": {"le": 4}}]


def test_concurrency_limit_queues_the_rest(emulator_thread: Emulator) -> None:
    emulator_thread.configure(fal_concurrency=2, job_latency=30)
    answers = [json.loads(_http("POST", f"{emulator_thread.url}/{MODEL}", {"prompt": f"p{i}"})[2]) for i in range(5)]
    states = [json.loads(_http("GET", a["status_url"])[2]) for a in answers]
    assert [s["status"] for s in states] == ["IN_PROGRESS"] * 2 + ["IN_QUEUE"] * 3
    assert [s.get("queue_position") for s in states[2:]] == [0, 1, 2]
    assert _http("PUT", answers[0]["cancel_url"])[0] == 202
    assert json.loads(_http("GET", answers[2]["status_url"])[2])["status"] == "IN_PROGRESS"
    assert json.loads(_http("GET", answers[3]["status_url"])[2])["queue_position"] == 0


def test_result_expires_and_media_lifecycle(emulator_thread: Emulator) -> None:
    emulator_thread.configure(job_latency=0, retention_scale=0.001)  # result kept 3.6 s, large 0.36 s
    url = f"{emulator_thread.url}/{MODEL}"
    small = json.loads(_http("POST", url, {"prompt": "keep"},
                             headers={"X-Fal-Object-Lifecycle-Preference": '{"expiration_duration_seconds": 100}'})[2])
    large = json.loads(_http("POST", url, {"prompt": "inline", "sync_mode": True})[2])
    _until_done(small["status_url"])
    _until_done(large["status_url"])
    status, _, body = _http("GET", small["response_url"])
    assert status == 200
    media_url = json.loads(body)["images"][0]["url"]
    assert json.loads(_http("GET", large["response_url"])[2])["images"][0]["url"].startswith("data:image/jpeg;base64,")
    time.sleep(0.5)  # past 6 min x 0.001 for the >= 10 KB result, within 1 h x 0.001 for the small one
    status, headers, body = _http("GET", large["response_url"])
    assert status == 404 and json.loads(body)["error_type"] == "result_expired"
    assert headers["X-Fal-Error-Type"] == "result_expired"
    assert _http("GET", small["response_url"])[0] == 200
    assert _http("GET", media_url, key=None)[0] == 404  # its lifecycle, 100 s x 0.001 = 0.1 s, is over
    time.sleep(3.5)
    assert _http("GET", small["response_url"])[0] == 404
    assert _until_done(small["status_url"])["status"] == "COMPLETED"  # the request is still known


def test_media_object_lifecycle_header_is_honoured(emulator_thread: Emulator) -> None:
    emulator_thread.configure(job_latency=0, retention_scale=0.01)
    answer = json.loads(_http("POST", f"{emulator_thread.url}/{MODEL}", {"prompt": "short-lived"},
                              headers={"X-Fal-Object-Lifecycle-Preference": '{"expiration_duration_seconds": 20}'})[2])
    _until_done(answer["status_url"])
    media_url = json.loads(_http("GET", answer["response_url"])[2])["images"][0]["url"]
    assert _http("GET", media_url, key=None)[0] == 200
    time.sleep(0.3)  # 20 s x 0.01
    assert _http("GET", media_url, key=None)[0] == 404
    assert _http("GET", answer["response_url"])[0] == 200  # the result (1 h x 0.01) outlives its media


def test_refusal_and_failure_markers(emulator_thread: Emulator) -> None:
    emulator_thread.configure(job_latency=0)
    url = f"{emulator_thread.url}/fal-ai/flux-pro/v1.1"
    refused = json.loads(_http("POST", url, {"prompt": "x [[fault:moderation]]", "safety_tolerance": "2"})[2])
    _until_done(refused["status_url"])
    result = json.loads(_http("GET", refused["response_url"])[2])
    assert result["has_nsfw_concepts"] == [True]
    failed = json.loads(_http("POST", url, {"prompt": "y [[fault:job_failed]]"})[2])
    done = _until_done(failed["status_url"])
    assert done["error_type"] == "runner_disconnected" and done["error"]
    status, headers, _body = _http("GET", failed["response_url"])
    assert status == 503 and headers["X-Fal-Error-Type"] == "runner_disconnected"


def test_submit_faults_and_lost_answers(emulator_thread: Emulator) -> None:
    url = f"{emulator_thread.url}/{MODEL}"
    status, _headers, body = _http("POST", url, {"prompt": "a [[fault:unavailable]]"})
    assert status == 503 and json.loads(body)["error_type"] == "runner_scheduling_failure"
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        _http("POST", url, {"prompt": "b [[fault:reset]]"})
    # the reset came after fal accepted the request: it exists, and was submitted once
    assert emulator_thread.submits("fal") == {"b [[fault:reset]]": 1}
    assert emulator_thread.count(family="fal", endpoint="submit") == 2


def test_errors_of_the_queue(emulator_thread: Emulator) -> None:
    base = emulator_thread.url
    assert _http("POST", f"{base}/{MODEL}", {"prompt": "x"}, key=None)[0] == 401
    status, _, body = _http("POST", f"{base}/fal-ai/no-such-model", {"prompt": "x"})
    assert status == 404
    status, _, body = _http("POST", f"{base}/fal-ai/flux-pro/v1.1-ultra", {"prompt": "x", "aspect_ratio": "5:1"})
    assert status == 422 and json.loads(body)["detail"][0]["type"] == "literal_error"
    status, _, body = _http("POST", f"{base}/fal-ai/fast-lightning-sdxl", {"prompt": "x", "format": "webp"})
    assert status == 422 and json.loads(body)["detail"][0]["loc"] == ["body", "format"]
    status, _, body = _http("POST", f"{base}/fal-ai/flux-pro/kontext", {"prompt": "x", "image_url": "data:x"})
    assert status == 422 and json.loads(body)["detail"][0]["type"] == "image_load_error"
    status, _, body = _http("GET", f"{base}/fal-ai/flux/requests/00000000-0000-0000-0000-000000000000/status")
    assert status == 404
    assert json.loads(_http("PUT", f"{base}/fal-ai/flux/requests/nope/cancel")[2]) == {"status": "NOT_FOUND"}
    # a request is known only under its own owner/app
    answer = json.loads(_http("POST", f"{base}/{MODEL}", {"prompt": "x"})[2])
    assert _http("GET", f"{base}/fal-ai/flux-pro/requests/{answer['request_id']}/status")[0] == 404


def test_kontext_edit_keeps_the_input_shape(emulator_thread: Emulator) -> None:
    emulator_thread.configure(job_latency=0)
    buf = io.BytesIO()
    Image.new("RGB", (600, 300), (10, 200, 10)).save(buf, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    answer = json.loads(_http("POST", f"{emulator_thread.url}/fal-ai/flux-pro/kontext",
                              {"prompt": "make it blue", "image_url": uri, "output_format": "png"})[2])
    assert answer["status_url"].startswith(f"{emulator_thread.url}/fal-ai/flux-pro/requests/")
    _until_done(answer["status_url"])
    image = json.loads(_http("GET", answer["response_url"])[2])["images"][0]
    assert image["width"] / image["height"] == pytest.approx(2, rel=0.05)
    assert emulator_thread.records(endpoint="submit")[0].input_images == 1


async def test_async_sdk_submit_result_cancel(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", emulator.url + "/")
    client = fal_client.AsyncClient(key=KEY)
    handle = await client.submit("fal-ai/fast-lightning-sdxl", {"prompt": "async", "num_images": 3, "format": "png",
                                                               "num_inference_steps": "2"})
    result = await handle.get()
    assert len(result["images"]) == 3 and result["images"][0]["content_type"] == "image/png"
    assert isinstance(await client.status("fal-ai/fast-lightning-sdxl", handle.request_id), fal_client.Completed)
    emulator.configure(job_latency=30)
    slow = await client.submit(MODEL, {"prompt": "slow"})
    await slow.cancel()
    done = await slow.status()
    assert isinstance(done, fal_client.Completed) and done.error_type == "request_cancelled"
