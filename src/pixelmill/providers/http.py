"""The HTTP layer that cloud providers share: one lazy `aiohttp` session per provider, bounded reads, and the
mapping of transport failures to `pixelmill.errors` at this one boundary.

Public API (kept small and stable; the OpenAI and Gemini providers both import it):

    client = HttpClient("openai", connect_timeout=30.0, max_connections=1024)
    reply = await client.send("POST", url, data=body_bytes_or_formdata, headers={...}, params={...},
                              time_limit=request.timeout, max_bytes=limit)   # -> Reply(status, headers, body)
    data, mime = await client.download_image(url, time_limit=..., max_bytes=..., trusted_origin=base_url)
    await client.aclose()

    parse_json(body, label=..., http_status=..., request_id=...)  -> Any    (not JSON: TransientError)
    decode_base64(text, label=..., request_id=...)                 -> bytes  (bad base64: TransientError)
    parse_retry_after(headers)                                     -> float | None  (seconds, finite)
    parse_rate_limits(headers)                                     -> RateLimits | None (x-ratelimit-*)
    sniff_image_mime(data)                                         -> str | None    ("image/png", ...)
    transport_error(exc, label=..., time_limit=..., maybe_billed=..., unanswered=...) -> TransientError
    never_sent(exc)                                                -> bool   (connection never opened)

Bounds hold on what is held, not on what crossed the wire: a compressed answer is counted as it inflates, and
reading stops at the bound (a 1 MB gzip bomb of 1 GB costs at most the bound), then `TransientError`.

Image URLs in answers are data, not configuration: `download_image` applies `pixelmill.netpolicy` (public
addresses only, the checked address connected to, every redirect checked again), except on the provider's own
server (`trusted_origin`, the base URL: the emulator and local gateways serve their images there).

`send` never raises for an HTTP status: the provider maps statuses and error bodies itself (that is where the
wire family's knowledge lives). It raises only `TransientError` (timeouts, resets, refused connections,
truncated bodies, bodies over `max_bytes`). How a failure is classified decides whether it may have been billed:
- the connection could not be opened (refused, DNS, TLS, connect timeout): nothing was sent, not billed
  (`Unreachable`, with its reason in a few words: engine/systematic.py stops a run that cannot connect at all);
- the request was sent and no answer began (a timeout while waiting, a reset, the server closing the
  connection): `UnknownOutcome` (a `TransientError`, `maybe_billed=True`): the provider may have done the work;
- a 200 status arrived and its body broke: `maybe_billed=True` (the server did the work);
- an error status (4xx/5xx) is an answer: the provider maps it, and it is not billed.
The retry policy allows fewer retries of calls that may have been billed, and the engine charges them.

Credentials go in the per-request `headers` / `params`, never in the session: the same session downloads
images from third-party URLs, which must not see them. Messages never contain a URL (Gemini's may carry a key
in its query) or a request body.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson
import pybase64
from multidict import CIMultiDictProxy

from pixelmill.errors import PixelmillError, RateLimits, TransientError, UnknownOutcome, Unreachable, redact
from pixelmill.netpolicy import UnsafeAddress, pinned, public_address, same_origin
from pixelmill.version import VERSION

__all__ = [
    "HttpClient",
    "Reply",
    "decode_base64",
    "never_sent",
    "parse_duration",
    "parse_json",
    "parse_rate_limits",
    "parse_retry_after",
    "sniff_image_mime",
    "transport_error",
]

USER_AGENT = f"pixelmill/{VERSION}"
# Every answer of pixelmill's emulator carries this header (src/pixelmill/testing/exchange.py sends it): images it
# made are a rehearsal's, never done for a run against a real provider.
EMULATOR_HEADER = "x-pixelmill-emulator"
_CHUNK = 1 << 20
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 3


@dataclass(slots=True)
class Reply:
    """A complete HTTP answer: the body is read whole (and bounded) before the connection goes back."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


