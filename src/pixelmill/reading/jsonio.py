"""JSON in and out of datasets: orjson on the hot path, the standard library for what orjson cannot do.

orjson reads an integer beyond 64 bits as a float and refuses to write one; users' ids can be such numbers, and
a row must come out exactly as it went in. Such values are rare, so the fast path stays fast.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_NUMBER = re.compile(rb"\d{19,}")


def loads(data: bytes) -> Any:
    if _LONG_NUMBER.search(data):
        return json.loads(data)  # exact big integers
    return orjson.loads(data)


def dumps(value: Any, *, sort_keys: bool = False, newline: bool = False) -> bytes:
    option = (orjson.OPT_SORT_KEYS if sort_keys else 0) | (orjson.OPT_APPEND_NEWLINE if newline else 0)
    try:
        return orjson.dumps(value, default=_fallback, option=option)
    except TypeError:  # an integer beyond 64 bits
        text = json.dumps(value, default=_fallback, sort_keys=sort_keys, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", "surrogatepass") + (b"\n" if newline else b"")


def _fallback(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        import pybase64

        return pybase64.b64encode(value).decode()
    return str(value)
