"""The emulator's rate limit: requests and images per sliding window, shared by every route.

A rejected request does not count against the window (as with the real APIs, where a 429 is free); the answer
says how long until the window has room again.

Every answer carries OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,images}` headers with OpenAI's
meaning: limit and remaining per minute (a window shorter than a minute, used to keep tests short, is stated
as its per-minute equivalent: 60 per 3 s is a limit of 1200), reset the time until the window is empty again.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Verdict:
    retry_after: float | None  # None: allowed
    what: str  # "requests" or "images": which limit was hit (or is closest)
    headers: dict[str, str]


class SlidingWindow:
    def __init__(self) -> None:
        self._requests: deque[float] = deque()
        self._images: deque[tuple[float, int]] = deque()
        self._image_total = 0

    def reset(self) -> None:
        self._requests.clear()
        self._images.clear()
        self._image_total = 0

    def check(self, now: float, images: int, rpm: int | None, ipm: int | None, window: float) -> Verdict:
        """Admit a request of `images` images, or say how long to wait."""
        start = now - window
        while self._requests and self._requests[0] <= start:
            self._requests.popleft()
        while self._images and self._images[0][0] <= start:
            self._image_total -= self._images.popleft()[1]
        wait: float | None = None
        what = "requests"
        if rpm is not None and len(self._requests) >= rpm:
            # Room again once enough of the oldest requests have left the window.
            wait = self._requests[len(self._requests) - rpm] + window - now
        if ipm is not None and self._image_total + images > ipm:
            need = self._image_total + images - ipm
            freed = 0
            until = now
            for at, count in self._images:
                freed += count
                until = at + window
                if freed >= need:
                    break
            image_wait = until - now if images <= ipm else window
            if wait is None or image_wait > wait:
                wait, what = image_wait, "images"
        if wait is not None:
            return Verdict(max(wait, 0.001), what, self._headers(now, rpm, ipm, window))
        self._requests.append(now)
        if images:
            self._images.append((now, images))
            self._image_total += images
        return Verdict(None, what, self._headers(now, rpm, ipm, window))

    def _headers(self, now: float, rpm: int | None, ipm: int | None, window: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        scale = 60.0 / window  # to per minute
        if rpm is not None:
            reset = (self._requests[-1] + window - now) if self._requests else 0.0
            headers["x-ratelimit-limit-requests"] = _count(rpm * scale)
            headers["x-ratelimit-remaining-requests"] = _count(max(0, rpm - len(self._requests)) * scale)
            headers["x-ratelimit-reset-requests"] = _reset_text(reset)
        if ipm is not None:
            reset = (self._images[-1][0] + window - now) if self._images else 0.0
            headers["x-ratelimit-limit-images"] = _count(ipm * scale)
            headers["x-ratelimit-remaining-images"] = _count(max(0, ipm - self._image_total) * scale)
            headers["x-ratelimit-reset-images"] = _reset_text(reset)
        return headers


def _count(value: float) -> str:
    return str(math.floor(value + 1e-9))


def _reset_text(seconds: float) -> str:
    """OpenAI's reset format: "1s", "6m0s", "120ms"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
