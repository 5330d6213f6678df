"""Shared fixtures: the emulator (tests/emulator_fixtures.py) and small helpers for runs on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.emulator_fixtures import _shared_emulator, emulator, emulator_thread, make_emulator  # noqa: F401

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
SPEC_FILE = REFERENCE / "openai-images.openapi.yaml"


@pytest.fixture(autouse=True)
def _no_real_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's real keys or endpoints."""
    for name in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "OPENAI_API_VERSION",
                 "OPENAI_BASE_URL", "GEMINI_API_KEY", "GOOGLE_API_KEY", "DF_API_KEY", "DF_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
