"""What a hostile answer can make pixelmill hold: a gzip bomb (1 MB on the wire, 1 GiB inflated) is dropped at
the answer bound as it inflates, in a real `pixelmill generate` process whose peak memory is measured (from
inside it: `peak_memory`); the
bounds themselves follow the model (n images at its largest size), not a flat 512 MiB."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixelmill.errors import TransientError
from pixelmill.providers.base import ImageRequest, ProviderSettings
from pixelmill.providers.gemini.provider import GeminiProvider
from pixelmill.providers.openai.provider import OpenAIProvider
from pixelmill.testing import ThreadRunner
from tests.reliability.hostile_answers import Canned, ScriptedServer, gzip_bomb
from tests.runs import TEST_KEY, read_output, write_jsonl

INFLATED = 1 << 30
BOMB = gzip_bomb(INFLATED)


@pytest.fixture
def bomb_server() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    server.default = Canned(200, BOMB, {"Content-Encoding": "gzip"})
    runner = ThreadRunner(server)  # type: ignore[arg-type]
    runner.start()
    yield server
    runner.stop()


def test_a_gzip_bomb_is_not_inflated_past_the_bound(bomb_server: ScriptedServer, tmp_path: Path) -> None:
    assert len(BOMB) < 2 * 1024 * 1024
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"bomb {i}"} for i in range(2)])
    peak = tmp_path / "peak"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.reliability.peak_memory", str(peak), "generate", str(src), "-o",
         str(tmp_path / "run"), "--base-url", bomb_server.url + "/v1", "--concurrency", "2", "--max-retries", "0",
         "--quiet"],
        env={**os.environ, "OPENAI_API_KEY": TEST_KEY}, capture_output=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr.decode()[-2000:]
    peak_mib = int(peak.read_text()) / 1024
    assert peak_mib < 400, f"peak RSS {peak_mib:.0f} MiB for answers that inflate to {INFLATED >> 20} MiB each"
    rows = read_output(tmp_path / "run")
    assert [row["pixelmill"]["error"]["kind"] for row in rows] == ["transient", "transient"]
    assert all("answer of more than" in row["pixelmill"]["error"]["message"] for row in rows)


@pytest.mark.parametrize("family", ["openai", "gemini"])
async def test_the_bound_stops_reading(bomb_server: ScriptedServer, family: str) -> None:
    """Against the provider object: a TransientError that may be billed, and this process's memory does not
    grow by the inflated size."""
    if family == "openai":
        provider: OpenAIProvider | GeminiProvider = OpenAIProvider(
            ProviderSettings(base_url=bomb_server.url + "/v1", api_key=TEST_KEY), env={})
        model = "gpt-image-2"
    else:
        provider = GeminiProvider(ProviderSettings(base_url=bomb_server.url, api_key="AIzaTEST-0123456789abcdef"),
                                  env={})
        model = "gemini-3.1-flash-image"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        with pytest.raises(TransientError, match="answer of more than") as caught:
            await provider.call(ImageRequest(task="generate", model=model, prompt="p", timeout=30),
                                provider.spec_for(model))
    finally:
        await provider.aclose()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert caught.value.maybe_billed is True
    assert grown_mib < 400, f"peak RSS grew by {grown_mib:.0f} MiB"


def test_bounds_follow_the_model() -> None:
    """n images at the model's largest size, uncompressed, as base64: far below the old flat 512 MiB."""
    from pixelmill.providers.boundary import answer_limit

    openai = OpenAIProvider(ProviderSettings(api_key=TEST_KEY), env={})
    gemini = GeminiProvider(ProviderSettings(api_key="AIzaTEST-0123456789abcdef"), env={})
    cap = ProviderSettings().max_download_bytes
    one = answer_limit(openai.spec_for("gpt-image-2"), 1, per_image_cap=cap, envelope=0)
    assert 3840 * 2160 * 4 < one < 64 * 2**20  # a 4K RGBA image as base64 fits; not much more
    assert answer_limit(openai.spec_for("dall-e-3"), 1, per_image_cap=cap, envelope=0) < 16 * 2**20
    flash = answer_limit(gemini.spec_for("gemini-3.1-flash-image"), 3, per_image_cap=cap, envelope=0)
    assert flash < 300 * 2**20
