"""The emulator's Gemini File API and Batch Mode, driven by the official `google-genai` SDK (at its default API
version, v1, whose paths OpenAI shares) and by raw HTTP for the wire shapes the SDK hides."""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest
from google import genai
from google.genai import errors, types
from PIL import Image

from pixelmill.testing import Emulator

KEY = "test-gemini-batch-key"
MODEL = "gemini-3.1-flash-image"
DONE = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_EXPIRED", "JOB_STATE_CANCELLED")


@pytest.fixture
def client(emulator_thread: Emulator) -> genai.Client:
    emulator_thread.configure(batch_latency=0.2)
    return genai.Client(api_key=KEY, http_options=types.HttpOptions(
        base_url=emulator_thread.gemini_base_url, retry_options=types.HttpRetryOptions(attempts=1)))


def _request(prompt: str, **image_config: str) -> dict[str, Any]:
    config = {"responseModalities": ["IMAGE"], "imageConfig": image_config or {"aspectRatio": "1:1"}}
    return {"contents": [{"role": "user", "parts": [{"text": prompt}]}], "generationConfig": config}


def _upload(client: genai.Client, lines: list[dict[str, Any]] | bytes, name: str | None = None) -> str:
    data = lines if isinstance(lines, bytes) else "\n".join(json.dumps(x) for x in lines).encode() + b"\n"
    made = client.files.upload(file=io.BytesIO(data), config=types.UploadFileConfig(
        mime_type="application/jsonl", display_name="shard", name=name))
    assert made.name is not None
    return made.name


def _wait(client: genai.Client, name: str, timeout: float = 30.0) -> types.BatchJob:
    end = time.monotonic() + timeout
    while True:
        job = client.batches.get(name=name)
        if (job.state and job.state.name in DONE) or time.monotonic() > end:
            return job
        time.sleep(0.05)


def _results(client: genai.Client, job: types.BatchJob) -> list[dict[str, Any]]:
    assert job.dest is not None and job.dest.file_name is not None
    return [json.loads(line) for line in client.files.download(file=job.dest.file_name).splitlines()]


