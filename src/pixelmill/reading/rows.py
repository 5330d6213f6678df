"""One record of a source, and the checks that make every record safe for the rest of the run.

A reader hands each parsed row to `checked()`, which either returns a record whose data the journal, the
output writers and the providers can all handle, or a record with `error` set naming the row and the field:
text that is not valid Unicode (a lone surrogate like `"\\ud800"`, or bytes that are not UTF-8), nesting
deeper than `MAX_DEPTH`. A bad row thus becomes one failed row; it never raises later, in the middle of the
run, where it would end the run and every re-run at the same row.

The row's fingerprint (`digest`) is computed once here, from the same serialisation that proves the row is
writable, so the check costs no extra pass on the common path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from pixelmill.reading import jsonio

# Rows nested deeper than this are refused: orjson writes up to 254 levels, the standard library's encoder
# (the fallback) is bounded by Python's recursion limit, which the engine's own frames share.
MAX_DEPTH = 500


@dataclass(slots=True)
class Record:
    index: int  # position in the source, 0-based, bad lines included
    data: dict[str, Any] | None
    line: int | None = None  # 1-based line number (JSONL, CSV) for messages
    error: str | None = None  # why the record could not be read
    fingerprint: str | None = field(default=None, repr=False)  # digest(), when the reader computed it

    def digest(self) -> str:
        """A fingerprint of the row's content: a resume recognises a row that changed since the last run."""
        if self.fingerprint is None:
            payload = jsonio.dumps(self.data, sort_keys=True) if self.data is not None \
                else (self.error or "").encode()
            self.fingerprint = _hash(payload)
        return self.fingerprint


def _hash(payload: bytes) -> str:
    return hashlib.blake2b(payload, digest_size=10).hexdigest()


def checked(index: int, data: dict[str, Any], where: str, line: int | None = None) -> Record:
    """The record of a parsed row, or a failed record saying `where` (e.g. "line 3") and which field is bad."""
    try:
        # The fast path of jsonio.dumps: when it succeeds the row holds no surrogate and is not too deep.
        payload = orjson.dumps(data, default=jsonio.fallback, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # a surrogate, nesting beyond orjson's limit, or an integer beyond 64 bits
        problem = row_problem(data)
        if problem is not None:
            return Record(index, None, line, f"{where}: {problem}")
        payload = jsonio.dumps(data, sort_keys=True)  # integers beyond 64 bits: exact, through the stdlib
    return Record(index, data, line, None, _hash(payload))


def row_problem(data: Any) -> str | None:
    """What makes a row unusable, naming the field (`conversations[0].content`), or None. Iterative: a deep
    row cannot exhaust the stack while it is being checked."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"field {_top(path)!r} is nested more than {MAX_DEPTH} levels deep"
        if isinstance(value, str):
            if not _encodable(value):
                return f"field {path or '(row)'!r} {_NOT_TEXT}"
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                if not isinstance(key, str):
                    return f"field {path or '(row)'!r} has a key that is not text ({key!r})"
                if not _encodable(key):
                    return f"a field name {'in ' + repr(path) + ' ' if path else ''}{_NOT_TEXT}"
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list | tuple):
            for i in range(len(value) - 1, -1, -1):
                stack.append((value[i], f"{path}[{i}]", depth + 1))
    return None


_NOT_TEXT = "is not valid UTF-8 text (bytes that are not UTF-8, or a lone surrogate such as \\ud800); fix or " \
    "remove it"


def _top(path: str) -> str:
    return path.split(".", 1)[0].split("[", 1)[0] or "(row)"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
