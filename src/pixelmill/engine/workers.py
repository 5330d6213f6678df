"""The flow of rows through a pool of workers, shared by a run (engine/runner.py) and each pass of a batch run
(engine/batch/frontier.py): one producer reads the source in chunks and routes each chunk's rows onto a bounded
queue (memory flat in the dataset's size), workers take them off it one at a time, with no barrier between
chunks; a stop (Ctrl-C, an abort) cancels the producer and lets the calls in flight finish and be recorded,
bounded by `drain_timeout` or cut short by a second stop (`halt.now`).

A worker's own exception (one that escaped the row's handling, which fails the row for what it sees) stops the run
like an abort, with the exception named and the output written, rather than end the run with neither.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from pixelmill.config import RunConfig
from pixelmill.engine.context import RunContext
from pixelmill.engine.row import Row
from pixelmill.errors import DiskFull, InternalError
from pixelmill.reading.records import Record, read_records

CHUNK = 256  # rows read, and routed, at a time
RowQueue = asyncio.Queue[Row | None]
Route = Callable[[list[Record], RowQueue], Awaitable[None]]  # a chunk's rows onto the queue (or settled there)
Work = Callable[[Row], Awaitable[None]]  # one row's work


def source_records(config: RunConfig) -> Iterator[Record]:
    """The source's records in order, up to --limit."""
    for record in read_records(config.source, config.source_format):
        if config.limit is not None and record.index >= config.limit:
            return
        yield record


async def flow_rows(ctx: RunContext, records: Iterable[Record], route: Route, work: Work, workers: int) -> bool:
    """Every record through `route` and the rows it queues through `work`, on `workers` workers. True when all
    were worked; False when the run stopped (what was in flight drained)."""
    stop = ctx.halt.stopping
    queue: RowQueue = asyncio.Queue(maxsize=max(CHUNK, workers * 2))
    producer = asyncio.create_task(_produce(ctx, records, route, queue, workers))
    tasks = [asyncio.create_task(_worker(ctx, work, queue)) for _ in range(workers)]
    stopping = asyncio.create_task(stop.wait())
    everything: asyncio.Future[Any] = asyncio.gather(*tasks)
    try:
        await asyncio.wait([producer, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            producer.result()
            await asyncio.wait([everything, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not stop.is_set():
                everything.result()
                return True
        # Stopping: workers see `stopping` and take nothing new; their calls in flight finish and are recorded.
        producer.cancel()
        await _drain(tasks, asyncio.create_task(ctx.halt.now.wait()), ctx.limits.drain_timeout)
        return False
    finally:
        for task in (producer, stopping, *tasks):
            task.cancel()
        await asyncio.gather(producer, stopping, everything, return_exceptions=True)


async def _produce(ctx: RunContext, records: Iterable[Record], route: Route, queue: RowQueue, workers: int) -> None:
    stop = ctx.halt.stopping
    try:
        chunk: list[Record] = []
        for record in records:
            chunk.append(record)
            if len(chunk) >= CHUNK:
                await route(chunk, queue)
                chunk = []
            if stop.is_set():
                return
        if chunk:
            await route(chunk, queue)
    except DiskFull as exc:  # the journal cannot record new rows: stop like any abort
        ctx.halt.stop(str(exc), exc.kind)
        ctx.store.release_reserve()
    finally:
        if not stop.is_set():
            for _ in range(workers):
                await queue.put(None)


async def _worker(ctx: RunContext, work: Work, queue: RowQueue) -> None:
    stop = ctx.halt.stopping
    while not stop.is_set():
        item = await queue.get()
        if item is None:
            return
        try:
            await work(item)
        except Exception as exc:
            ctx.halt.stop(f"row {item.record.index}: {InternalError.of(exc)}; rows not done stay pending", "internal")
            return


async def _drain(tasks: list[asyncio.Task[None]], hurry: asyncio.Task[Any], seconds: float) -> None:
    """Wait for the workers to finish their calls in flight, for at most `seconds` or until a second stop
    (`hurry`)."""
    deadline = time.monotonic() + seconds
    pending: set[asyncio.Task[Any]] = {t for t in tasks if not t.done()}
    while pending and not hurry.done():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        _, pending = await asyncio.wait([*pending, hurry], timeout=left, return_when=asyncio.FIRST_COMPLETED)
        pending.discard(hurry)
    hurry.cancel()
