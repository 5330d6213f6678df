"""Thought signatures the emulator can check without remembering them.

A signature is an HMAC of the part's content (its text, or the digest of its image bytes) under a secret
of the emulator instance: a part sent back unchanged verifies; a stripped, altered or foreign signature, or a
part whose content was changed, does not. The API's bytes fields arrive in standard or URL-safe base64
(google-genai re-encodes with the URL-safe alphabet), so both are read.
"""

from __future__ import annotations

import hashlib
import hmac

import pybase64

_PREFIX = b"pxm1"
_URLSAFE = str.maketrans("-_", "+/")


def decode_bytes(text: str) -> bytes:
    """A proto-JSON bytes field: standard or URL-safe base64, padding optional. Raises ValueError."""
    if "-" in text or "_" in text:
        text = text.translate(_URLSAFE)
    missing = -len(text) % 4
    if missing:
        text += "=" * missing
    return pybase64.b64decode(text, validate=True)


def _mac(secret: bytes, kind: bytes, content: bytes) -> bytes:
    return _PREFIX + hmac.new(secret, kind + b"\0" + content, hashlib.sha256).digest()


def sign_text(secret: bytes, text: str) -> str:
    return pybase64.b64encode(_mac(secret, b"text", text.encode("utf-8"))).decode("ascii")


def sign_image(secret: bytes, digest: bytes) -> str:
    """`digest`: sha256 of the image bytes."""
    return pybase64.b64encode(_mac(secret, b"image", digest)).decode("ascii")


def verify(secret: bytes, signature: str, *, text: str | None = None, image: bytes | None = None) -> bool:
    try:
        given = decode_bytes(signature)
    except ValueError:
        return False
    if text is not None:
        expected = _mac(secret, b"text", text.encode("utf-8"))
    elif image is not None:
        expected = _mac(secret, b"image", hashlib.sha256(image).digest())
    else:
        return False
    return hmac.compare_digest(given, expected)
