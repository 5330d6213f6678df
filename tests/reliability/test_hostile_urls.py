"""Image URLs in answers are bounded like input URLs: public addresses only, the checked address connected to,
redirects checked again; the provider's own server (the emulator, a local gateway) is the one exception."""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pixelmill.errors import TransientError
from pixelmill.providers.base import ImageRequest, ImageResult, ProviderSettings
from pixelmill.providers.openai.provider import OpenAIProvider
from pixelmill.testing import Emulator, ThreadRunner
from tests.reliability.hostile_answers import PNG, Canned, ScriptedServer
from tests.reliability.hostile_servers import ImageHost, rebind_dns
from tests.runs import TEST_KEY, cli_process, read_output, write_jsonl

METADATA = "169.254.169.254"


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address this process connects to; nothing beyond loopback is ever reached (refused here)."""
    from asyncio.selector_events import BaseSelectorEventLoop

    connect = BaseSelectorEventLoop.sock_connect
    seen: list[str] = []

    async def loopback_only(self: Any, sock: socket.socket, address: Any) -> Any:
        seen.append(address[0])
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise OSError(errno.ENETUNREACH, f"test: no connection to {address[0]} (loopback only)")
        return await connect(self, sock, address)

    monkeypatch.setattr(BaseSelectorEventLoop, "sock_connect", loopback_only)
    return seen


@pytest.fixture
def other() -> Iterator[ImageHost]:
    """Another loopback service, which an answer must not make pixelmill fetch from."""
    host = ImageHost()
    runner = ThreadRunner(host)  # type: ignore[arg-type]
    runner.start()
    yield host
    runner.stop()


async def call(base_url: str, model: str = "gpt-image-2", **params: Any) -> ImageResult:
    provider = OpenAIProvider(ProviderSettings(base_url=base_url, api_key=TEST_KEY), env={})
    try:
        return await provider.call(ImageRequest(task="generate", model=model, prompt="p", params=params,
                                                timeout=5), provider.spec_for(model))
    finally:
        await provider.aclose()


def url_answer(url: str) -> Canned:
    return Canned(body={"data": [{"url": url}]})


async def test_an_answer_url_on_another_loopback_service_is_not_fetched(server: ScriptedServer, other: ImageHost,
                                                                        attempts: list[str]) -> None:
    server.default = url_answer(f"{other.url}/good.png")
    with pytest.raises(TransientError, match="does not fetch from") as caught:
        await call(server.url + "/v1")
    assert caught.value.maybe_billed is True
    assert other.hits == []


@pytest.mark.parametrize("url", [f"http://{METADATA}/latest/meta-data/image.png", "http://10.0.0.7/a.png",
                                 "http://[fd00::1]/a.png", "http://localhost:1/a.png"])
async def test_an_answer_url_at_a_private_address_is_never_connected(server: ScriptedServer, attempts: list[str],
                                                                     url: str) -> None:
    server.default = url_answer(url)
    with pytest.raises(TransientError, match="does not fetch from"):
        await call(server.url + "/v1")
    assert set(attempts) == {"127.0.0.1"}, attempts  # the provider's own server, nothing else


@pytest.mark.parametrize("target", ["other", "metadata"])
async def test_redirects_are_checked_again(server: ScriptedServer, other: ImageHost, attempts: list[str],
                                           target: str) -> None:
    """The provider's own server redirects the image URL elsewhere: the new target is checked like the first."""
    to = f"{other.url}/good.png" if target == "other" else f"http://{METADATA}/latest/meta-data/"
    server.default = url_answer(f"{server.url}/redirect?to={to}")
    with pytest.raises(TransientError, match="does not fetch from"):
        await call(server.url + "/v1")
    assert other.hits == [] and METADATA not in attempts


async def test_a_name_checked_as_public_is_connected_at_that_address(server: ScriptedServer, other: ImageHost,
                                                                    attempts: list[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name resolves to a public address when checked, to loopback after. The connection goes
    to the address checked (refused here, being outside loopback), never to the second answer."""
    rebind_dns(monkeypatch)
    server.default = url_answer(f"http://images.rebind.example:{other.port}/good.png")
    with pytest.raises(TransientError):
        await call(server.url + "/v1")
    assert other.hits == [] and "93.184.216.34" in attempts


async def test_the_providers_own_server_is_fetched_from(server: ScriptedServer, attempts: list[str]) -> None:
    """A local server that hands out URLs on itself (absolute or relative) keeps working."""
    server.files["a.png"] = PNG
    for url in (f"{server.url}/files/a.png", "/files/a.png"):
        server.default = url_answer(url)
        result = await call(server.url + "/v1")
        assert [image.data for image in result.images] == [PNG]


def test_emulator_url_answers_in_a_run(emulator_thread: Emulator, tmp_path: Path) -> None:
    """dall-e answers with URLs on the emulator itself by default: a real run still gets its images."""
    emulator_thread.configure(serve_retired=True)  # dall-e-2 is past its shutdown date; a gateway may serve it
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a red cube"}])
    proc = cli_process("generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url,
                       "--model", "dall-e-2", "--size", "256x256", "--quiet")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    [row] = read_output(tmp_path / "run")
    assert len(row["images"]) == 1 and (tmp_path / "run" / row["images"][0]).is_file()
