"""Reading sources as a stream of records, record keys, prompts and conversation turns.

A source is never loaded whole: JSONL is read line by line, JSON arrays element by element, CSV row by row and
Parquet batch by batch. Every record keeps its position (`index`), so the output can be rebuilt in input order
by reading the source again beside the journal. A line that cannot be parsed is still a record, with `error`
set: it becomes a failed row in the output, never a silent gap.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
import string
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pixelmill.errors import ConfigError, InputError
from pixelmill.reading import jsonio

MAX_LINE_BYTES = 256 * 1024 * 1024  # a line longer than this is a failed row, not a memory blow-up
KEY_MAX = 80


@dataclass(slots=True)
class Record:
    index: int  # position in the source, 0-based, bad lines included
    data: dict[str, Any] | None
    line: int | None = None  # 1-based line number (JSONL) for messages
    error: str | None = None  # why the record could not be read

    def digest(self) -> str:
        """A fingerprint of the row's content: a resume recognises a row that changed since the last run."""
        payload = jsonio.dumps(self.data, sort_keys=True) if self.data is not None else (self.error or "").encode()
        return hashlib.blake2b(payload, digest_size=10).hexdigest()

    def id_value(self, id_field: str | None) -> Any:
        """The row's `id_field` value, or None when it has none (missing, null or blank)."""
        if not id_field or self.data is None:
            return None
        value = self.data.get(id_field)
        return value if value is not None and str(value).strip() else None

    def key(self, id_field: str | None) -> str:
        """The stem its image files would like: its sanitised id, else `row<index>`."""
        value = self.id_value(id_field)
        return sanitize_key(value) if value is not None else default_key(self.index)

    def identity(self, id_field: str | None) -> str:
        """How a resume finds this row's results wherever it moved: its id when it has one, else its content."""
        value = self.id_value(id_field)
        if value is not None:
            return "id:" + jsonio.dumps(value).decode("utf-8", "replace")
        return "content:" + self.digest()


SOURCE_FORMATS = ("jsonl", "json", "csv", "parquet", "hf")


def source_format(path: Path, explicit: str | None = None) -> str:
    if str(path).startswith("hf:") or (path.is_dir() and (path / "dataset_info.json").exists()) or \
            (path.is_dir() and (path / "dataset_dict.json").exists()):
        return "hf"
    if explicit:
        if explicit not in SOURCE_FORMATS:
            raise ConfigError(f"unknown source format {explicit!r}; use one of {', '.join(SOURCE_FORMATS)}")
        return explicit
    suffix = path.suffix.lower().lstrip(".")
    fmt = {"jsonl": "jsonl", "ndjson": "jsonl", "json": "json", "csv": "csv", "parquet": "parquet"}.get(suffix)
    if fmt is None:
        raise ConfigError(
            f"cannot tell the format of {path} from its extension; name it .jsonl, .json, .csv or .parquet"
        )
    return fmt


def read_records(path: Path, fmt: str | None = None) -> Iterator[Record]:
    """Yield every record of the source, in order."""
    fmt = source_format(path, fmt)
    if fmt == "hf":
        yield from _read_hf(str(path))
        return
    if not path.exists():
        raise ConfigError(f"input file {path} does not exist")
    if fmt == "jsonl":
        yield from _read_jsonl(path)
    elif fmt == "json":
        yield from _read_json_array(path)
    elif fmt == "csv":
        yield from _read_csv(path)
    else:
        yield from _read_parquet(path)


def _read_jsonl(path: Path) -> Iterator[Record]:
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


def _lines(f: Any) -> Iterator[bytes]:
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
    try:
        value = jsonio.loads(text)
    except (orjson.JSONDecodeError, ValueError) as exc:
        try:
            text.decode("utf-8")
        except UnicodeDecodeError:
            return Record(index, None, number, f"line {number}: not valid UTF-8 text")
        return Record(index, None, number, f"line {number}: not valid JSON ({exc})")
    if not isinstance(value, dict):
        return Record(index, None, number, f"line {number}: expected a JSON object, got {type(value).__name__}")
    return Record(index, value, number)