class HttpClient:
    """One provider's connection pool, opened on first use inside the running event loop.

    `max_connections` bounds open sockets (the engine bounds requests in flight; this only guards against a
    runaway). A client used from a new event loop (a sync facade called twice) opens a new session there."""

    def __init__(self, label: str, *, connect_timeout: float = 30.0, max_connections: int = 1024) -> None:
        self.label = label
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": USER_AGENT},
                # Each call sets its own total; this only stops a forgotten timeout from hanging forever.
                timeout=aiohttp.ClientTimeout(total=3600, sock_connect=self.connect_timeout),
            )
            self._loop = loop
        return self._session

    def timeout(self, total: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total, sock_connect=min(self.connect_timeout, total))

    async def send(
        self,
        method: str,
        url: str,
        *,
        data: bytes | aiohttp.FormData | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        time_limit: float,
        max_bytes: int,
        label: str | None = None,
    ) -> Reply:
        """Send one request and read the whole answer, at most `max_bytes` of it."""
        label = label or self.label
        status = 0
        try:
            async with self.session().request(
                method, url, data=data, headers=headers, params=params, timeout=self.timeout(time_limit),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                body = await _read_bounded(resp, max_bytes, label)
                return Reply(status, resp.headers, body)
        except PixelmillError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if status or never_sent(exc):  # an answer (broken after its status), or nothing sent at all
                raise transport_error(exc, label=label, time_limit=time_limit, maybe_billed=status == 200) from exc
            raise transport_error(exc, label=label, time_limit=time_limit, maybe_billed=True,
                                  unanswered=True) from exc

    async def download_image(
        self, url: str, *, time_limit: float, max_bytes: int, trusted_origin: str | None = None
    ) -> tuple[bytes, str]:
        """Fetch an image the provider answered with as a URL (dall-e `url`). The image was paid for, so every
        failure here is `TransientError(maybe_billed=True)`. Returns the bytes and their sniffed MIME type.

        Sent without credentials. Public addresses only (`pixelmill.netpolicy`), except on `trusted_origin`;
        redirects are followed (at most `MAX_REDIRECTS`), each target checked like the first URL."""
        label = f"{self.label} image download"
        deadline = time.monotonic() + time_limit
        with _download_errors(label, time_limit):
            for _ in range(MAX_REDIRECTS + 1):
                target, headers, server_hostname = await self._aim(url, trusted_origin, label)
                left = max(0.001, deadline - time.monotonic())
                async with self.session().get(target, timeout=self.timeout(left), allow_redirects=False,
                                              headers=headers, server_hostname=server_hostname) as resp:
                    location = resp.headers.get("Location")
                    if resp.status in _REDIRECTS and location:
                        url = _joined(url, location, label)
                        continue
                    if resp.status != 200:
                        raise TransientError(
                            f"{label}: HTTP {resp.status} fetching the generated image (image URLs expire after "
                            "about an hour; ask for b64_json answers to avoid them)",
                            http_status=resp.status, maybe_billed=True,
                        )
                    data = await _read_bounded(resp, max_bytes, label)
                    break
            else:
                raise TransientError(f"{label}: more than {MAX_REDIRECTS} redirects for the generated image",
                                     maybe_billed=True)
        mime = sniff_image_mime(data)
        if mime is None:
            raise TransientError(
                f"{label}: the URL answered {len(data)} bytes that are not a PNG, JPEG, WebP or GIF image",
                maybe_billed=True,
            )
        return data, mime

    async def _aim(self, url: str, trusted_origin: str | None, label: str) -> tuple[str, dict[str, str], str | None]:
        """Where to connect for an answer's image URL: as given on the provider's own server, else the checked
        public address (with the name in the Host header and for TLS)."""
        if not url.startswith(("https://", "http://")):
            raise TransientError(
                f"{label}: the answer's image URL is not http(s); cannot fetch it", maybe_billed=True
            )
        _joined(url, "", label)  # a URL urllib cannot even split is refused here, not deep in aiohttp
        if same_origin(url, trusted_origin):
            return url, {}, None
        try:
            aim = pinned(url, await public_address(urlsplit(url).hostname or ""))
        except (UnsafeAddress, ValueError) as exc:
            raise TransientError(
                f"{label}: the answer's image URL points at a host pixelmill does not fetch from ({exc}); only "
                "public addresses, or the provider's own server, are fetched", maybe_billed=True,
            ) from None
        return aim.url, {"Host": aim.host}, aim.server_hostname

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed and self._loop is asyncio.get_running_loop():
            await session.close()


def _joined(url: str, location: str, label: str) -> str:
    try:
        joined = urljoin(url, location)
        urlsplit(joined).port  # noqa: B018 - raises for a port that is not a number
        return joined
    except ValueError:
        raise TransientError(f"{label}: the image URL (or a redirect) is not a valid URL", maybe_billed=True) from None


async def _read_bounded(resp: aiohttp.ClientResponse, max_bytes: int, label: str) -> bytes:
    """The body, at most `max_bytes` of it as decoded: aiohttp inflates gzip/deflate/br as it reads, and the
    declared length of an encoded body says nothing about what it inflates to, so those are counted chunk by
    chunk and dropped at the bound."""
    declared = resp.content_length
    if declared is not None and declared > max_bytes:
        raise _too_large(label, resp.status, declared, max_bytes)
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if declared is not None and encoding in ("", "identity"):
        return await resp.read()  # exactly `declared` bytes; aiohttp joins the chunks once, no extra copy here
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(label, resp.status, total, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(label: str, status: int, size: int, limit: int) -> TransientError:
    return TransientError(
        f"{label}: answer of more than {limit} bytes (got {size}); refusing to hold it in memory. Raise the "
        "download limit if such images are expected",
        http_status=status or None, maybe_billed=status == 200,
    )


@contextmanager
def _download_errors(label: str, time_limit: float) -> Iterator[None]:
    try:
        yield
    except PixelmillError:
        raise
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise transport_error(exc, label=label, time_limit=time_limit, maybe_billed=True) from exc


def never_sent(exc: BaseException) -> bool:
    """Whether a transport failure happened before the request could reach the server: the connection could
    not be opened (refused, unreachable, DNS, TLS, connect timeout) or the URL is invalid. Nothing was billed."""
    return isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError | aiohttp.InvalidURL)


def transport_error(
    exc: BaseException, *, label: str, time_limit: float, maybe_billed: bool, unanswered: bool = False
) -> TransientError:
    """The `TransientError` for a transport failure. Built from the exception's type, never from its text
    alone: aiohttp puts request URLs (and thus query-string keys) into some messages. `unanswered`: the request
    was sent and no answer began (a timeout while waiting, a reset, the server closing): `UnknownOutcome`."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        what = f"could not connect within {time_limit:g} s; check the base URL and the network"
        if not (maybe_billed or unanswered):
            return Unreachable(f"{label}: {what}", reason=f"no connection within {time_limit:g} s")
    elif isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        what = f"no complete answer within {time_limit:g} s (raise --timeout if the model is slow)"
    elif isinstance(exc, aiohttp.ClientPayloadError):
        what = "the answer was cut off before its end (truncated body)"
        maybe_billed = True
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        what = "the server closed the connection before answering"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        what = f"cannot connect ({_os_reason(exc)}); check the base URL and the network"
        if not (maybe_billed or unanswered):
            return Unreachable(f"{label}: {what}", reason=_unreachable_reason(exc))
    elif isinstance(exc, OSError):  # resets, aiohttp.ClientOSError
        what = f"connection failed ({_os_reason(exc)})"
    else:
        what = f"connection failed ({type(exc).__name__})"
    if unanswered:
        return UnknownOutcome(f"{label}: {what}, after the request was sent: the provider may have billed it")
    return TransientError(f"{label}: {what}", maybe_billed=maybe_billed)


def _unreachable_reason(exc: aiohttp.ClientConnectorError) -> str:
    """Why a connection could not be opened, in a few words, from the exception's type (never its text)."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "host name not found"
    if isinstance(exc, aiohttp.ClientSSLError):  # certificate errors too
        return "TLS handshake failed"
    number = getattr(exc, "errno", None)
    return os.strerror(number).lower() if isinstance(number, int) and number > 0 else _os_reason(exc)


def _os_reason(exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None) or getattr(getattr(exc, "os_error", None), "strerror", None)
    return redact(str(reason)) if reason else type(exc).__name__


def parse_json(
    body: bytes, *, label: str, http_status: int | None = None, request_id: str | None = None
) -> Any:
    """Parse an answer's JSON with orjson. A 2xx that is not JSON was probably billed: `maybe_billed`."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        billed = http_status is not None and 200 <= http_status < 300
        raise TransientError(
            f"{label}: the answer is not valid JSON ({len(body)} bytes: {exc.msg} at byte {exc.pos})",
            http_status=http_status, request_id=request_id, maybe_billed=billed, code="malformed_body",
        ) from None


def decode_base64(text: str | bytes, *, label: str, request_id: str | None = None) -> bytes:
    """Strict base64 decoding (pybase64: ~0.1 ms per MB against 4-7 ms for the standard library). Invalid
    base64 in an image answer means a broken, possibly billed answer."""
    try:
        return pybase64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
        raise TransientError(
            f"{label}: the image in the answer is not valid base64 ({type(exc).__name__})",
            http_status=200, request_id=request_id, maybe_billed=True, code="invalid_base64",
        ) from None


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, else `retry-after` (seconds or an HTTP date). None when absent,
    unreadable or not finite; never negative (a date in the past is 0). How long is too long is the retry
    policy's to decide (engine/retry.py), not the parser's."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        seconds = _finite(raw_ms)
        if seconds is not None:
            return max(0.0, seconds / 1000.0)
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    seconds = _finite(raw)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(raw)
        left = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, left)


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)(ms|h|m|s)")


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: "1s", "6m0s", "120ms", "1h2m3.5s", or plain seconds. None when unreadable."""
    text = text.strip()
    plain = _finite(text)
    if plain is not None:
        return max(0.0, plain)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total = sum(float(number) * scale[unit] for number, unit in parts)
    return total if math.isfinite(total) else None


def parse_rate_limits(headers: Mapping[str, str]) -> RateLimits | None:
    """OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,images,tokens}` headers (limits are per
    minute), or None when the answer has none. Unreadable or non-positive limits are left out, so that a
    gateway's nonsense cannot set a pace."""
    if not any(key.lower().startswith("x-ratelimit-") for key in headers):
        return None
    values: dict[str, float | None] = {}
    for what in ("requests", "images", "tokens"):
        limit = _finite(headers.get(f"x-ratelimit-limit-{what}", "").strip() or "nan")
        remaining = _finite(headers.get(f"x-ratelimit-remaining-{what}", "").strip() or "nan")
        reset_text = headers.get(f"x-ratelimit-reset-{what}")
        values[f"{what}_limit"] = limit if limit is not None and limit > 0 else None
        values[f"{what}_remaining"] = max(0.0, remaining) if remaining is not None else None
        values[f"{what}_reset"] = parse_duration(reset_text) if reset_text else None
    if all(value is None for value in values.values()):
        return None
    return RateLimits(**values)



_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def sniff_image_mime(data: bytes | memoryview) -> str | None:
    """The image type from the first bytes (PNG, JPEG, GIF, WebP), or None."""
    head = bytes(data[:16])
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None