def _raw(emu: Emulator, method: str, path: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(emu.gemini_base_url + path, method=method, headers={"x-goog-api-key": KEY})
    try:
        with urllib.request.urlopen(request) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_file_batch_answers_each_line_as_generate_content(client: genai.Client, emulator_thread: Emulator) -> None:
    bad = _request("a kite", aspectRatio="7:3")
    with pytest.raises(errors.ClientError) as sync:
        client.models.generate_content(model=MODEL, contents="a kite", config=types.GenerateContentConfig(
            response_modalities=["IMAGE"], image_config=types.ImageConfig(aspect_ratio="7:3")))
    lines = [{"key": f"row-{i}", "request": _request(f"a harbour {i}")} for i in range(6)]
    lines += [{"key": "bad", "request": bad}, {"key": "blocked", "request": _request("x [[fault:prompt_blocked]]")},
              {"key": "server", "request": _request("x [[fault:server_error]]")}]
    created = client.batches.create(model=MODEL, src=_upload(client, lines), config={"display_name": "run42-0001"})
    assert created.name and created.name.startswith("batches/") and created.state
    assert created.state.name == "JOB_STATE_PENDING" and created.display_name == "run42-0001"
    job = _wait(client, created.name)
    assert job.state is not None and job.state.name == "JOB_STATE_SUCCEEDED" and job.model == f"models/{MODEL}"
    out = _results(client, job)
    assert [line["key"] for line in out] == [x["key"] for x in lines]  # input order
    image = out[0]["response"]["candidates"][0]["content"]["parts"][-1]["inlineData"]
    assert Image.open(io.BytesIO(base64.b64decode(image["data"]))).size == (1024, 1024)
    assert out[6]["error"]["message"] == sync.value.message and out[6]["error"]["code"] == 3
    assert out[7]["response"]["promptFeedback"]["blockReason"] == "SAFETY"
    assert out[8]["error"]["code"] == 13
    status, raw = _raw(emulator_thread, "GET", f"/v1beta/{created.name}")
    assert status == 200 and raw["done"] is True
    meta = raw["metadata"]
    assert meta["state"] == "BATCH_STATE_SUCCEEDED" and meta["@type"].endswith("GenerateContentBatch")
    assert meta["batchStats"] == {"requestCount": "9", "successfulRequestCount": "7", "failedRequestCount": "2",
                                  "pendingRequestCount": "0"}
    assert job.dest is not None
    assert meta["output"]["responsesFile"] == raw["response"]["responsesFile"] == job.dest.file_name
    assert job.dest.file_name == "files/batch-" + created.name.removeprefix("batches/")
    counters = emulator_thread.batches.counters
    assert sorted(counters.billed("gemini")) == sorted([f"row-{i}" for i in range(6)] + ["blocked"])
    assert counters.billed_twice("gemini") == [] and counters.batches_created["gemini"] == 1
    name = job.dest.file_name  # type: ignore[union-attr]
    download = urllib.request.Request(f"{emulator_thread.gemini_base_url}/download/v1beta/{name}:download?alt=media",
                                      headers={"x-goog-api-key": KEY})
    with urllib.request.urlopen(download) as resp:  # the REST docs' download path serves the same bytes
        assert resp.read() == client.files.download(file=name)


def test_resumable_upload_on_the_wire_and_its_file(client: genai.Client, emulator_thread: Emulator) -> None:
    base = emulator_thread.gemini_base_url
    start = urllib.request.Request(base + "/upload/v1beta/files", method="POST", data=b'{"file": {"displayName": "d"}}',
                                   headers={"x-goog-api-key": KEY, "X-Goog-Upload-Protocol": "resumable",
                                            "X-Goog-Upload-Command": "start",
                                            "X-Goog-Upload-Header-Content-Length": "6",
                                            "X-Goog-Upload-Header-Content-Type": "application/jsonl",
                                            "Content-Type": "application/json"})
    with urllib.request.urlopen(start) as resp:
        url = resp.headers["x-goog-upload-url"]
        assert resp.headers["x-goog-upload-status"] == "active"
    for offset, chunk, command, status in ((0, b"abc", "upload", "active"), (3, b"def", "upload, finalize", "final")):
        put = urllib.request.Request(url, method="POST", data=chunk, headers={
            "X-Goog-Upload-Offset": str(offset), "X-Goog-Upload-Command": command})
        with urllib.request.urlopen(put) as resp:
            assert resp.headers["x-goog-upload-status"] == status
            body = resp.read()
    made = json.loads(body)["file"]
    assert made["sizeBytes"] == "6" and made["state"] == "ACTIVE" and made["source"] == "UPLOADED"
    assert made["displayName"] == "d" and made["name"].startswith("files/")
    got = client.files.get(name=made["name"])
    assert got.size_bytes == 6 and got.mime_type == "application/jsonl"
    assert emulator_thread.batches.counters.files_uploaded["gemini"] == 1
    with pytest.raises(errors.ClientError):  # uploaded files cannot be downloaded
        _raise(_raw(emulator_thread, "GET", f"/v1beta/{made['name']}:download?alt=media"))
    _upload(client, [{"key": "a", "request": _request("x")}], name="run42-shard-0001")
    with pytest.raises(errors.ClientError) as twice:  # a client-chosen name that exists is refused
        _upload(client, [{"key": "a", "request": _request("x")}], name="run42-shard-0001")
    assert twice.value.code == 409
    client.files.delete(name=made["name"])
    with pytest.raises(errors.ClientError):
        client.files.get(name=made["name"])


def _raise(answer: tuple[int, dict[str, Any]]) -> None:
    status, body = answer
    if status >= 400:
        raise errors.ClientError(status, body)


def test_expired_and_failed_batches_return_no_results_and_bill_nothing(client: genai.Client,
                                                                       emulator_thread: Emulator) -> None:
    emulator_thread.configure(batch_fates=("expire", "fail"))
    lines = [{"key": f"row-{i}", "request": _request(f"p{i}")} for i in range(10)]
    expired = client.batches.create(model=MODEL, src=_upload(client, lines))
    failed = client.batches.create(model=MODEL, src=_upload(client, lines))
    for created, state in ((expired, "JOB_STATE_EXPIRED"), (failed, "JOB_STATE_FAILED")):
        assert created.name is not None
        job = _wait(client, created.name)
        assert job.state is not None and job.state.name == state and job.dest is None
        status, raw = _raw(emulator_thread, "GET", f"/v1beta/{created.name}")
        assert status == 200 and raw["done"] is True and "response" not in raw and raw["error"]["message"]
    assert not emulator_thread.batches.counters.billed("gemini")
    again = client.batches.create(model=MODEL, src=_upload(client, lines))  # the fates are used up
    assert again.name and _wait(client, again.name).state.name == "JOB_STATE_SUCCEEDED"  # type: ignore[union-attr]
    assert set(emulator_thread.batches.counters.billed("gemini").values()) == {1}


def test_a_bad_input_line_fails_the_batch(client: genai.Client) -> None:
    data = json.dumps({"key": "a", "request": _request("x")}).encode() + b"\n{not json}\n"
    created = client.batches.create(model=MODEL, src=_upload(client, data))
    assert created.name is not None
    job = _wait(client, created.name)
    assert job.state is not None and job.state.name == "JOB_STATE_FAILED"


def test_cancel_list_and_delete(client: genai.Client, emulator_thread: Emulator) -> None:
    emulator_thread.configure(batch_fates=("stall",))
    src = _upload(client, [{"key": "a", "request": _request("x")}])
    stalled = client.batches.create(model=MODEL, src=src, config={"display_name": "first"})
    second = client.batches.create(model=MODEL, src=src, config={"display_name": "second"})
    assert stalled.name and second.name
    client.batches.cancel(name=stalled.name)
    assert _wait(client, stalled.name).state.name == "JOB_STATE_CANCELLED"  # type: ignore[union-attr]
    status, page = _raw(emulator_thread, "GET", "/v1beta/batches?pageSize=1")
    assert status == 200 and [op["metadata"]["displayName"] for op in page["operations"]] == ["second"]
    status, rest = _raw(emulator_thread, "GET", f"/v1beta/batches?pageSize=1&pageToken={page['nextPageToken']}")
    assert [op["metadata"]["displayName"] for op in rest["operations"]] == ["first"]
    assert "nextPageToken" not in rest
    assert [job.display_name for job in client.batches.list()] == ["second", "first"]
    client.batches.delete(name=stalled.name)
    assert [job.display_name for job in client.batches.list()] == ["second"]
    with pytest.raises(errors.ClientError):
        client.batches.get(name=stalled.name)


def test_openai_and_gemini_share_v1_paths_by_key(client: genai.Client, emulator_thread: Emulator) -> None:
    gemini_file = _upload(client, [{"key": "a", "request": _request("x")}])
    oai = openai.OpenAI(base_url=emulator_thread.openai_base_url, api_key="sk-x", max_retries=0)
    oai_file = oai.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    assert [f.id for f in oai.files.list()] == [oai_file.id]
    assert [f.name for f in client.files.list()] == [gemini_file]
    assert [b.id for b in oai.batches.list()] == [] and list(client.batches.list()) == []


def test_the_reset_fate_creates_the_batch_and_loses_the_answer(client: genai.Client,
                                                                emulator_thread: Emulator) -> None:
    import importlib
    import importlib.util

    # google-genai sends through httpx or its fork httpx2, whichever it finds: either's transport error will do.
    transport = tuple(importlib.import_module(name).TransportError for name in ("httpx", "httpx2")
                      if importlib.util.find_spec(name))
    emulator_thread.configure(batch_fates=("reset",))
    source = _upload(client, [{"key": "a", "request": _request("a kite")}])
    with pytest.raises(transport):
        client.batches.create(model=MODEL, src=source, config={"display_name": "lost-0001"})
    assert emulator_thread.batches.counters.batches_created["gemini"] == 1
    [job] = [j for j in client.batches.list() if j.display_name == "lost-0001"]
    assert job.name is not None
    done = _wait(client, job.name)
    assert done.state is not None and done.state.name == "JOB_STATE_SUCCEEDED"