def _read_json_array(path: Path, chunk: int = 1 << 20) -> Iterator[Record]:
    """Stream the elements of a top-level JSON array without loading the file."""
    try:
        yield from _json_elements(path, chunk)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 text (byte {exc.start} of a block); save it as UTF-8") from None


def _json_elements(path: Path, chunk: int) -> Iterator[Record]:
    decoder = json.JSONDecoder()
    index = 0
    with path.open("r", encoding="utf-8-sig") as f:
        buf = f.read(chunk)
        pos = _skip_ws(buf, 0)
        if pos >= len(buf) or buf[pos] != "[":
            raise ConfigError(f"{path}: a .json input must be an array of objects (or use .jsonl)")
        pos += 1
        eof = False
        while True:
            pos = _skip_ws(buf, pos)
            while pos >= len(buf) and not eof:
                more = f.read(chunk)
                eof = not more
                buf, pos = buf[pos:] + more, 0
                pos = _skip_ws(buf, pos)
            if pos >= len(buf):
                raise ConfigError(f"{path}: the JSON array is not closed")
            if buf[pos] == "]":
                return
            if buf[pos] == ",":
                pos += 1
                continue
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as exc:
                    if eof:
                        raise ConfigError(f"{path}: element {index} is not valid JSON ({exc.msg})") from None
                    more = f.read(chunk)
                    eof = not more
                    buf, pos = buf[pos:] + more, 0
            pos = end
            if isinstance(value, dict):
                yield Record(index, value)
            else:
                yield Record(index, None, None, f"element {index}: expected a JSON object")
            index += 1


