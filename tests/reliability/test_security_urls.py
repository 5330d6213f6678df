"""Image URLs in input rows: http(s) only; loopback, private, link-local and other special addresses refused
unless --allow-private-urls; bounded in size and time; redirects not followed (they could lead anywhere)."""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pixelmill.errors import InputError
from pixelmill.reading.images import InputPolicy, load_image
from pixelmill.testing import Emulator, ThreadRunner
from tests.reliability.hostile_servers import ImageHost, rebind_dns
from tests.runs import cli, read_output, write_jsonl


@pytest.fixture(autouse=True)
def _no_outbound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever pixelmill does, these tests never connect beyond loopback: the event loop refuses it."""
    from asyncio.selector_events import BaseSelectorEventLoop

    connect = BaseSelectorEventLoop.sock_connect

    async def loopback_only(self: Any, sock: socket.socket, address: Any) -> Any:
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise OSError(errno.ENETUNREACH, f"test: no connection to {address[0]} (loopback only)")
        return await connect(self, sock, address)

    monkeypatch.setattr(BaseSelectorEventLoop, "sock_connect", loopback_only)


@pytest.fixture
def host() -> Iterator[ImageHost]:
    server = ImageHost()
    runner = ThreadRunner(server)  # type: ignore[arg-type]
    runner.start()
    yield server
    runner.stop()


async def fetch(url: str, tmp_path: Path, **policy: Any) -> Any:
    async with aiohttp.ClientSession() as session:
        return await load_image(url, field="images", policy=InputPolicy(tmp_path, **policy), session=session)


@pytest.mark.parametrize("url", [
    "ftp://example.com/a.png",
    "file:///etc/passwd",
    "gopher://127.0.0.1:70/_x",
    "s3://bucket/a.png",
    "data:text/html,<script>alert(1)</script>",
    "data:image/png;base64,!!!",
])
async def test_only_http_https_and_base64_data_urls(tmp_path: Path, url: str) -> None:
    with pytest.raises(InputError) as caught:
        await fetch(url, tmp_path, allow_private_urls=True)
    assert caught.value.field == "images"


@pytest.mark.parametrize("host_part", [
    "127.0.0.1", "127.1.2.3", "localhost", "[::1]", "0.0.0.0", "10.1.2.3", "172.16.5.4", "192.168.0.10",
    "169.254.169.254", "[fd00::1]", "[fe80::1]", "[::ffff:127.0.0.1]", "2130706433", "0x7f000001",
])
async def test_private_and_loopback_addresses_are_refused(host: ImageHost, tmp_path: Path, host_part: str) -> None:
    url = f"http://{host_part}:{host.port}/good.png"
    with pytest.raises(InputError, match="--allow-private-urls"):
        await fetch(url, tmp_path)
    assert host.hits == []


async def test_shared_address_space_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--allow-private-urls"):
        await fetch("http://100.100.100.200/latest/meta-data/", tmp_path, url_timeout=0.5)


async def test_allowed_with_the_flag(host: ImageHost, tmp_path: Path) -> None:
    image = await fetch(f"{host.url}/good.png", tmp_path, allow_private_urls=True)
    assert image.mime == "image/png" and (image.width, image.height) == (64, 64)


async def test_size_is_bounded(host: ImageHost, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(InputError, match="over the limit"):
        await fetch(f"{host.url}/big-declared.png", tmp_path, allow_private_urls=True, max_bytes=1_000_000)
    with pytest.raises(InputError, match="over the limit"):
        await fetch(f"{host.url}/big-chunked.png", tmp_path, allow_private_urls=True, max_bytes=1_000_000)
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("path", ["/stall.png", "/drip.png"])
async def test_time_is_bounded(host: ImageHost, tmp_path: Path, path: str) -> None:
    """A server that never answers, or answers one byte at a time, is given up after the time limit in all."""
    started = time.monotonic()
    with pytest.raises(InputError, match="cannot fetch"):
        await fetch(host.url + path, tmp_path, allow_private_urls=True, url_timeout=0.5)
    assert time.monotonic() - started < 2.0


async def test_redirects_are_not_followed(host: ImageHost, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="HTTP 302"):
        await fetch(f"{host.url}/redirect.png", tmp_path, allow_private_urls=True)
    assert host.hits == ["/redirect.png"]


async def test_a_name_that_resolves_public_then_private_is_refused(host: ImageHost, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the first answer is a public address, the next one loopback. The address connected to must
    be the address checked."""
    rebind_dns(monkeypatch)
    try:
        await fetch(f"http://images.rebind.example:{host.port}/good.png", tmp_path)
    except InputError:
        pass
    assert host.hits == [], "the fetch reached a loopback server through a name checked as public"


def test_urls_in_a_run(emulator_thread: Emulator, host: ImageHost, tmp_path: Path) -> None:
    """End to end: refused without the flag (the row fails, naming the flag; nothing fetched), fetched with it."""
    rows = [{"images": f"{host.url}/good.png", "prompt": "make it blue"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    base = ["edit", src, "--base-url", emulator_thread.openai_base_url, "--quiet"]
    assert cli(*base, "-o", tmp_path / "a").code == 1
    [row] = read_output(tmp_path / "a")
    assert row["pixelmill"]["error"]["field"] == "images" and "--allow-private-urls" in \
        row["pixelmill"]["error"]["message"]
    assert host.hits == [] and emulator_thread.count() == 0
    assert cli(*base, "-o", tmp_path / "b", "--allow-private-urls").code == 0
    assert host.hits == ["/good.png"] and emulator_thread.count(endpoint="edits") == 1
