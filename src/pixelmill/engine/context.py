"""The state a run shares with its rows, passed down explicitly: `RunContext` (what every row reads and writes)
and `Halt` (why and how the run stops early).

The runner (engine/runner.py) builds both; one row's steps (engine/row.py) and one call (engine/call.py) take
what they need from them and own nothing of the run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pixelmill.config import Limits, RunConfig
from pixelmill.engine.stats import RunStats
from pixelmill.errors import redact
from pixelmill.reading.images import InputPolicy
from pixelmill.writing.journal import Journal
from pixelmill.writing.store import ImageStore

if TYPE_CHECKING:
    import aiohttp


class Halt:
    """Why the run stops early (the first reason wins, with keys redacted) and the events that tell everyone:
    `stopping` ends new calls and waits; `now` abandons the calls in flight too (a second Ctrl-C)."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self.secrets = secrets
        self.stopping = asyncio.Event()
        self.now = asyncio.Event()
        self.reason: str | None = None
        self.kind: str | None = None

    def stop(self, reason: str, kind: str) -> None:
        if self.reason is None:
            self.reason = redact(reason, self.secrets)
            self.kind = kind
        self.stopping.set()

    def stop_now(self, reason: str) -> None:
        self.stop(reason, "interrupted")
        self.now.set()


@dataclass(slots=True, frozen=True)
class RunContext:
    config: RunConfig
    limits: Limits
    stats: RunStats
    halt: Halt
    secrets: tuple[str, ...]  # the providers' keys: never in an error message, the journal or the output
    rundir: Path
    inputs: InputPolicy  # where input images may come from (base folder, private URLs)
    session: aiohttp.ClientSession  # for input images given as URLs
    journal: Journal
    store: ImageStore