def _skip_ws(buf: str, pos: int) -> int:
    while pos < len(buf) and buf[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_csv(path: Path) -> Iterator[Record]:
    import csv

    # Bytes that are not UTF-8 survive as surrogates, so that one bad row fails alone instead of the run.
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        for index, row in enumerate(reader):
            if any(_has_surrogates(v) for v in (*row.values(), *row.keys()) if isinstance(v, str)):
                yield Record(index, None, reader.line_num, f"line {reader.line_num}: not valid UTF-8 text")
            else:
                yield Record(index, dict(row), reader.line_num)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield Record(index, row)
            index += 1


def _read_hf(source: str) -> Iterator[Record]:
    """A Hugging Face dataset: `hf:name:split` from the hub (streamed), or a folder saved with `save_to_disk`.
    Image columns arrive as {"bytes", "path"} dicts, which input-image loading understands."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("Hugging Face sources need the datasets package: pip install 'pixelmill[hf]'") from None
    if source.startswith("hf:"):
        name, _, split = source[3:].partition(":")
        try:
            data: Any = datasets.load_dataset(name, split=split or "train", streaming=True)
        except Exception as exc:  # the hub client raises many types; all mean "cannot read it"
            raise ConfigError(f"cannot load {name!r} (split {split or 'train'!r}) from the Hugging Face hub: "
                              f"{type(exc).__name__}: {exc}. Check the name and the network, or save the "
                              "dataset to disk and point `source` at that folder.") from None
    else:
        loaded = datasets.load_from_disk(source)
        if isinstance(loaded, datasets.DatasetDict):
            raise ConfigError(f"{source} holds several splits ({', '.join(loaded)}); point at one split's folder")
        data = loaded
    data = _hf_images_as_dicts(data)
    for index, row in enumerate(data):
        yield Record(index, dict(row))


def _hf_images_as_dicts(data: Any) -> Any:
    """Keep `Image` columns undecoded ({"bytes", "path"}), so no pixels are decoded to read a row."""
    import datasets

    features = getattr(data, "features", None) or {}
    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            data = data.cast_column(name, datasets.Image(decode=False))
    return data


# ---------------------------------------------------------------- record keys

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_key(value: object) -> str:
    """A file-name-safe key from an id: no path separators, no `..`, no leading dot, bounded length.
    Long ids keep a hash of the whole so that two long ids sharing a prefix stay apart."""
    text = unicodedata.normalize("NFKC", str(value))
    safe = _UNSAFE.sub("_", text).strip("._-")
    safe = re.sub(r"\.{2,}", "_", safe)
    if len(safe) > KEY_MAX:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        safe = safe[: KEY_MAX - 13].rstrip("._-") + "-" + digest
    return safe or "_"


def default_key(index: int) -> str:
    return f"row{index:06d}"


# ---------------------------------------------------------------- prompts and turns

_FORMATTER = string.Formatter()


def template_fields(template: str) -> list[str]:
    """The field names a template uses. Only plain names: attribute and index access (`{x.y}`, `{x[0]}`)
    and conversions are refused, so that a template can read a field but never reach into objects."""
    names: list[str] = []
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ConfigError(f"template {template!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or not re.fullmatch(r"[^.\[\]{}!:]+", name) or spec or conversion:
            raise ConfigError(
                f"template {template!r}: placeholder {{{name}}} must be a plain field name like {{product}}"
            )
        names.append(name)
    return names


def render_template(template: str, data: dict[str, Any]) -> str:
    out: list[str] = []
    for literal, name, _, _ in _FORMATTER.parse(template):
        out.append(literal)
        if name is None:
            continue
        if name not in data or data[name] is None:
            raise InputError(f"prompt template needs field {name!r}, which this row lacks", field=name)
        value = data[name]
        out.append(value if isinstance(value, str) else jsonio.dumps(value).decode())
    return "".join(out)


@dataclass(slots=True)
class Turn:
    prompt: str
    images: list[Any]  # image references of this turn (paths, URLs, data URLs), resolved later


def user_turns(data: dict[str, Any], *, prompt_field: str | None, template: str | None) -> list[Turn]:
    """The turns of a row: one for a plain prompt; one per user message of a conversation.

    Precedence: a template; else `prompt_field`; else `prompt`; else `conversations` / `conversation`."""
    if template is not None:
        return [Turn(_check_prompt(render_template(template, data), "prompt template"), [])]
    if prompt_field is not None:
        return [Turn(_check_prompt(data.get(prompt_field), prompt_field, missing=prompt_field not in data), [])]
    if "prompt" in data:
        return [Turn(_check_prompt(data["prompt"], "prompt"), [])]
    for name in ("conversations", "conversation"):
        if name in data:
            return _conversation_turns(data[name], name)
    raise InputError("row has no prompt: give a 'prompt' or 'conversations' field, or --prompt-field", field="prompt")


def _check_prompt(value: object, field: str, *, missing: bool = False) -> str:
    if missing:
        raise InputError(f"row has no field {field!r} for the prompt", field=field)
    if not isinstance(value, str):
        raise InputError(f"field {field!r} must be text, got {type(value).__name__}", field=field)
    if not value.strip():
        raise InputError(f"field {field!r} is blank", field=field)
    return value


def _conversation_turns(messages: object, field: str) -> list[Turn]:
    if not isinstance(messages, list):
        raise InputError(f"field {field!r} must be a list of {{role, content}} messages", field=field)
    turns: list[Turn] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InputError(f"{field}[{i}] must be an object with role and content", field=field)
        role = message.get("role", message.get("from", "user"))
        if role not in ("user", "human"):
            continue
        text, images = _message_content(message.get("content", message.get("value")), f"{field}[{i}]")
        turns.append(Turn(_check_prompt(text, f"{field}[{i}].content"), images))
    if not turns:
        raise InputError(f"field {field!r} has no user message", field=field)
    return turns


def _message_content(content: object, where: str) -> tuple[object, list[Any]]:
    """Text and image references of a message whose content is a string or a list of typed parts."""
    if isinstance(content, str) or content is None:
        return content, []
    if not isinstance(content, list):
        return content, []
    texts: list[str] = []
    images: list[Any] = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict):
            kind = part.get("type")
            if kind == "text" or (kind is None and "text" in part):
                texts.append(str(part.get("text", "")))
            elif kind in ("image_url", "image") or "image_url" in part:
                ref = part.get("image_url", part.get("image"))
                images.append(ref.get("url") if isinstance(ref, dict) and "url" in ref else ref)
    return ("\n".join(texts) if texts else None), images
