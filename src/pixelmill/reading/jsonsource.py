"""JSON sources, streamed: JSONL line by line, a JSON array element by element.

Whatever a line or an element holds, it becomes one record: a broken line, a value that is not an object, text
that is not valid Unicode or nesting too deep for the writers is a record with `error` set, naming the line (or
element) and the field. A broken element of an array is skipped up to the next top-level `,` or `]`, so the
elements after it are still read. Only a .json file that is not an array at all, or not UTF-8, is a
`ConfigError`, raised before its first element is read.
"""

from __future__ import annotations

import codecs
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pixelmill.errors import ConfigError
from pixelmill.reading import jsonio
from pixelmill.reading.rows import Record, checked, row_problem

MAX_LINE_BYTES = 256 * 1024 * 1024  # a line longer than this is a failed row, not a memory blow-up


def read_jsonl(path: Path) -> Iterator[Record]:
    index = 0
    with path.open("rb") as f:
        for number, raw in enumerate(_lines(f), start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if isinstance(raw, _TooLong):
                yield Record(index, None, number, f"line {number}: longer than {MAX_LINE_BYTES} bytes")
                index += 1
                continue
            text = raw.strip()
            if not text:
                continue
            yield _parse_line(index, number, text)
            index += 1


class _TooLong(bytes):
    pass


def _lines(f: IO[bytes]) -> Iterator[bytes]:
    """Lines of a binary file, each bounded in size: an oversized line is reported, not held in memory."""
    while True:
        line = f.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while True:  # skip the rest of the oversized line
                rest = f.readline(1024 * 1024)
                if not rest or rest.endswith(b"\n"):
                    break
            yield _TooLong(b"")
            continue
        yield line


def _parse_line(index: int, number: int, text: bytes) -> Record:
    where = f"line {number}"
    try:
        value = jsonio.loads(text)
    except (ValueError, RecursionError) as exc:  # orjson's error is a ValueError; the stdlib may recurse
        return Record(index, None, number, f"{where}: {_why_not_json(text, exc)}")
    if not isinstance(value, dict):
        return Record(index, None, number, f"{where}: expected a JSON object, got {type(value).__name__}")
    return checked(index, value, where, number)


def _why_not_json(text: bytes, exc: BaseException) -> str:
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return "not valid UTF-8 text"
    if isinstance(exc, RecursionError):
        return "not valid JSON (nested too deeply)"
    if "integer string conversion" in str(exc):  # Python's guard against quadratic int parsing
        named = _HUGE_NUMBER.search(text)
        field = f"field {named.group(1).decode(errors='replace')!r}" if named else "a field"
        return f"{field} holds a number of more than {sys.get_int_max_str_digits()} digits"
    # orjson refuses a lone surrogate escape ("\ud800"), which is valid JSON syntax: name the field that holds it.
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        value = None
    problem = row_problem(value) if isinstance(value, dict) else None
    return problem or f"not valid JSON ({exc})"


_HUGE_NUMBER = re.compile(rb'"((?:[^"\\]|\\.){1,200})"\s*:\s*-?\d{1000}')


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def read_json_array(path: Path, chunk: int = 1 << 20) -> Iterator[Record]:
    """Stream the elements of a top-level JSON array without loading the file."""
    _check_utf8(path, chunk)
    decoder = json.JSONDecoder(parse_constant=_no_constant)
    with path.open("r", encoding="utf-8-sig") as f:
        reader = _Buffer(f, chunk)
        reader.skip_ws()
        if reader.at_end() or reader.char() != "[":
            raise ConfigError(f"{path}: a .json input must be an array of objects (or use .jsonl)")
        reader.pos += 1
        index = 0
        broken_to_end = False
        while True:
            reader.skip_ws()
            if reader.at_end():
                if not broken_to_end:  # a truncated file: say so in a row of its own rather than end silently
                    yield Record(index, None, None, f"element {index}: the file ends before the JSON array is "
                                 "closed (a truncated file?)")
                return
            if reader.char() == "]":
                return
            if reader.char() == ",":
                reader.pos += 1
                continue
            where = f"element {index}"
            try:
                value = reader.decode(decoder)
            except (ValueError, RecursionError) as exc:
                reason = "nested too deeply" if isinstance(exc, RecursionError) else \
                    getattr(exc, "msg", str(exc))
                reader.skip_element()
                broken_to_end = reader.at_end()
                yield Record(index, None, None, f"{where}: not valid JSON ({reason})")
            else:
                broken_to_end = False
                if isinstance(value, dict):
                    yield checked(index, value, where)
                else:
                    yield Record(index, None, None, f"{where}: expected a JSON object, got {type(value).__name__}")
            index += 1


def _check_utf8(path: Path, chunk: int) -> None:
    """Refuse a file that is not UTF-8 before its first element is read, so before anything is sent: in an
    array, unlike JSONL, bytes that are not text leave no line to fail alone (one pass, at C speed)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as f:
        while True:
            data = f.read(chunk)
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{path}: not valid UTF-8 text (at byte {offset + exc.start}); save it as UTF-8, "
                                  "or use .jsonl, where only the line holding it fails") from None
            if not data:
                return
            offset += len(data)


class _Buffer:
    """A window on a text file that grows by `chunk` characters when a value does not fit in it yet."""

    def __init__(self, f: IO[str], chunk: int) -> None:
        self.f = f
        self.chunk = chunk
        self.buf = f.read(chunk)
        self.pos = 0
        self.eof = not self.buf

    def more(self) -> bool:
        if self.eof:
            return False
        data = self.f.read(self.chunk)
        self.eof = not data
        self.buf, self.pos = self.buf[self.pos :] + data, 0
        return bool(data)

    def at_end(self) -> bool:
        return self.pos >= len(self.buf) and not self.more()

    def char(self) -> str:
        return self.buf[self.pos]

    def skip_ws(self) -> None:
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf) or not self.more():
                return

    def decode(self, decoder: json.JSONDecoder) -> Any:
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # An error at the window's end may only mean the element goes on in the next chunk; one before
                # it is a broken element, found without reading the rest of the file.
                cut = exc.pos >= len(self.buf) - 16 or exc.msg.startswith("Unterminated string")
                if cut and self.more():
                    continue
                raise
            if end >= len(self.buf) and self.more():  # a number cut by the chunk's end: read it whole
                continue
            self.pos = end
            return value

    def skip_element(self) -> None:
        """Move past a broken element: to the next `,` or `]` outside strings and brackets (or the end)."""
        depth, in_string, escaped = 0, False, False
        while True:
            while self.pos < len(self.buf):
                c = self.buf[self.pos]
                if in_string:
                    if escaped:
                        escaped = False
                    elif c == "\\":
                        escaped = True
                    elif c == '"':
                        in_string = False
                elif c == '"':
                    in_string = True
                elif c in "[{":
                    depth += 1
                elif c in "]}":
                    if depth == 0:
                        return
                    depth -= 1
                elif c == "," and depth == 0:
                    return
                self.pos += 1
            if not self.more():
                return
