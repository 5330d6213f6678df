"""The emulator's OpenAI Files and Batch API, driven by the official `openai` SDK as an independent client."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import openai
import pytest
from openai.types import Batch
from PIL import Image

from pixelmill.testing import Emulator

KEY = "sk-test-emulator-batch"
GEN = "/v1/images/generations"
EDIT = "/v1/images/edits"
TERMINAL = ("completed", "failed", "expired", "cancelled")


@pytest.fixture
def client(emulator_thread: Emulator) -> openai.OpenAI:
    emulator_thread.configure(batch_latency=0.2)
    return openai.OpenAI(base_url=emulator_thread.openai_base_url, api_key=KEY, max_retries=0)


def _line(custom_id: str, body: dict[str, Any], url: str = GEN) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def _gen(custom_id: str, prompt: str | None = None, **extra: Any) -> dict[str, Any]:
    return _line(custom_id, {"model": "gpt-image-1.5", "prompt": prompt or f"a lighthouse {custom_id}",
                             "size": "1024x1024", "quality": "low", **extra})


def _upload(client: openai.OpenAI, lines: list[dict[str, Any]] | bytes, name: str = "shard.jsonl") -> str:
    data = lines if isinstance(lines, bytes) else "\n".join(json.dumps(x) for x in lines).encode() + b"\n"
    return client.files.create(file=(name, data), purpose="batch").id


def _wait(client: openai.OpenAI, batch_id: str, timeout: float = 30.0) -> Batch:
    end = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL or time.monotonic() > end:
            return batch
        time.sleep(0.05)


def _content(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).content.splitlines()]


def _png(width: int = 64, height: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_generation_batch_walks_the_states_and_answers_every_line(client: openai.OpenAI,
                                                                   emulator_thread: Emulator) -> None:
    lines = [_gen(f"row-{i:03d}") for i in range(40)]
    file_id = _upload(client, lines)
    created = client.batches.create(input_file_id=file_id, endpoint=GEN, completion_window="24h",
                                    metadata={"pixelmill_run": "run42/0001"})
    assert created.status == "validating" and created.id.startswith("batch_")
    assert created.request_counts is not None and created.request_counts.total == 0
    seen = {created.status}
    while True:
        batch = client.batches.retrieve(created.id)
        seen.add(batch.status)
        if batch.status in TERMINAL:
            break
        time.sleep(0.01)
    assert batch.status == "completed" and {"in_progress", "completed"} <= seen
    assert batch.in_progress_at and batch.completed_at and batch.finalizing_at
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (40, 40, 0)
    assert batch.error_file_id is None and batch.model == "gpt-image-1.5"
    assert batch.usage is not None and batch.usage.output_tokens > 0
    out = _content(client, batch.output_file_id)
    ids = [line["custom_id"] for line in out]
    assert sorted(ids) == [x["custom_id"] for x in lines]
    assert ids != sorted(ids), "output lines come in a shuffled order"
    first = out[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200 and first["response"]["request_id"]
    body = first["response"]["body"]
    image = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    assert image.size == (1024, 1024) and body["usage"]["output_tokens"] > 0
    counters = emulator_thread.batches.counters
    assert counters.batches_created["openai"] == 1 and counters.files_uploaded["openai"] == 1
    assert set(counters.billed("openai").values()) == {1} and len(counters.billed("openai")) == 40
    listed = client.batches.list()
    assert [(b.id, b.metadata) for b in listed.data] == [(created.id, {"pixelmill_run": "run42/0001"})]
    output_file = client.files.retrieve(batch.output_file_id or "")
    assert output_file.purpose == "batch_output" and output_file.bytes > 0


def test_a_line_that_is_a_400_synchronously_is_an_error_line_with_the_same_body(client: openai.OpenAI,
                                                                               emulator_thread: Emulator) -> None:
    bad = {"model": "gpt-image-1.5", "prompt": "a kite", "size": "999x999"}
    with pytest.raises(openai.BadRequestError) as sync:
        client.images.generate(**bad)  # type: ignore[call-overload]
    lines = [_gen("good"), _line("bad-size", bad), _gen("refused", "a kite [[fault:moderation]]"),
             _gen("server", "a kite [[fault:server_error]]"), _gen("streamed", stream=True)]
    batch = client.batches.create(input_file_id=_upload(client, lines), endpoint=GEN, completion_window="24h")
    batch = _wait(client, batch.id)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 4)
    errors = {line["custom_id"]: line["response"] for line in _content(client, batch.error_file_id)}
    assert errors["bad-size"]["status_code"] == 400
    assert errors["bad-size"]["body"] == {"error": sync.value.body}
    assert errors["refused"]["status_code"] == 400
    assert errors["refused"]["body"]["error"]["code"] == "moderation_blocked"
    assert errors["server"]["status_code"] == 500
    assert errors["streamed"]["status_code"] == 400 and "Batch API" in errors["streamed"]["body"]["error"]["message"]
    assert [line["custom_id"] for line in _content(client, batch.output_file_id)] == ["good"]
    assert dict(emulator_thread.batches.counters.billed("openai")) == {"good": 1}


def test_edit_lines_take_data_urls_and_uploaded_file_ids(client: openai.OpenAI) -> None:
    image_id = client.files.create(file=("in.png", _png()), purpose="vision").id
    data_url = "data:image/png;base64," + base64.b64encode(_png(96, 64)).decode()
    body = {"model": "gpt-image-1.5", "prompt": "make it blue", "quality": "low"}
    lines = [_line("by-url", {**body, "images": [{"image_url": data_url}]}, EDIT),
             _line("by-file", {**body, "images": [{"file_id": image_id}]}, EDIT),
             _line("missing-file", {**body, "images": [{"file_id": "file-doesnotexist"}]}, EDIT)]
    batch = client.batches.create(input_file_id=_upload(client, lines), endpoint=EDIT, completion_window="24h")
    batch = _wait(client, batch.id)
    done = {line["custom_id"]: line for line in _content(client, batch.output_file_id)}
    assert set(done) == {"by-url", "by-file"}
    assert done["by-url"]["response"]["body"]["size"] == "1536x1024"  # auto size follows the wide input
    [missing] = _content(client, batch.error_file_id)
    assert missing["custom_id"] == "missing-file" and missing["response"]["status_code"] == 404


def test_a_file_that_fails_validation_fails_the_batch_with_line_numbers(client: openai.OpenAI,
                                                                        emulator_thread: Emulator) -> None:
    good = json.dumps(_gen("a"))
    data = "\n".join([good, "{not json", good, json.dumps(_gen("b") | {"url": EDIT}),
                      json.dumps(_line("c", {"model": "gpt-image-2", "prompt": "x"}))]).encode()
    batch = client.batches.create(input_file_id=_upload(client, data), endpoint=GEN, completion_window="24h")
    batch = _wait(client, batch.id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    found = {(e.code, e.line) for e in batch.errors.data}
    assert found == {("invalid_json_line", 2), ("duplicate_custom_id", 3), ("mismatched_endpoint", 4),
                     ("mismatched_model", 5)}
    assert batch.output_file_id is None and batch.error_file_id is None
    assert not emulator_thread.batches.counters.billed("openai")


def test_expired_batch_keeps_answered_lines_and_lists_the_rest_as_batch_expired(client: openai.OpenAI,
                                                                                emulator_thread: Emulator) -> None:
    emulator_thread.configure(batch_fates=("expire",))
    lines = [_gen(f"row-{i:02d}") for i in range(20)]
    batch = client.batches.create(input_file_id=_upload(client, lines), endpoint=GEN, completion_window="24h")
    batch = _wait(client, batch.id)
    assert batch.status == "expired" and batch.expired_at is not None
    done = [line["custom_id"] for line in _content(client, batch.output_file_id)]
    left = _content(client, batch.error_file_id)
    assert 0 < len(done) < 20 and len(done) + len(left) == 20
    assert sorted(done + [line["custom_id"] for line in left]) == [x["custom_id"] for x in lines]
    assert {line["error"]["code"] for line in left} == {"batch_expired"}
    assert all(line["response"] is None for line in left)
    assert sorted(emulator_thread.batches.counters.billed("openai")) == sorted(done)
    # the fates are used in order: the next batch is normal
    again = client.batches.create(input_file_id=_upload(client, left and [_gen(x["custom_id"]) for x in left]),
                                  endpoint=GEN, completion_window="24h")
    assert _wait(client, again.id).status == "completed"
    assert emulator_thread.batches.counters.billed_twice("openai") == []


def test_cancel_goes_through_cancelling_and_keeps_nothing_unanswered(client: openai.OpenAI,
                                                                     emulator_thread: Emulator) -> None:
    emulator_thread.configure(batch_fates=("stall",))
    batch = client.batches.create(input_file_id=_upload(client, [_gen("a"), _gen("b")]), endpoint=GEN,
                                  completion_window="24h")
    time.sleep(0.1)
    assert client.batches.retrieve(batch.id).status == "in_progress"
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = _wait(client, batch.id)
    assert done.status == "cancelled" and done.output_file_id is None and done.error_file_id is None
    assert not emulator_thread.batches.counters.billed("openai")
    with pytest.raises(openai.APIStatusError) as again:
        client.batches.cancel(batch.id)
    assert again.value.status_code == 409


def test_list_pages_newest_first(client: openai.OpenAI) -> None:
    file_id = _upload(client, [_gen("a")])
    ids = [client.batches.create(input_file_id=file_id, endpoint=GEN, completion_window="24h",
                                 metadata={"n": str(i)}).id for i in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    rest = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data] == ids[:1] and not rest.has_more
    assert [b.id for b in client.batches.list(limit=2)]  # the SDK follows `after` == ids[::-1]


def test_files_take_bracketed_expiry_refuse_bad_input_and_delete(client: openai.OpenAI) -> None:
    made = client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch",
                               expires_after={"anchor": "created_at", "seconds": 7200})
    assert made.expires_at == made.created_at + 7200 and made.filename == "a.jsonl" and made.bytes == 3
    assert client.files.retrieve(made.id).id == made.id
    assert client.files.content(made.id).content == b"{}\n"
    with pytest.raises(openai.BadRequestError, match="jsonl"):
        client.files.create(file=("a.csv", b"x"), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.batches.create(input_file_id=client.files.create(file=("i.png", _png()), purpose="vision").id,
                              endpoint=GEN, completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=made.id, endpoint=GEN, completion_window="48h")  # type: ignore[arg-type]
    assert client.files.delete(made.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(made.id)


def test_batch_routes_need_a_key(emulator_thread: Emulator) -> None:
    emulator_thread.configure(api_keys={KEY})
    wrong = openai.OpenAI(base_url=emulator_thread.openai_base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.batches.list()
    with pytest.raises(openai.AuthenticationError):
        wrong.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")


def test_the_reset_fate_creates_the_batch_and_loses_the_answer(client: openai.OpenAI,
                                                                emulator_thread: Emulator) -> None:
    emulator_thread.configure(batch_fates=("reset",))
    source = _upload(client, [_gen("a")])
    with pytest.raises(openai.APIConnectionError):
        client.batches.create(input_file_id=source, endpoint=GEN, completion_window="24h",
                              metadata={"pixelmill_batch": "lost-0001"})
    assert emulator_thread.batches.counters.batches_created["openai"] == 1
    [batch] = [b for b in client.batches.list() if (b.metadata or {}).get("pixelmill_batch") == "lost-0001"]
    assert _wait(client, batch.id).status == "completed"
