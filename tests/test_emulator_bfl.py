"""The emulator's Black Forest Labs routes over raw HTTP (BFL publishes no official Python SDK)."""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from pixelmill.testing import Emulator

KEY = "bfl_test_key_0001"


def _http(method: str, url: str, body: dict[str, Any] | None = None, *, key: str | None = KEY) \
        -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["x-key"] = key
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request) as resp:
            raw, status, got = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        raw, status, got = err.read(), err.code, dict(err.headers)
    try:
        return status, got, json.loads(raw)
    except ValueError:
        return status, got, raw


def _poll(url: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = _http("GET", url)
        assert status == 200
        if body["status"] != "Pending":
            return dict(body)
        time.sleep(0.02)
    raise AssertionError("the task stayed Pending")


def test_submit_poll_on_a_sibling_host_and_fetch(emulator_thread: Emulator) -> None:
    status, _, task = _http("POST", f"{emulator_thread.url}/v1/flux-2-pro",
                            {"prompt": "a red bicycle", "width": 1024, "height": 1024, "seed": 7,
                             "output_format": "png"})
    assert status == 200 and task["cost"] == 3.0 and task["output_mp"] == 1.0486 and task["input_mp"] == 0
    polling = urlsplit(task["polling_url"])
    assert polling.hostname == "localhost" and polling.port == emulator_thread.port  # not the submit's host
    assert polling.path == "/v1/get_result" and polling.query == f"id={task['id']}"
    assert _http("GET", task["polling_url"])[2]["status"] == "Pending"
    done = _poll(task["polling_url"])
    assert done["status"] == "Ready" and done["result"]["seed"] == 7 and done["result"]["prompt"] == "a red bicycle"
    status, headers, data = _http("GET", done["result"]["sample"], key=None)
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(data)).size == (1024, 1024)
    media = emulator_thread.records(family="bfl", endpoint="media")
    assert len(media) == 1 and media[0].key_sent is False
    assert emulator_thread.submits("bfl") == {"a red bicycle": 1}
    # and the reverse: a submit to localhost polls on 127.0.0.1
    localhost = emulator_thread.url.replace("127.0.0.1", "localhost")
    other = _http("POST", f"{localhost}/v1/flux-pro-1.1", {"prompt": "x"})[2]
    assert urlsplit(other["polling_url"]).hostname == "127.0.0.1" and other["cost"] == 4.0


def test_sample_url_expires(emulator_thread: Emulator) -> None:
    emulator_thread.configure(job_latency=0, retention_scale=0.0005)  # 10 min -> 0.3 s
    task = _http("POST", f"{emulator_thread.url}/v1/flux-pro-1.1-ultra", {"prompt": "soon gone"})[2]
    done = _poll(task["polling_url"])
    assert done["status"] == "Ready"
    assert _http("GET", done["result"]["sample"], key=None)[0] == 200
    time.sleep(0.4)
    status, _, body = _http("GET", done["result"]["sample"], key=None)
    assert status == 403 and b"expiry" in body
    assert _http("GET", task["polling_url"])[2]["status"] == "Ready"  # the task itself is still answered


def test_statuses_with_spaces(emulator_thread: Emulator) -> None:
    emulator_thread.configure(job_latency=0)
    url = f"{emulator_thread.url}/v1/flux-pro-1.1"
    expected = {"[[fault:prompt_blocked]]": "Request Moderated", "[[fault:moderation]]": "Content Moderated",
                "[[fault:image_safety]]": "Content Moderated", "[[fault:job_failed]]": "Error"}
    for marker, word in expected.items():
        task = _http("POST", url, {"prompt": f"x {marker}"})[2]
        done = _poll(task["polling_url"])
        assert done["status"] == word and done["result"] is None, marker
    unknown = _http("GET", f"{emulator_thread.url}/v1/get_result?id=00000000-0000-0000-0000-000000000000")
    assert unknown[0] == 200 and unknown[2]["status"] == "Task not found"


def test_active_task_limit_and_credits(emulator_thread: Emulator) -> None:
    emulator_thread.configure(job_latency=30, bfl_active_limit=3)
    url = f"{emulator_thread.url}/v1/flux-pro-1.1"
    assert [_http("POST", url, {"prompt": f"p{i}"})[0] for i in range(4)] == [200, 200, 200, 429]
    status, headers, body = _http("POST", url, {"prompt": "over"})
    assert status == 429 and body["error"] == "rate_limit_exceeded" and headers["Retry-After"] == "5"
    emulator_thread.reset_log()
    emulator_thread.configure(bfl_active_limit=24)
    kontext = f"{emulator_thread.url}/v1/flux-kontext-max"
    assert [_http("POST", kontext, {"prompt": f"k{i}"})[0] for i in range(7)] == [200] * 6 + [429]
    emulator_thread.reset_log()
    emulator_thread.configure(job_latency=0, bfl_credits=10)
    assert [_http("POST", url, {"prompt": f"c{i}"})[0] for i in range(3)] == [200, 200, 402]
    assert emulator_thread.state.bfl_spent == 8.0


def test_validation_auth_and_faults(emulator_thread: Emulator) -> None:
    base = emulator_thread.url
    assert _http("POST", f"{base}/v1/flux-pro-1.1", {"prompt": "x"}, key=None)[0] == 401
    assert _http("POST", f"{base}/v1/flux-nope", {"prompt": "x"})[0] == 404
    status, _, body = _http("POST", f"{base}/v1/flux-pro-1.1", {"prompt": "x", "width": 1000})
    assert status == 422 and body["detail"][0] == {"loc": ["body", "width"], "msg": "Input should be a multiple of 32",
                                                    "type": "multiple_of"}
    status, _, body = _http("POST", f"{base}/v1/flux-pro-1.1-ultra", {"prompt": "x", "aspect_ratio": "3:1"})
    assert status == 422
    status, _, body = _http("POST", f"{base}/v1/flux-2-klein-4b", {"prompt": "x", "input_image_5": "http://a/b.png"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "input_image_5"]
    assert _http("POST", f"{base}/v1/flux-pro-1.1", {"prompt": "x [[fault:quota]]"})[0] == 402
    assert _http("POST", f"{base}/v1/flux-pro-1.1", {"prompt": "x [[fault:bad_gateway]]"})[0] == 502


def test_kontext_edit_prices_the_input(emulator_thread: Emulator) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (800, 400), (5, 5, 200)).save(buf, "PNG")
    status, _, task = _http("POST", f"{emulator_thread.url}/v1/flux-2-pro",
                            {"prompt": "bluer", "input_image": base64.b64encode(buf.getvalue()).decode()})
    assert status == 200 and task["input_mp"] == 0.32 and task["cost"] == 3.46  # 3 + 0.305 input MiP x 1.5
    status, _, task = _http("POST", f"{emulator_thread.url}/v1/flux-kontext-pro",
                            {"prompt": "bluer", "input_image": "data:image/png;base64,"
                             + base64.b64encode(buf.getvalue()).decode()})
    assert status == 200 and task["cost"] == 4.0
    emulator_thread.configure(job_latency=0)
    done = _poll(task["polling_url"])
    assert Image.open(io.BytesIO(_http("GET", done["result"]["sample"], key=None)[2])).size[0] > 1000  # 2:1 ~1 MP
