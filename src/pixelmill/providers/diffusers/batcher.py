"""Concurrent `call`s grouped into batches: one pipeline call at a time per device, as full as the rows allow.

The engine calls the provider once per row, many rows at a time. Each call becomes a `Pending` entry, keyed by
what must be equal for rows to share a pipeline call (model, pipeline class, every kwarg, the input images'
sizes). One driver task per device takes the oldest key's rows, up to `batch_size` images, as soon as that
many are waiting or the oldest has waited `window` seconds, and runs them in the device's own thread. While a
device works, the next batch gathers; a device never runs two calls at once, and a free device takes the next
batch at once, so with enough rows in flight every call is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

W = TypeVar("W")
R = TypeVar("R")


@dataclass(slots=True)
class Pending(Generic[W, R]):
    work: W
    key: Hashable
    images: int  # what it adds to a batch
    future: asyncio.Future[R]
    since: float = field(default_factory=time.monotonic)


RunBatch = Callable[[int, list[W]], Awaitable[list[R]]]
Ready = Callable[[int], Awaitable[bool]]


class Batcher(Generic[W, R]):
    """`submit` a row's work and await its result; `run(device_index, works)` does the batches."""

    def __init__(self, devices: int, batch_size: int, window: float, run: RunBatch[W, R],
                 ready: Ready | None = None) -> None:
        self.batch_size = batch_size
        self.window = window
        self._run = run
        self._ready = ready
        self._failed: Exception | None = None  # set by `fail`: no device is left
        self._waiting: dict[Hashable, list[Pending[W, R]]] = {}
        self._changed = asyncio.Condition()
        self._drivers = [asyncio.create_task(self._drive(i), name=f"pixelmill-diffusers-{i}")
                         for i in range(devices)]
        # For tests and benchmarks: pipeline calls made (batches), rows they held, seconds devices were busy.
        self.calls = 0
        self.batched_rows = 0
        self.busy_seconds = 0.0

    async def submit(self, work: W, key: Hashable, images: int) -> R:
        if self._failed is not None:
            raise self._failed
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        async with self._changed:
            self._waiting.setdefault(key, []).append(Pending(work, key, images, future))
            self._changed.notify_all()
        return await future  # cancelled by the engine: the entry is skipped when batches are taken

    async def aclose(self) -> None:
        for task in self._drivers:
            task.cancel()
        for task in self._drivers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for group in self._waiting.values():
            for pending in group:
                pending.future.cancel()
        self._waiting.clear()

    def fail(self, error: Exception) -> None:
        """No device is left: the rows waiting and every later `submit` get `error`."""
        self._failed = error
        for group in self._waiting.values():
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(error)
        self._waiting.clear()

    async def _drive(self, device: int) -> None:
        while True:
            if self._ready is not None and not await self._ready(device):
                return  # this device is gone for good (the caller decides when none is left)
            batch = await self._next_batch()
            self.calls += 1
            self.batched_rows += len(batch)
            started = time.perf_counter()
            try:
                results = await self._run(device, [p.work for p in batch])
            except BaseException as exc:
                self.busy_seconds += time.perf_counter() - started
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
                if not isinstance(exc, Exception):
                    raise
                continue
            self.busy_seconds += time.perf_counter() - started
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)

    async def _next_batch(self) -> list[Pending[W, R]]:
        async with self._changed:
            while True:
                self._drop_cancelled()
                if not self._waiting:
                    await self._changed.wait()
                    continue
                by_age = sorted(self._waiting, key=lambda k: self._waiting[k][0].since)
                full = [k for k in by_age if sum(p.images for p in self._waiting[k]) >= self.batch_size]
                if full:  # a full batch goes first: nothing is gained by waiting for it
                    return self._take(full[0])
                wait = self._waiting[by_age[0]][0].since + self.window - time.monotonic()
                if wait <= 0:
                    return self._take(by_age[0])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=wait)

    def _take(self, key: Hashable) -> list[Pending[W, R]]:
        group = self._waiting[key]
        batch = [group[0]]
        images = group[0].images
        for pending in group[1:]:
            if images + pending.images > self.batch_size:
                break
            batch.append(pending)
            images += pending.images
        rest = group[len(batch):]
        if rest:
            self._waiting[key] = rest
        else:
            del self._waiting[key]
        return batch

    def _drop_cancelled(self) -> None:
        for key in list(self._waiting):
            group = [p for p in self._waiting[key] if not p.future.done()]
            if group:
                self._waiting[key] = group
            else:
                del self._waiting[key]
