"""Generated media that remote-job APIs hand out as URLs (fal's CDN, replicate.delivery, BFL's signed blobs).

Each object lives until its own expiry (monotonic seconds; None: for the emulator's lifetime). The routes serve
them on CDN-like paths that take no key, and log whether a request carried one anyway, so a test can prove that
a client never sends its API key to a media URL.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

MEDIA_KEPT = 50_000  # the oldest objects are forgotten past this (their URLs then 404)


@dataclass(frozen=True, slots=True)
class MediaObject:
    data: bytes
    mime: str
    expires: float | None


class MediaStore:
    def __init__(self) -> None:
        self._objects: dict[str, MediaObject] = {}
        self._lock = threading.Lock()

    def put(self, data: bytes, mime: str, ext: str, expires: float | None) -> str:
        """Keep `data`; returns its new name (`<random>.<ext>`)."""
        name = f"{secrets.token_hex(12)}.{ext}"
        with self._lock:
            self._objects[name] = MediaObject(data, mime, expires)
            while len(self._objects) > MEDIA_KEPT:
                self._objects.pop(next(iter(self._objects)))
        return name

    def get(self, name: str, now: float | None = None) -> MediaObject | None:
        """The object, or None when it never existed or has expired."""
        with self._lock:
            found = self._objects.get(name)
        if found is None:
            return None
        if found.expires is not None and (time.monotonic() if now is None else now) >= found.expires:
            return None
        return found

    def clear(self) -> None:
        with self._lock:
            self._objects.clear()

    def expire(self, name: str) -> None:
        with self._lock:
            self._objects.pop(name, None)
