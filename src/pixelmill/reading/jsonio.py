"""JSON in and out of datasets: orjson on the hot path, the standard library for what orjson cannot do.

orjson reads an integer beyond 64 bits as a float and refuses to write one; users' ids can be such numbers, and
a row must come out exactly as it went in. Such values are rare, so the fast path stays fast.

Writing never fails on text that is not valid Unicode (a lone surrogate, from a hostile server's header or a
file name): such characters are written as U+FFFD, so that every line pixelmill writes is valid UTF-8 JSON
that any reader accepts. Input rows holding them are refused when read (`rows.checked`), so no user data is
altered by this.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_NUMBER = re.compile(rb"\d{19,}")
SURROGATE = re.compile("[\ud800-\udfff]")


def loads(data: bytes) -> Any:
    if _LONG_NUMBER.search(data):
        return json.loads(data)  # exact big integers
    return orjson.loads(data)


def dumps(value: Any, *, sort_keys: bool = False, newline: bool = False) -> bytes:
    option = (orjson.OPT_SORT_KEYS if sort_keys else 0) | (orjson.OPT_APPEND_NEWLINE if newline else 0)
    try:
        return orjson.dumps(value, default=fallback, option=option)
    except TypeError:  # an integer beyond 64 bits, a lone surrogate, nesting beyond orjson's 254 levels
        text = json.dumps(value, default=fallback, sort_keys=sort_keys, ensure_ascii=False, separators=(",", ":"))
        return SURROGATE.sub("\ufffd", text).encode("utf-8") + (b"\n" if newline else b"")


def fallback(value: Any) -> Any:
    """What orjson cannot write itself: bytes (Parquet binary columns) as base64, anything else as its text."""
    if isinstance(value, bytes | bytearray):
        import pybase64

        return pybase64.b64encode(value).decode()
    return str(value)
