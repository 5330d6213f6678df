"""Emulator fixtures, imported by conftest.py.

- `emulator`: a fresh emulator on the test's own event loop (async tests).
- `emulator_thread`: a shared emulator serving from a daemon thread (sync tests, SDK clients, the CLI); each
  test gets it with the default config, an empty log and no batches.
- `make_emulator`: a factory of fresh threaded emulators with a given config (stopped after the test).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from pixelmill.testing import Emulator, EmulatorConfig, ThreadRunner


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator() as emu:
        yield emu


@pytest.fixture(scope="session")
def _shared_emulator() -> Iterator[Emulator]:
    with Emulator().run_in_thread() as emu:
        yield emu


@pytest.fixture
def emulator_thread(_shared_emulator: Emulator) -> Iterator[Emulator]:
    emu = _shared_emulator
    emu.configure(**EmulatorConfig().model_dump())
    emu.reset_log()
    emu.reset_batches()
    yield emu
    emu.configure(**EmulatorConfig().model_dump())


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., Emulator]]:
    runners: list[ThreadRunner] = []

    def make(**config: Any) -> Emulator:
        runner = Emulator(**config).run_in_thread()
        runners.append(runner)
        return runner.start()

    yield make
    for runner in runners:
        runner.stop()
