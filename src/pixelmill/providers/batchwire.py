"""What the engine's batch flow (engine/batch/) asks of a provider's batch API, in words of its own: a batch
is built as a JSONL file of lines, uploaded, created under a name the engine chooses, polled, and its answers
read back line by line. Each provider's wire (providers/openai/batch.py, providers/gemini/batch.py) speaks its
own API behind this contract, so the flow never reads a provider's batch object.

`BatchSummary` is the provider's last word on a batch, kept in the journal (writing/batches.py `info`) and shown
by `pixelmill status`; `state` is one of `STATES`, `status` the provider's own word for it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

from pixelmill.errors import ProviderError
from pixelmill.models.table import ModelSpec
from pixelmill.providers.base import ImageRequest, ImageResult

BatchState = Literal["running", "completed", "failed", "expired", "cancelled"]
STATES: tuple[BatchState, ...] = ("running", "completed", "failed", "expired", "cancelled")
ENDED: tuple[BatchState, ...] = ("completed", "failed", "expired", "cancelled")


@dataclass(slots=True)
class BatchSummary:
    """A batch as the provider last described it."""

    id: str
    state: BatchState
    status: str  # the provider's own word (`in_progress`, `BATCH_STATE_RUNNING`, ...)
    total: int = 0
    completed: int = 0
    failed: int = 0
    expires_at: float | None = None
    errors: str | None = None  # why a batch failed as a whole (validation), readable
    files: list[str] = field(default_factory=list)  # what `answers` reads: output and error file names
    seen: float = field(default_factory=time.time)

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> BatchSummary | None:
        """A summary the journal kept; None for one written before it had this shape."""
        try:
            return cls(**{k: value[k] for k in cls.__slots__ if k in value})
        except TypeError:
            return None


@dataclass(slots=True)
class LineAnswer:
    """One line of a batch's answers: its `custom_id` (the key the engine gave the line) and what came back."""

    custom_id: str
    body: dict[str, Any]


class BatchWire(Protocol):
    """A provider's batch API. No call here is retried inside: a create whose answer is lost is found again by
    `find`, never sent twice."""

    max_lines: int  # lines per batch the provider takes
    max_bytes: int  # bytes per input file

    def line(self, custom_id: str, request: ImageRequest) -> bytes:
        """One JSONL line, with its newline, for `request`."""
        ...

    async def upload(self, path: Path, name: str) -> str:
        """Upload an input file streamed from disk; returns the provider's file name/id."""
        ...

    async def create(self, file_id: str, request: ImageRequest, name: str) -> BatchSummary:
        """Create a batch of `file_id`'s lines (their task and model are `request`'s) under `name`."""
        ...

    async def get(self, batch_id: str) -> BatchSummary: ...

    async def cancel(self, batch_id: str) -> BatchSummary: ...

    async def find(self, name: str, file_id: str | None) -> BatchSummary | None:
        """The batch created under `name` (or on `file_id`), listing every page; None when there is none."""
        ...

    def answers(self, summary: BatchSummary, folder: Path) -> AsyncIterator[LineAnswer]:
        """An ended batch's answer lines, its files streamed to disk in `folder` first (never held in memory)."""
        ...

    def unanswered(self, answer: LineAnswer) -> bool:
        """True when the line is no answer (a leftover of an expired or cancelled batch): its row is sent again."""
        ...

    async def result(self, answer: LineAnswer, request: ImageRequest, spec: ModelSpec) -> ImageResult | None:
        """A successful line as the synchronous call's result; None when the line is an error (see `error`)."""
        ...

    def error(self, answer: LineAnswer, model: str) -> ProviderError:
        """A failed line as the error its synchronous call would have raised (refused, rejected, transient)."""
        ...


async def downloaded_answers(download: Callable[[str, Path], Awaitable[None]], files: list[str], folder: Path,
                             stem: str, key: str) -> AsyncIterator[LineAnswer]:
    """The answer lines of a batch's files, in order: each file downloaded to `folder` first (a results file may
    be GBs: never in memory), read line by line, and removed after; `key` names the field that carries a line's
    custom id (`custom_id` for OpenAI, `key` for Gemini). A line without one is no answer."""
    for n, file_id in enumerate(files):
        path = folder / f"answers-{stem}-{n}.jsonl"
        await download(file_id, path)
        try:
            async for item in lines_of(path):
                custom_id = item.get(key)
                if isinstance(custom_id, str):
                    yield LineAnswer(custom_id, item)
        finally:
            path.unlink(missing_ok=True)


async def lines_of(path: Path) -> AsyncIterator[dict[str, Any]]:
    """The JSON lines of a downloaded file, one at a time (a broken line is skipped: its row stays unanswered
    and is sent again)."""
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    value = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    yield value
