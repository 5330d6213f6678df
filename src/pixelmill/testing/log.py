"""The emulator's request log: one record per request, for tests and benchmarks to assert on.

Records never hold an API key: only whether one was sent and whether it was accepted. Times are
`time.monotonic()` seconds (one clock for every process on the machine), so a client can replay them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

_SECRET_HEADERS = frozenset({"authorization", "api-key", "x-goog-api-key", "x-key", "cookie", "proxy-authorization"})


@dataclass(slots=True)
class RequestRecord:
    id: str  # the x-request-id the emulator answered with
    seq: int  # 1-based order of arrival
    family: str  # openai | azure | gemini | fal | replicate | bfl | hf | files | media | other
    # generations | edits | variations | models | generateContent | files | unknown; remote jobs: submit | status |
    # result | cancel | list | media (the CDN-like media paths)
    endpoint: str
    method: str
    path: str  # without the query string (which may hold ?key=)
    started: float  # monotonic seconds when the request arrived
    finished: float | None = None  # when the answer was sent (None while in flight)
    status: int | None = None  # HTTP status; None while in flight or when the connection was cut (reset)
    fault: str | None = None  # the injected fault, if any
    error_code: str | None = None  # the error's code (e.g. model_not_found, RESOURCE_EXHAUSTED, invalid_value)
    error_message: str | None = None
    model: str | None = None
    deployment: str | None = None  # Azure deployment name
    api_version: str | None = None  # Azure api-version
    prompt: str | None = None  # the prompt (the last user text for Gemini), cut to 1,000 characters
    n: int | None = None
    size: str | None = None  # as asked (OpenAI size, or Gemini "aspectRatio/imageSize")
    quality: str | None = None
    output_format: str | None = None
    input_images: int = 0
    mask: bool = False
    images: int = 0  # images returned (thought drafts not counted)
    thoughts: int = 0  # Gemini thought parts returned
    latency: float = 0.0  # the delay the emulator applied on purpose
    auth: str = "missing"  # missing | valid | invalid
    key_sent: bool = False  # the request carried a credential (any key header, `?key=`): media must not
    job: str | None = None  # remote jobs: the job (fal request, Replicate prediction, BFL task) it concerns
    content_type: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # request headers without credentials

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else self.finished - self.started


Filter = Callable[[Any], bool] | object


def public_headers(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _SECRET_HEADERS}


def carries_key(headers: Any, query: Any) -> bool:
    """Whether a request carries a credential anywhere the APIs put one."""
    return any(k.lower() in _SECRET_HEADERS and k.lower() != "cookie" for k in headers) or "key" in query


class RequestLog:
    def __init__(self, limit: int) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=limit or None)

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(list(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def append(self, record: RequestRecord) -> None:
        self._records.append(record)

    def clear(self) -> None:
        self._records.clear()

    def resize(self, limit: int) -> None:
        if self._records.maxlen != (limit or None):
            self._records = deque(self._records, maxlen=limit or None)

    def select(self, **filters: Filter) -> list[RequestRecord]:
        """Records whose fields equal the given values; a callable value is a predicate on the field."""
        out = []
        for record in list(self._records):
            for name, want in filters.items():
                value = getattr(record, name)
                if callable(want):
                    if not want(value):
                        break
                elif value != want:
                    break
            else:
                out.append(record)
        return out
