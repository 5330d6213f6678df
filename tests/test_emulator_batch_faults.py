"""The emulator's batch-create faults, through the official SDKs: `batch_lost_creates` (the batch is created, then
the connection is reset before its answer) and `batch_create_hold` (the answer held once the batch exists); the
batch is found again by listing, as a client whose answer was lost must find it."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest
from google import genai
from google.genai import types

from pixelmill.testing import Emulator

KEY = "test-batch-fault-key"


def test_openai_lost_create_exists_and_is_listed(emulator_thread: Emulator) -> None:
    emu = emulator_thread
    emu.configure(batch_lost_creates=1)
    client = openai.OpenAI(api_key=KEY, base_url=emu.openai_base_url, max_retries=0)
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/images/generations",
            "body": {"model": "gpt-image-1", "prompt": "a kite"}}
    made = client.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")), purpose="batch")
    with pytest.raises(openai.APIConnectionError):
        client.batches.create(input_file_id=made.id, endpoint="/v1/images/generations", completion_window="24h",
                              metadata={"pixelmill_batch": "lost-1"})
    assert emu.batches.counters.batches_created["openai"] == 1
    [listed] = [b for b in client.batches.list() if (b.metadata or {}).get("pixelmill_batch") == "lost-1"]
    assert listed.input_file_id == made.id
    # Only the first create was told to lose its answer.
    again = client.batches.create(input_file_id=made.id, endpoint="/v1/images/generations", completion_window="24h")
    assert again.id != listed.id and emu.batches.counters.batches_created["openai"] == 2


def test_gemini_lost_create_exists_and_is_listed(emulator_thread: Emulator) -> None:
    emu = emulator_thread
    emu.configure(batch_lost_creates=1)
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(
        base_url=emu.gemini_base_url, retry_options=types.HttpRetryOptions(attempts=1)))
    request = {"contents": [{"role": "user", "parts": [{"text": "a kite"}]}],
               "generationConfig": {"responseModalities": ["IMAGE"]}}
    data = json.dumps({"key": "r1", "request": request}).encode() + b"\n"
    made = client.files.upload(file=io.BytesIO(data), config=types.UploadFileConfig(mime_type="application/jsonl"))
    assert made.name is not None
    # The SDK's transport (httpx, or the httpx2 fork its newer releases ship) raises its own read error.
    with pytest.raises(Exception, match="Connection reset by peer"):
        client.batches.create(model="gemini-3.1-flash-image", src=made.name, config={"display_name": "lost-1"})
    assert emu.batches.counters.batches_created["gemini"] == 1
    assert [b.display_name for b in client.batches.list()] == ["lost-1"]


def test_a_held_create_answer_comes_after_the_batch_exists(emulator_thread: Emulator) -> None:
    emu = emulator_thread
    emu.configure(batch_create_hold=0.5)
    client = openai.OpenAI(api_key=KEY, base_url=emu.openai_base_url, max_retries=0)
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/images/generations",
            "body": {"model": "gpt-image-1", "prompt": "a kite"}}
    made = client.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")), purpose="batch")
    started = time.monotonic()
    created = client.batches.create(input_file_id=made.id, endpoint="/v1/images/generations",
                                    completion_window="24h")
    assert time.monotonic() - started >= 0.5
    assert created.id in emu.batches.batches
