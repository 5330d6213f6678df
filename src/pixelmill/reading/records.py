"""Reading sources as a stream of records, record keys, prompts and conversation turns.

A source is never loaded whole: JSONL is read line by line, JSON arrays element by element (`jsonsource`), CSV
row by row (`csvsource`) and Parquet batch by batch. Every record keeps its position (`index`), so the output
can be rebuilt in input order by reading the source again beside the journal. A row that cannot be read or used
(broken syntax, text that is not valid Unicode, a value no writer can hold) is still a record, with `error` set
naming the row and the field (`rows.checked`): it becomes a failed row in the output, never a silent gap and
never an exception that ends the run.
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelmill.errors import ConfigError, InputError
from pixelmill.reading import jsonio
from pixelmill.reading.csvsource import read_csv
from pixelmill.reading.hfsource import is_saved_dataset, read_hf
from pixelmill.reading.jsonsource import MAX_LINE_BYTES, read_json_array, read_jsonl
from pixelmill.reading.rows import Record, checked

# The names other modules import from here.
__all__ = ["KEY_MAX", "MAX_LINE_BYTES", "Record", "Turn", "default_key", "read_records", "render_template",
           "sanitize_key", "source_format", "template_fields", "user_turns"]
_read_json_array = read_json_array

KEY_MAX = 80


SOURCE_FORMATS = ("jsonl", "json", "csv", "parquet", "hf")


def source_format(path: Path, explicit: str | None = None) -> str:
    if str(path).startswith("hf:") or is_saved_dataset(path):
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


def read_records(path: Path, fmt: str | None = None) -> Generator[Record, None, None]:
    """Yield every record of the source, in order."""
    fmt = source_format(path, fmt)
    if fmt == "hf":
        yield from read_hf(str(path))
        return
    if not path.exists():
        raise ConfigError(f"input file {path} does not exist")
    if fmt == "jsonl":
        yield from read_jsonl(path)
    elif fmt == "json":
        yield from read_json_array(path)
    elif fmt == "csv":
        yield from read_csv(path)
    else:
        yield from _read_parquet(path)


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        try:
            rows: list[Any] = batch.to_pylist()
        except Exception:  # pyarrow raises many types; each row is converted alone below
            rows = [None] * batch.num_rows
        for i, row in enumerate(rows):
            where = f"row {index}"
            if row is None:
                problem = _parquet_row_problem(batch, i)
                if problem is not None:
                    yield Record(index, None, None, f"{where}: {problem}")
                    index += 1
                    continue
                row = batch.slice(i, 1).to_pylist()[0]
            yield checked(index, row, where)
            index += 1


def _parquet_row_problem(batch: Any, i: int) -> str | None:
    """Why one row of a batch cannot become Python values (text that is not UTF-8, a date out of range...)."""
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            column[i].as_py()
        except Exception as exc:  # as above
            return f"field {name!r} cannot be read ({type(exc).__name__}: {exc})"
    return None


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
                text = part.get("text")
                if text is None:  # a null part adds nothing (never the word "None")
                    continue
                if not isinstance(text, str):
                    raise InputError(f"{where}: a text part must hold text, got {type(text).__name__}",
                                     field=where.split("[", 1)[0])
                texts.append(text)
            elif kind in ("image_url", "image") or "image_url" in part:
                ref = part.get("image_url", part.get("image"))
                images.append(ref.get("url") if isinstance(ref, dict) and "url" in ref else ref)
    return ("\n".join(texts) if texts else None), images
