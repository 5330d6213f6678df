"""Where pixelmill may connect when a URL comes from data rather than from the user: input image URLs in rows
(`pixelmill.reading.images`) and image URLs in a provider's answers (`pixelmill.providers.http`).

The policy: public addresses only. Loopback, private, link-local (cloud metadata services at 169.254.169.254),
shared (100.64/10) and reserved addresses are refused, for every address a name resolves to. The connection
goes to the very address that was checked (`pinned`), never to a second DNS answer (DNS rebinding), with the
name kept for the Host header and TLS. Redirects are the caller's to follow, each target checked again.

Also here: URLs with credentials (`http://user:secret@host/v1`): `strip_userinfo` for anything stored or
shown, `userinfo_secrets` for the redaction of what a server says back.

This module imports nothing of pixelmill: both layers that fetch URLs import it, downward.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["Pinned", "UnsafeAddress", "pinned", "public_address", "same_origin", "strip_userinfo",
           "userinfo_secrets"]


class UnsafeAddress(ValueError):
    """A URL's host is not one pixelmill may connect to. `private` is False when the name did not resolve."""

    def __init__(self, message: str, *, private: bool) -> None:
        super().__init__(message)
        self.private = private


async def public_address(host: str) -> str:
    """The address to connect to for `host`; `UnsafeAddress` when any address it has is not a public one."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        raise UnsafeAddress(f"cannot resolve host {host!r}", private=False) from None
    addresses = []
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if not addr.is_global:
            raise UnsafeAddress(f"{host} is a private or loopback address", private=True)
        addresses.append(str(addr))
    if not addresses:
        raise UnsafeAddress(f"cannot resolve host {host!r}", private=False)
    return addresses[0]


@dataclass(frozen=True, slots=True)
class Pinned:
    """A request aimed at a checked address: `url` names the address, `host` goes in the Host header and
    `server_hostname` is what TLS verifies (None for plain http)."""

    url: str
    host: str
    server_hostname: str | None


def pinned(url: str, address: str) -> Pinned:
    parts = urlsplit(url)
    netloc = f"[{address}]" if ":" in address else address
    if parts.port is not None:
        netloc += f":{parts.port}"
    target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    tls = parts.scheme.lower() == "https"
    return Pinned(target, parts.netloc.rsplit("@", 1)[-1], (parts.hostname or "") if tls else None)


def same_origin(url: str, base: str | None) -> bool:
    """Whether `url` is on the same scheme, host and port as `base` (the provider's own server)."""
    if not base:
        return False
    a, b = urlsplit(url), urlsplit(base)
    try:
        return (a.scheme.lower(), a.hostname, a.port or _default_port(a.scheme)) == (
            b.scheme.lower(), b.hostname, b.port or _default_port(b.scheme))
    except ValueError:  # a port that is not a number
        return False


def _default_port(scheme: str) -> int:
    return 443 if scheme.lower() == "https" else 80


def strip_userinfo(url: str) -> str:
    """`http://user:secret@host/v1` -> `http://host/v1`: the form of a URL that may be stored or shown."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def userinfo_secrets(url: str | None) -> tuple[str, ...]:
    """The credentials a URL carries (the password, raw and decoded, and the whole userinfo), to redact."""
    if not url:
        return ()
    netloc = urlsplit(url).netloc
    if "@" not in netloc:
        return ()
    userinfo = netloc.rsplit("@", 1)[0]
    password = userinfo.partition(":")[2]
    found = [userinfo] + ([password, unquote(password)] if password else [])
    return tuple(dict.fromkeys(s for s in found if len(s) >= 4))
