"""The emulator's Azure OpenAI routes, driven by `openai.AzureOpenAI` and the plain client on `/openai/v1`."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request

import openai
import pytest
from PIL import Image

from pixelmill.testing import Emulator

KEY = "azure-test-key-0001"
VERSION = "2025-04-01-preview"


@pytest.fixture
def azure(emulator_thread: Emulator) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=emulator_thread.azure_endpoint, api_key=KEY, api_version=VERSION,
                              max_retries=0)


def _png(width: int = 64, height: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "blue").save(buf, "PNG")
    return buf.getvalue()


def test_generate_on_a_deployment_named_after_the_model(azure: openai.AzureOpenAI, emulator_thread: Emulator) -> None:
    answer = azure.images.generate(model="gpt-image-1.5", prompt="a bridge", size="1536x1024", quality="low")
    image = Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json or "")))
    assert image.size == (1536, 1024)
    record = emulator_thread.log[-1]
    assert (record.family, record.deployment, record.model, record.api_version) == (
        "azure", "gpt-image-1.5", "gpt-image-1.5", VERSION)
    assert "api-key" not in {k.lower() for k in record.headers} and record.auth == "valid"


def test_custom_deployment_and_edit(azure: openai.AzureOpenAI, emulator_thread: Emulator) -> None:
    emulator_thread.configure(deployments={"my-images": "gpt-image-1.5"})
    answer = azure.images.edit(model="my-images", prompt="on marble", image=[("a.png", _png(), "image/png")])
    assert answer.data[0].b64_json
    record = emulator_thread.log[-1]
    assert (record.endpoint, record.deployment, record.model) == ("edits", "my-images", "gpt-image-1.5")
    with pytest.raises(openai.NotFoundError) as err:
        azure.images.generate(model="nobody-deployed-this", prompt="x")
    assert err.value.code == "DeploymentNotFound"


def test_azure_serves_models_openai_retired(azure: openai.AzureOpenAI) -> None:
    answer = azure.images.generate(model="dall-e-3", prompt="x", response_format="b64_json")
    assert answer.data[0].revised_prompt


def test_webp_is_refused_on_azure(azure: openai.AzureOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        azure.images.generate(model="gpt-image-1.5", prompt="x", output_format="webp")
    assert err.value.body["param"] == "output_format"  # type: ignore[index]


def test_content_filter_and_auth_shapes(azure: openai.AzureOpenAI, emulator_thread: Emulator) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        azure.images.generate(model="gpt-image-1.5", prompt="x [[fault:moderation]]")
    assert err.value.code == "content_policy_violation"
    assert err.value.body["inner_error"]["code"] == "ResponsibleAIPolicyViolation"  # type: ignore[index]
    emulator_thread.configure(api_keys={"another-key-0002"})
    with pytest.raises(openai.AuthenticationError):
        azure.images.generate(model="gpt-image-1.5", prompt="x")


def test_rate_limit_shape(azure: openai.AzureOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as err:
        azure.images.generate(model="gpt-image-1.5", prompt="x [[fault:rate_limit]]")
    assert err.value.response.headers["retry-after"] == "1"
    assert err.value.code == "429"


def test_missing_api_version(emulator_thread: Emulator) -> None:
    url = f"{emulator_thread.azure_endpoint}/openai/deployments/gpt-image-1.5/images/generations"
    request = urllib.request.Request(url, data=json.dumps({"prompt": "x"}).encode(), method="POST",
                                     headers={"api-key": KEY, "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request)
    assert err.value.code == 400
    assert json.loads(err.value.read())["error"]["code"] == "MissingApiVersionParameter"


def test_v1_route_with_the_plain_client(emulator_thread: Emulator) -> None:
    emulator_thread.configure(deployments={"prod-images": "gpt-image-2"})
    client = openai.OpenAI(base_url=emulator_thread.azure_endpoint + "/openai/v1", api_key=KEY, max_retries=0,
                           default_headers={"api-key": KEY})
    answer = client.images.generate(model="prod-images", prompt="x", size="1280x720")
    assert answer.size == "1280x720"
    assert emulator_thread.log[-1].model == "gpt-image-2"
