"""Fixtures of the reliability suite: the scripted loopback server (`tests/reliability/hostile_answers.py`), a
plain OpenAI/Gemini-shaped server whose answers each test writes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pixelmill.testing import ThreadRunner
from tests.reliability.hostile_answers import ScriptedServer


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    runner = ThreadRunner(scripted)  # type: ignore[arg-type]
    runner.start()
    yield scripted
    runner.stop()
