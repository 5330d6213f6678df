"""The batcher alone (no torch): rows grouped by key into full batches, spread over devices, one call at a
time per device, partial batches sent after the window, cancelled rows skipped."""

from __future__ import annotations

import asyncio
import time

import pytest

from pixelmill.providers.diffusers.batcher import Batcher


class FakeDevices:
    """Each call takes `seconds`; records (device, works) and the most calls ever running on one device."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds = seconds
        self.calls: list[tuple[int, list[str]]] = []
        self.running: dict[int, int] = {}
        self.most_at_once = 0

    async def run(self, device: int, works: list[str]) -> list[str]:
        self.running[device] = self.running.get(device, 0) + 1
        self.most_at_once = max(self.most_at_once, self.running[device])
        self.calls.append((device, list(works)))
        await asyncio.sleep(self.seconds)
        self.running[device] -= 1
        return [f"done {w}" for w in works]


async def test_rows_fill_batches_and_spread_over_devices() -> None:
    devices = FakeDevices()
    batcher: Batcher[str, str] = Batcher(2, 4, window=1.0, run=devices.run)
    try:
        results = await asyncio.gather(*[batcher.submit(f"r{i}", "same", 1) for i in range(16)])
    finally:
        await batcher.aclose()
    assert results == [f"done r{i}" for i in range(16)]
    assert [len(works) for _, works in devices.calls] == [4, 4, 4, 4]  # full at once: no window waited
    assert {device for device, _ in devices.calls} == {0, 1}
    assert devices.most_at_once == 1


async def test_keys_never_mix_and_a_partial_batch_goes_after_the_window() -> None:
    devices = FakeDevices(0.0)
    batcher: Batcher[str, str] = Batcher(1, 4, window=0.1, run=devices.run)
    started = time.monotonic()
    try:
        await asyncio.gather(batcher.submit("a1", "a", 1), batcher.submit("b1", "b", 1),
                             batcher.submit("a2", "a", 1))
    finally:
        await batcher.aclose()
    assert sorted(works for _, works in devices.calls) == [["a1", "a2"], ["b1"]]
    assert time.monotonic() - started >= 0.1


async def test_a_row_bigger_than_a_batch_runs_alone_and_images_count() -> None:
    devices = FakeDevices(0.0)
    batcher: Batcher[str, str] = Batcher(1, 4, window=0.05, run=devices.run)
    try:
        await asyncio.gather(batcher.submit("three", "k", 3), batcher.submit("two", "k", 2),
                             batcher.submit("six", "k", 6))
    finally:
        await batcher.aclose()
    assert [works for _, works in devices.calls] == [["three"], ["two"], ["six"]]


async def test_cancelled_rows_are_skipped() -> None:
    devices = FakeDevices(0.0)
    batcher: Batcher[str, str] = Batcher(1, 4, window=0.1, run=devices.run)
    try:
        doomed = asyncio.create_task(batcher.submit("gone", "k", 1))
        kept = asyncio.create_task(batcher.submit("kept", "k", 1))
        await asyncio.sleep(0.01)
        doomed.cancel()
        assert await kept == "done kept"
        with pytest.raises(asyncio.CancelledError):
            await doomed
    finally:
        await batcher.aclose()
    assert [works for _, works in devices.calls] == [["kept"]]


async def test_a_device_not_ready_takes_no_rows_and_when_none_is_left_the_rows_fail() -> None:
    """Devices that can be lost (Ray actors): `ready` is asked before each batch; a device that says no takes no
    rows (the others take them all); when every device is gone, `fail` ends the waiting rows and refuses more."""
    devices = FakeDevices(0.0)
    gone: set[int] = {1}
    batcher: Batcher[str, str] | None = None

    async def ready(device: int) -> bool:
        if device in gone:
            if batcher is not None and gone == {0, 1}:
                batcher.fail(RuntimeError("no device left"))
            return False
        return True

    batcher = Batcher(2, 1, window=0.0, run=devices.run, ready=ready)
    try:
        results = await asyncio.gather(*[batcher.submit(f"r{i}", "same", 1) for i in range(6)])
        assert results == [f"done r{i}" for i in range(6)]
        assert {device for device, _ in devices.calls} == {0}
        gone.add(0)  # device 0 already waits for its next batch: it runs it, then asks again and is gone
        assert await asyncio.wait_for(batcher.submit("late", "same", 1), 5) == "done late"
        await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError, match="no device left"):
            await batcher.submit("later", "same", 1)
    finally:
        await batcher.aclose()
