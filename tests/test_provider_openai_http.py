"""The shared HTTP layer (`pixelmill.providers.http`): bounded reads, downloads, retry hints, strict decoding,
and transport failures mapped to `TransientError`, against a real loopback server."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator

import pybase64
import pytest
from aiohttp import web
from PIL import Image

from pixelmill.errors import RateLimits, TransientError
from pixelmill.providers.http import (
    HttpClient,
    decode_base64,
    parse_duration,
    parse_json,
    parse_rate_limits,
    parse_retry_after,
    sniff_image_mime,
)


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.query["n"]), content_type="application/json")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(int(request.query["chunks"])):
            await response.write(b"y" * 65536)
        await response.write_eof()
        return response

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=png(), content_type="application/octet-stream")

    async def not_image(request: web.Request) -> web.Response:
        return web.Response(text="<html>expired</html>", content_type="text/html")

    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=403, text="AuthenticationFailed")

    app = web.Application()
    app.router.add_get("/sized", sized)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/image", image)
    app.router.add_get("/not-image", not_image)
    app.router.add_get("/gone", gone)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    http = HttpClient("test", connect_timeout=5)
    yield http
    await http.aclose()


async def test_send_reads_the_whole_body_and_reuses_the_session(server: str, client: HttpClient) -> None:
    reply = await client.send("GET", f"{server}/sized", params={"n": "1000"}, time_limit=5, max_bytes=1000)
    assert (reply.status, len(reply.body), reply.content_type) == (200, 1000, "application/json")
    session = client.session()
    await client.send("GET", f"{server}/sized", params={"n": "1"}, time_limit=5, max_bytes=10)
    assert client.session() is session
    await client.aclose()
    assert session.closed


@pytest.mark.parametrize(("path", "params"), [("sized", {"n": "1001"}), ("chunked", {"chunks": "20"})])
async def test_bodies_over_the_bound_are_refused(server: str, client: HttpClient, path: str,
                                                  params: dict[str, str]) -> None:
    with pytest.raises(TransientError, match="more than 1000 bytes") as caught:
        await client.send("GET", f"{server}/{path}", params=params, time_limit=5, max_bytes=1000)
    assert caught.value.maybe_billed is True  # a 200 arrived: the work was done


async def test_chunked_bodies_under_the_bound_are_read(server: str, client: HttpClient) -> None:
    reply = await client.send("GET", f"{server}/chunked", params={"chunks": "3"}, time_limit=5, max_bytes=1 << 20)
    assert len(reply.body) == 3 * 65536


async def test_download_image(server: str, client: HttpClient) -> None:
    data, mime = await client.download_image(f"{server}/image", time_limit=5, max_bytes=1 << 20,
                                              trusted_origin=server)
    assert (data, mime) == (png(), "image/png")  # sniffed, not taken from the octet-stream label


@pytest.mark.parametrize(("path", "match", "status"), [
    ("not-image", "not a PNG, JPEG, WebP or GIF", None),
    ("gone", "HTTP 403", 403),
])
async def test_download_failures_are_transient_and_billed(server: str, client: HttpClient, path: str, match: str,
                                                          status: int | None) -> None:
    with pytest.raises(TransientError, match=match) as caught:
        await client.download_image(f"{server}/{path}", time_limit=5, max_bytes=1 << 20, trusted_origin=server)
    assert caught.value.maybe_billed is True and caught.value.http_status == status


async def test_download_is_bounded_and_http_only(server: str, client: HttpClient) -> None:
    with pytest.raises(TransientError, match="more than 10 bytes"):
        await client.download_image(f"{server}/image", time_limit=5, max_bytes=10, trusted_origin=server)
    with pytest.raises(TransientError, match="not http"):
        await client.download_image("file:///etc/passwd", time_limit=5, max_bytes=10)


async def test_transport_errors_never_show_the_url(client: HttpClient) -> None:
    with pytest.raises(TransientError, match="cannot connect") as caught:
        await client.send("GET", "http://127.0.0.1:9/x", params={"key": "AIzaSECRETSECRETSECRETSECRET00"},
                          time_limit=5, max_bytes=10)
    assert "SECRET" not in str(caught.value) and "127.0.0.1:9" not in str(caught.value)
    assert caught.value.maybe_billed is False


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after": "-3"}) == 0.0
    assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "whenever"}) is None
    assert parse_retry_after({}) is None
    now = 1_800_000_000.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 42))
    assert parse_retry_after({"retry-after": date}, now=now) == 42.0
    past = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now - 42))
    assert parse_retry_after({"retry-after": past}, now=now) == 0.0


def test_parse_retry_after_refuses_what_is_not_a_number() -> None:
    """Not finite is no hint; a date too far to compute is no hint either (and no crash)."""
    assert parse_retry_after({"retry-after": "1e999"}) is None
    assert parse_retry_after({"retry-after": "NaN"}) is None
    assert parse_retry_after({"retry-after-ms": "inf", "retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "Fri, 01 Jan 9999 00:00:00 GMT"}, now=0.0) == pytest.approx(
        253370764800.0)
    assert parse_retry_after({"retry-after": "Mon, 99 Foo 99999 99:99:99 GMT"}) is None


def test_parse_rate_limits_reads_openai_headers() -> None:
    headers = {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
               "x-ratelimit-reset-requests": "120ms", "x-ratelimit-limit-images": "50",
               "x-ratelimit-remaining-images": "0", "x-ratelimit-reset-images": "1m2.5s",
               "x-ratelimit-limit-tokens": "oops"}
    assert parse_rate_limits(headers) == RateLimits(
        requests_limit=500, requests_remaining=499, requests_reset=0.12,
        images_limit=50, images_remaining=0, images_reset=62.5)
    assert parse_rate_limits({"x-request-id": "r"}) is None
    assert parse_rate_limits({"x-ratelimit-limit-requests": "0"}) is None  # a zero limit sets no pace
    assert parse_duration("6m0s") == 360.0 and parse_duration("1h") == 3600.0 and parse_duration("2") == 2.0
    assert parse_duration("soon") is None and parse_duration("1s garbage") is None


def test_decode_base64_is_strict() -> None:
    assert decode_base64(pybase64.b64encode(b"\x89PNG data").decode(), label="t") == b"\x89PNG data"
    for bad in ("!!not*base64%%", "abc", "ab\ncd=="):
        with pytest.raises(TransientError, match="not valid base64") as caught:
            decode_base64(bad, label="t", request_id="req_9")
        assert caught.value.maybe_billed is True
        assert (caught.value.code, caught.value.request_id) == ("invalid_base64", "req_9")


def test_parse_json() -> None:
    assert parse_json(b'{"a": [1]}', label="t") == {"a": [1]}
    with pytest.raises(TransientError, match="not valid JSON") as caught:
        parse_json(b'{"data": [', label="t", http_status=200)
    assert caught.value.maybe_billed is True and caught.value.code == "malformed_body"
    with pytest.raises(TransientError) as caught:
        parse_json(b"<html>", label="t", http_status=502)
    assert caught.value.maybe_billed is False


def test_sniff_image_mime() -> None:
    assert sniff_image_mime(png()) == "image/png"
    assert sniff_image_mime(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    assert sniff_image_mime(b"GIF89a....") == "image/gif"
    assert sniff_image_mime(b"RIFF\x10\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_image_mime(b"<html>") is None
    assert sniff_image_mime(b"") is None
