"""The engine's input for one operator run: one request record per DataFlow sample, kept stable across re-runs.

The engine's journal knows rows by their position in its input, so a position must never come to mean another
request, even when the DataFlow input changes between runs (rows inserted, edited, removed). The ledger
(`RUNDIR/input.jsonl`) therefore only grows:
- a request is known by its content (task, prompt or conversation, input images) and its occurrence number
  among identical requests (a prompt that appears twice is two requests);
- a request seen in an earlier run keeps its position (done ones are not paid again, even when their row moved);
- a new request is appended;
- a known request that the input no longer asks for is retired: its line keeps its identity but loses its
  prompt, so that if it was never sent it fails as an input error instead of being sent.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ID_FIELD = "_id"
_IDENTITY = "_identity"
_RETIRED = "_retired"


@dataclass(slots=True)
class Request:
    key: str  # the sample's DataFlow key (sample0_condition0, sample_3): names its published images
    fields: dict[str, Any]  # what the engine reads: prompt or conversation, input images


def _content_hash(task: str, fields: dict[str, Any]) -> str:
    blob = orjson.dumps([task, fields], option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    return hashlib.sha256(blob).hexdigest()[:32]


def write_ledger(path: Path, task: str, rows: Iterable[list[Request] | None]) -> tuple[list[list[int]], int]:
    """Bring the ledger at `path` up to date with the requests of each DataFlow row (None: a row that asks
    for nothing). Returns, per row, the ledger positions of its requests, and the number of ledger lines."""
    old: list[tuple[str, bool]] = []
    if path.exists():
        with path.open("rb") as f:
            for line in f:
                if line.strip():
                    obj = orjson.loads(line)
                    old.append((str(obj.get(_IDENTITY, "")), bool(obj.get(_RETIRED))))
    live = {ident: pos for pos, (ident, retired) in enumerate(old) if ident and not retired}
    seen: dict[str, int] = {}
    used: set[int] = set()
    positions: list[list[int]] = []
    fresh = path.with_name(f".{path.name}.new")
    appended = 0
    with fresh.open("wb") as new:
        for requests in rows:
            mine: list[int] = []
            for request in requests or []:
                content = _content_hash(task, request.fields)
                seen[content] = seen.get(content, 0) + 1
                ident = f"{content}:{seen[content]}"
                pos = live.get(ident)
                if pos is None:
                    pos = len(old) + appended
                    appended += 1
                    new.write(orjson.dumps({ID_FIELD: request.key, **request.fields, _IDENTITY: ident},
                                           default=str) + b"\n")
                used.add(pos)
                mine.append(pos)
            positions.append(mine)
    retire = [pos for pos in live.values() if pos not in used]
    total = len(old) + appended
    if not appended and not retire:
        fresh.unlink()
        return positions, total
    tmp = path.with_name(f".{path.name}.tmp")
    retiring = set(retire)
    with tmp.open("wb") as out:
        if old:
            with path.open("rb") as f:
                pos = 0
                for line in f:
                    if not line.strip():
                        continue
                    if pos in retiring:
                        obj = orjson.loads(line)
                        line = orjson.dumps({ID_FIELD: obj.get(ID_FIELD), _IDENTITY: obj.get(_IDENTITY),
                                             _RETIRED: True}) + b"\n"
                    out.write(line if line.endswith(b"\n") else line + b"\n")
                    pos += 1
        with fresh.open("rb") as f:
            for line in f:
                out.write(line)
    os.replace(tmp, path)
    fresh.unlink()
    return positions, total
