"""Runs through the Python API (in-process, fast) against the emulator, for either wire family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.runs import TEST_KEY

GEMINI_TEST_KEY = "AIzaTEST-0b5e2c9d4a7f1e3b6c8d0a2f4e6b"


def run_family(emu: Any, family: str, src: Path, out: Path, task: str = "generate", **options: Any) -> Any:
    """A run with fast retries (10-50 ms backoff) over real HTTP, with the OpenAI or Gemini provider."""
    from pixelmill.api import run_config
    from pixelmill.options import build_config, job_options

    engine = {"retry_base": 0.01, "retry_cap": 0.05, **options.pop("engine", {})}
    if family == "gemini":
        wire = {"provider": "gemini", "base_url": emu.gemini_base_url, "api_key": GEMINI_TEST_KEY}
    else:
        wire = {"provider": "openai", "base_url": emu.openai_base_url, "api_key": TEST_KEY}
    config = build_config(task, src, job_options(output=out, engine=engine, **wire, **options))
    return run_config(config, env={})
