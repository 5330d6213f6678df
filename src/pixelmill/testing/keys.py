"""Where each API carries its key, and which API a request speaks by its key.

OpenAI sends `Authorization: Bearer`, Azure `api-key` (or a bearer token), Gemini `x-goog-api-key` or `?key=`.
`GET /v1/models` is a path of both OpenAI and Gemini (google-genai 3.x defaults to v1): the key's place tells
them apart, which is why this is shared rather than owned by one API's routes.
"""

from __future__ import annotations

from aiohttp import web


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def gemini_key(request: web.Request) -> str | None:
    return request.headers.get("x-goog-api-key") or request.query.get("key")


def wants_gemini(request: web.Request) -> bool:
    """A request that carries a Gemini key (header or `?key=`) and no OpenAI bearer token."""
    return ("x-goog-api-key" in request.headers or "key" in request.query) and "Authorization" not in request.headers
