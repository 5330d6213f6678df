"""The emulator's Gemini routes, driven by the official `google-genai` SDK and by raw HTTP."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from google import genai
from google.genai import errors, types
from PIL import Image

from pixelmill.testing import Emulator

KEY = "test-gemini-key-0001"
IMAGE_ONLY = types.GenerateContentConfig(response_modalities=["IMAGE"])


@pytest.fixture
def client(emulator_thread: Emulator) -> genai.Client:
    return genai.Client(
        api_key=KEY,
        http_options=types.HttpOptions(base_url=emulator_thread.gemini_base_url,
                                       retry_options=types.HttpRetryOptions(attempts=1)),
    )


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def _final_images(response: types.GenerateContentResponse) -> list[Image.Image]:
    parts = response.candidates[0].content.parts if response.candidates and response.candidates[0].content else []
    return [Image.open(io.BytesIO(p.inline_data.data)) for p in parts or []
            if p.inline_data and p.inline_data.data and not p.thought]


def _raw(emu: Emulator, model: str, body: dict[str, Any], *, key: str | None = KEY,
         query_key: bool = False) -> tuple[int, dict[str, Any]]:
    url = f"{emu.gemini_base_url}/v1beta/models/{model}:generateContent"
    headers = {"Content-Type": "application/json"}
    if key and query_key:
        url += f"?key={key}"
    elif key:
        headers["x-goog-api-key"] = key
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_generate_with_aspect_ratio_and_size(client: genai.Client, emulator_thread: Emulator) -> None:
    config = types.GenerateContentConfig(
        response_modalities=["TEXT", "IMAGE"],
        image_config=types.ImageConfig(aspect_ratio="16:9", image_size="2K"),
    )
    response = client.models.generate_content(model="gemini-3-pro-image", contents="a harbour at dusk",
                                              config=config)
    [image] = _final_images(response)
    assert (image.format, image.size) == ("PNG", (2752, 1536))  # the table's 1K 16:9 size, doubled
    candidate = response.candidates[0]  # type: ignore[index]
    assert candidate.finish_reason == types.FinishReason.STOP
    parts = candidate.content.parts  # type: ignore[union-attr]
    assert parts[0].text and parts[-1].inline_data  # type: ignore[index]
    assert all(p.thought_signature for p in parts)  # type: ignore[union-attr]
    usage = response.usage_metadata
    assert usage is not None and usage.candidates_token_count and usage.candidates_token_count >= 1120
    assert response.model_version == "gemini-3-pro-image" and response.response_id
    record = emulator_thread.log[-1]
    assert (record.family, record.status, record.images, record.auth) == ("gemini", 200, 1, "valid")
    assert "x-goog-api-key" not in {k.lower() for k in record.headers}


def test_edit_follows_the_input_shape(client: genai.Client) -> None:
    contents = [types.Part.from_text(text="put it on marble"),
                types.Part.from_bytes(data=_png(400, 600), mime_type="image/png")]
    response = client.models.generate_content(model="gemini-3.1-flash-image", contents=contents,
                                              config=IMAGE_ONLY)
    [image] = _final_images(response)
    assert image.size == (848, 1264)  # nearest listed ratio to 2:3
    assert all(p.text is None for p in response.candidates[0].content.parts)  # type: ignore[index,union-attr]


def test_thought_parts_come_first(client: genai.Client, emulator_thread: Emulator) -> None:
    emulator_thread.configure(faults={"thoughts": 1.0}, thought_drafts=2)
    response = client.models.generate_content(model="gemini-3.1-flash-image", contents="a kite", config=IMAGE_ONLY)
    parts = response.candidates[0].content.parts  # type: ignore[index,union-attr]
    flags = [bool(p.thought) for p in parts]  # type: ignore[union-attr]
    assert flags == [True, True, True, False]
    assert parts[1].inline_data is not None  # a draft image, marked as thought  # type: ignore[index]
    assert len(_final_images(response)) == 1
    assert emulator_thread.log[-1].thoughts == 3 and emulator_thread.log[-1].images == 1


def test_multi_turn_chat_echoes_signatures(client: genai.Client, emulator_thread: Emulator) -> None:
    chat = client.chats.create(model="gemini-3.1-flash-image",
                               config=types.GenerateContentConfig(response_modalities=["TEXT", "IMAGE"]))
    chat.send_message("draw a red bicycle")
    second = chat.send_message("now make it blue")
    assert len(_final_images(second)) == 1
    assert [r.status for r in emulator_thread.log] == [200, 200]


def _first_turn(client: genai.Client, model: str) -> types.Content:
    first = client.models.generate_content(model=model, contents="draw a red bicycle",
                                           config=types.GenerateContentConfig(response_modalities=["TEXT", "IMAGE"]))
    content = first.candidates[0].content  # type: ignore[index]
    assert content is not None
    return content


def test_stripped_signature_is_refused_by_strict_models(client: genai.Client) -> None:
    model_turn = _first_turn(client, "gemini-3.1-flash-image")
    stripped = model_turn.model_copy(deep=True)
    for part in stripped.parts or []:
        part.thought_signature = None
    history = [types.UserContent(parts=[types.Part.from_text(text="draw a red bicycle")]), stripped,
               types.UserContent(parts=[types.Part.from_text(text="now blue")])]
    with pytest.raises(errors.ClientError) as err:
        client.models.generate_content(model="gemini-3.1-flash-image", contents=history, config=IMAGE_ONLY)
    assert err.value.code == 400 and err.value.status == "INVALID_ARGUMENT"
    assert "invalid thought signature for content at index 1" in (err.value.message or "")

    altered = model_turn.model_copy(deep=True)
    altered.parts[0].text = "something else"  # type: ignore[index]
    history[1] = altered
    with pytest.raises(errors.ClientError):
        client.models.generate_content(model="gemini-3.1-flash-image", contents=history, config=IMAGE_ONLY)

    history[1] = model_turn
    assert _final_images(client.models.generate_content(model="gemini-3.1-flash-image", contents=history,
                                                        config=IMAGE_ONLY))


def test_non_strict_model_accepts_stripped_signatures(client: genai.Client) -> None:
    model_turn = _first_turn(client, "gemini-3-pro-image")
    for part in model_turn.parts or []:
        part.thought_signature = None
    history = [types.UserContent(parts=[types.Part.from_text(text="draw")]), model_turn,
               types.UserContent(parts=[types.Part.from_text(text="again")])]
    assert _final_images(client.models.generate_content(model="gemini-3-pro-image", contents=history,
                                                        config=IMAGE_ONLY))


@pytest.mark.parametrize(
    ("fault", "finish", "block"),
    [
        ("prompt_blocked", None, types.BlockedReason.SAFETY),
        ("image_safety", types.FinishReason.IMAGE_SAFETY, None),
        ("no_image", types.FinishReason.NO_IMAGE, None),
        ("text_only", types.FinishReason.STOP, None),
    ],
)
def test_refusals_are_200_answers_without_images(client: genai.Client, emulator_thread: Emulator, fault: str,
                                                 finish: types.FinishReason | None,
                                                 block: types.BlockedReason | None) -> None:
    response = client.models.generate_content(model="gemini-3.1-flash-image", contents=f"x [[fault:{fault}]]",
                                              config=IMAGE_ONLY)
    assert _final_images(response) == []
    if block is not None:
        assert not response.candidates
        assert response.prompt_feedback is not None and response.prompt_feedback.block_reason == block
    else:
        assert response.candidates[0].finish_reason == finish  # type: ignore[index]
    if fault == "text_only":
        assert response.text
    assert (emulator_thread.log[-1].status, emulator_thread.log[-1].fault) == (200, fault)


def test_rate_limit_carries_retry_info(client: genai.Client, emulator_thread: Emulator) -> None:
    emulator_thread.configure(rpm=1, rate_window=30)
    client.models.generate_content(model="gemini-3.1-flash-image", contents="one", config=IMAGE_ONLY)
    with pytest.raises(errors.ClientError) as err:
        client.models.generate_content(model="gemini-3.1-flash-image", contents="two", config=IMAGE_ONLY)
    assert err.value.code == 429 and err.value.status == "RESOURCE_EXHAUSTED"
    details = err.value.details["error"]["details"]
    [retry] = [d for d in details if d["@type"].endswith("RetryInfo")]
    assert retry["retryDelay"].endswith("s") and 29 <= float(retry["retryDelay"][:-1]) <= 30


def test_quota_has_no_retry_info(client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as err:
        client.models.generate_content(model="gemini-3.1-flash-image", contents="x [[fault:quota]]",
                                       config=IMAGE_ONLY)
    assert err.value.code == 429
    assert not [d for d in err.value.details["error"]["details"] if d["@type"].endswith("RetryInfo")]


def test_server_errors(client: genai.Client) -> None:
    with pytest.raises(errors.ServerError) as err:
        client.models.generate_content(model="gemini-3.1-flash-image", contents="x [[fault:unavailable]]",
                                       config=IMAGE_ONLY)
    assert err.value.code == 503 and err.value.status == "UNAVAILABLE"


def test_stream_generate_content(client: genai.Client, emulator_thread: Emulator) -> None:
    emulator_thread.configure(faults={"thoughts": 1.0})
    chunks = list(client.models.generate_content_stream(model="gemini-3.1-flash-image", contents="a kite",
                                                        config=IMAGE_ONLY))
    assert len(chunks) == 2
    assert all(p.thought for p in chunks[0].candidates[0].content.parts)  # type: ignore[index,union-attr]
    assert len(_final_images(chunks[1])) == 1


@pytest.mark.parametrize(
    ("model", "generation_config", "status"),
    [
        ("gemini-3.1-flash-image", {"imageConfig": {"aspectRatio": "7:3"}}, 400),
        ("gemini-3.1-flash-image", {"imageConfig": {"aspectRatio": "8:1", "imageSize": "512"}}, 200),
        ("gemini-3.1-flash-image", {"imageConfig": {"imageSize": "1k"}}, 400),  # needs an upper-case K
        ("gemini-3-pro-image", {"imageConfig": {"aspectRatio": "8:1"}}, 400),  # flash only
        ("gemini-3.1-flash-lite-image", {"imageConfig": {"imageSize": "4K"}}, 400),
        ("gemini-3.1-flash-image", {"imageConfig": {"outputMimeType": "image/jpeg"}}, 400),  # Vertex only
        ("gemini-3.1-flash-image", {"responseModalities": ["PICTURE"]}, 400),
        ("gemini-3.1-flash-image", {"candidateCount": 2}, 400),
        ("gemini-2.5-flash-image", {}, 404),  # retired
        ("no-such-model", {}, 404),
    ],
)
def test_request_rules(emulator_thread: Emulator, model: str, generation_config: dict[str, Any],
                       status: int) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "a kite"}]}], "generationConfig": generation_config}
    got, answer = _raw(emulator_thread, model, body)
    assert got == status, answer
    if status != 200:
        assert set(answer["error"]) >= {"code", "message", "status"}
        assert answer["error"]["status"] == ("NOT_FOUND" if status == 404 else "INVALID_ARGUMENT")


def test_snake_case_and_query_key(emulator_thread: Emulator) -> None:
    data = base64.b64encode(_png(300, 300)).decode()
    body = {"contents": [{"parts": [{"text": "edit"}, {"inline_data": {"mime_type": "image/png", "data": data}}]}],
            "generation_config": {"response_modalities": ["IMAGE"], "image_config": {"aspect_ratio": "1:1"}}}
    status, answer = _raw(emulator_thread, "gemini-3.1-flash-image", body, query_key=True)
    assert status == 200
    [part] = answer["candidates"][0]["content"]["parts"]
    assert part["inlineData"]["mimeType"] == "image/png" and "thoughtSignature" in part
    assert emulator_thread.log[-1].path.endswith(":generateContent")  # the key in the query is not logged
    assert KEY not in repr(emulator_thread.log[-1])


def test_input_image_limit(emulator_thread: Emulator) -> None:
    data = base64.b64encode(_png(16, 16)).decode()
    parts: list[dict[str, Any]] = [{"text": "combine"}]
    parts += [{"inlineData": {"mimeType": "image/png", "data": data}}] * 4
    status, answer = _raw(emulator_thread, "gemini-3.1-flash-lite-image", {"contents": [{"parts": parts}]})
    assert status == 400 and "at most 3" in answer["error"]["message"]
    bad = [{"text": "x"}, {"inlineData": {"mimeType": "image/png", "data": "%%%"}}]
    status, answer = _raw(emulator_thread, "gemini-3.1-flash-image", {"contents": [{"parts": bad}]})
    assert status == 400 and "Base64" in answer["error"]["message"]


def test_keys(emulator_thread: Emulator) -> None:
    emulator_thread.configure(api_keys={KEY})
    body = {"contents": [{"parts": [{"text": "x"}]}]}
    status, answer = _raw(emulator_thread, "gemini-3.1-flash-image", body, key="wrong-key-000")
    assert status == 400 and answer["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    status, answer = _raw(emulator_thread, "gemini-3.1-flash-image", body, key=None)
    assert status == 403 and answer["error"]["status"] == "PERMISSION_DENIED"
    assert [r.auth for r in emulator_thread.log] == ["invalid", "missing"]


def test_moderation_is_a_200_refusal_in_one_of_two_shapes(client: genai.Client, emulator_thread: Emulator) -> None:
    emulator_thread.configure(rpm=1000)
    shapes = set()
    for i in range(12):
        response = client.models.generate_content(model="gemini-3.1-flash-image",
                                                  contents=f"x{i} [[fault:moderation]]", config=IMAGE_ONLY)
        assert _final_images(response) == []
        if response.prompt_feedback and response.prompt_feedback.block_reason:
            shapes.add("prompt_blocked")
        else:
            assert response.candidates[0].finish_reason == types.FinishReason.IMAGE_SAFETY  # type: ignore[index]
            shapes.add("image_safety")
        headers = response.sdk_http_response.headers if response.sdk_http_response else {}
        assert not any(k.lower().startswith("x-ratelimit") for k in headers or {})
    assert shapes == {"prompt_blocked", "image_safety"}
    assert emulator_thread.count(fault="moderation", status=200) == 12
