"""OpenAI-family providers: credentials, base URLs, Azure endpoint modes, model specs. Nothing is sent."""

from __future__ import annotations

import pytest

from pixelmill.errors import ConfigError
from pixelmill.providers.base import ProviderSettings, provider_class
from pixelmill.providers.openai.provider import (
    AzureProvider,
    OpenAICompatibleProvider,
    OpenAIProvider,
    normalize_base_url,
)

KEY = "sk-test-config-0123456789"


def test_entry_points_register_the_three_providers() -> None:
    assert provider_class("openai") is OpenAIProvider
    assert provider_class("azure") is AzureProvider
    assert provider_class("openai-compatible") is OpenAICompatibleProvider


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://api.openai.com", "https://api.openai.com/v1"),
        ("https://api.openai.com/", "https://api.openai.com/v1"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("https://api.openai.com/v1/", "https://api.openai.com/v1"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
        ("https://gw.example/acct/openai", "https://gw.example/acct/openai"),
        ("https://gw.example/api/v1/", "https://gw.example/api/v1"),
    ],
)
def test_base_url_with_or_without_v1_never_doubles_it(given: str, expected: str) -> None:
    assert normalize_base_url(given) == expected
    assert "/v1/v1" not in normalize_base_url(given)


@pytest.mark.parametrize("bad", ["api.openai.com", "ftp://x/v1", "https://x/v1?key=1"])
def test_bad_base_urls_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        normalize_base_url(bad)


def test_key_precedence_flag_then_provider_variable_then_df() -> None:
    env = {"OPENAI_API_KEY": "sk-test-from-openai-var", "DF_API_KEY": "sk-test-from-df-var"}
    assert OpenAIProvider(ProviderSettings(api_key=KEY), env).secrets()[0] == KEY
    assert OpenAIProvider(ProviderSettings(), env).secrets()[0] == "sk-test-from-openai-var"
    assert OpenAIProvider(ProviderSettings(), {"DF_API_KEY": "sk-test-from-df-var"}).secrets()[0] == (
        "sk-test-from-df-var"
    )


def test_base_url_precedence() -> None:
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://a.example", "DF_BASE_URL": "http://b.example"}
    assert OpenAIProvider(ProviderSettings(base_url="http://flag.example"), env).base_url == "http://flag.example/v1"
    assert OpenAIProvider(ProviderSettings(), env).base_url == "http://a.example/v1"
    env.pop("OPENAI_BASE_URL")
    assert OpenAIProvider(ProviderSettings(), env).base_url == "http://b.example/v1"
    assert OpenAIProvider(ProviderSettings(), {"OPENAI_API_KEY": KEY}).base_url == "https://api.openai.com/v1"


def test_missing_key_names_the_variables() -> None:
    with pytest.raises(ConfigError, match=r"OPENAI_API_KEY.*DF_API_KEY"):
        OpenAIProvider(ProviderSettings(), {})
    with pytest.raises(ConfigError, match="AZURE_OPENAI_API_KEY") as caught:
        AzureProvider(ProviderSettings(), {"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"})
    assert "AZURE_OPENAI_ENDPOINT" in str(caught.value)
    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT"):
        AzureProvider(ProviderSettings(), {"AZURE_OPENAI_API_KEY": "azure-test-key-123"})


def test_openai_compatible_needs_a_url_but_no_key() -> None:
    with pytest.raises(ConfigError, match="--base-url"):
        OpenAICompatibleProvider(ProviderSettings(), {})
    provider = OpenAICompatibleProvider(ProviderSettings(base_url="http://localhost:8000"), {})
    assert provider.base_url == "http://localhost:8000/v1"
    assert provider.secrets() == ()


def provider_for(env: dict[str, str], **settings: object) -> AzureProvider:
    return AzureProvider(ProviderSettings(**settings), env)  # type: ignore[arg-type]


def test_azure_deployment_urls_and_api_version() -> None:
    env = {"AZURE_OPENAI_API_KEY": "azure-test-key-123", "AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com/"}
    provider = AzureProvider(ProviderSettings(), env)
    assert provider.endpoint("generate", "my deploy") == (
        "https://r.openai.azure.com/openai/deployments/my%20deploy/images/generations",
        {"api-version": "2025-04-01-preview"},
    )
    env["OPENAI_API_VERSION"] = "2024-02-01"
    assert provider_for(env).endpoint("edit", "d")[1] == {"api-version": "2024-02-01"}
    flagged = AzureProvider(ProviderSettings(api_version="2025-06-01-preview"), env)
    assert flagged.endpoint("edit", "d")[1] == {"api-version": "2025-06-01-preview"}


@pytest.mark.parametrize(
    ("endpoint", "options"),
    [
        ("https://r.openai.azure.com/openai/v1", {}),
        ("https://r.openai.azure.com/openai/v1/", {}),
        ("https://r.openai.azure.com", {"azure_api": "v1"}),
        ("https://r.openai.azure.com/openai", {"azure_api": "v1"}),
    ],
)
def test_azure_v1_api(endpoint: str, options: dict[str, str]) -> None:
    env = {"AZURE_OPENAI_API_KEY": "azure-test-key-123", "AZURE_OPENAI_ENDPOINT": endpoint,
           "OPENAI_API_VERSION": "2024-02-01"}
    provider = provider_for(env, options=options)
    # The dated version from the environment belongs to the classic API; v1 takes none unless flagged.
    assert provider.endpoint("generate", "dep") == ("https://r.openai.azure.com/openai/v1/images/generations", None)


def test_azure_authenticates_with_api_key_or_entra_token() -> None:
    env = {"AZURE_OPENAI_API_KEY": "azure-test-key-123", "AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"}
    assert provider_for(env).headers == {"api-key": "azure-test-key-123"}
    del env["AZURE_OPENAI_API_KEY"]
    env["AZURE_OPENAI_AD_TOKEN"] = "entra-token-abcdef"
    assert provider_for(env).headers == {"Authorization": "Bearer entra-token-abcdef"}


def test_spec_for() -> None:
    openai = OpenAIProvider(ProviderSettings(api_key=KEY), {})
    assert openai.spec_for("gpt-image-2-2026-04-21").name == "gpt-image-2"
    unknown = openai.spec_for("gpt-image-9")
    assert unknown.known is False and unknown.family == "openai"
    with pytest.raises(ConfigError, match="--provider gemini"):
        openai.spec_for("gemini-3-pro-image")
    compatible = OpenAICompatibleProvider(ProviderSettings(base_url="http://x"), {})
    assert compatible.spec_for("gemini-3-pro-image").known is False  # a gateway may serve it on this wire
    assert compatible.spec_for("dall-e-3").known is True
