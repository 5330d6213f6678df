"""The Python API: one async core (`arun`), a thin sync facade (`run_config`, `generate`, `edit`).

```python
import pixelmill
report = pixelmill.generate("prompts.jsonl", output="out/prompts", model="gpt-image-2", size="1024x1536")
print(report.output, report.counts.done, report.counts.failed)
```

The output is written after every run, an aborted one included (its rows not done are pending). On a full disk
the run stops (exit 3) and the output is still written into the space the run kept in reserve; when even that
fails, the report says so and the journal keeps every result for the next run to write it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelmill.config import RunConfig
from pixelmill.engine.plan import plan_run
from pixelmill.engine.runner import Runner, RunOutcome
from pixelmill.engine.stats import RunStats
from pixelmill.errors import DiskFull
from pixelmill.options import build_config, job_options
from pixelmill.reports.status import remember_outcome
from pixelmill.writing.journal import Journal
from pixelmill.writing.lock import RunLock
from pixelmill.writing.output import OutputCounts, write_output

EXIT_OK, EXIT_FAILED_ROWS, EXIT_CONFIG, EXIT_ABORTED, EXIT_SUBMITTED = 0, 1, 2, 3, 4
# The signals that stop a run cleanly, with the names its messages give them.
_STOP_SIGNALS = ((signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM"), (signal.SIGHUP, "SIGHUP"))


@dataclass(slots=True)
class RunReport:
    output: Path
    counts: OutputCounts
    stats: RunStats
    aborted: str | None
    abort_kind: str | None

    @property
    def exit_code(self) -> int:
        if self.abort_kind == "submitted":  # --batch: batches still run at the provider; the next run collects
            return EXIT_SUBMITTED
        if self.aborted is not None:
            return EXIT_ABORTED
        return EXIT_FAILED_ROWS if self.counts.failed else EXIT_OK


async def arun(
    config: RunConfig,
    *,
    env: Mapping[str, str] | None = None,
    stats: RunStats | None = None,
    notice: Callable[[str], None] = lambda _: None,
    runner_hook: Callable[[Runner], None] | None = None,
) -> RunReport:
    """Run `config` to the end (or until stopped) and write the output dataset."""
    plan = plan_run(config, env=os.environ if env is None else env, notice=notice)  # ConfigError: nothing sent
    runner = Runner(config, plan, stats=stats, notice=notice)
    if runner_hook is not None:
        runner_hook(runner)
    with RunLock(config.output):  # one process per RUNDIR: a second one would pay for every row again
        outcome: RunOutcome = await runner.run()
        aborted, kind = outcome.aborted, outcome.abort_kind
        journal = Journal.open(config.output)
        try:
            s = outcome.stats
            with contextlib.suppress(DiskFull):  # a full disk: the run's own last line still says how it ended
                remember_outcome(journal, aborted=aborted, kind=kind, spent=s.spent, requests=s.requests,
                                 images=s.images)
            try:
                path, counts = await asyncio.to_thread(write_output, config, journal)
            except DiskFull as exc:  # the journal holds every result: the output can be written once there is room
                path, counts = config.output / f"output.{config.format}", OutputCounts()
                aborted, kind = (f"{aborted}; " if aborted else "") + f"the output was not written: {exc}", exc.kind
        finally:
            journal.close()
    return RunReport(path, counts, outcome.stats, aborted, kind)


def run_config(
    config: RunConfig,
    *,
    env: Mapping[str, str] | None = None,
    stats: RunStats | None = None,
    notice: Callable[[str], None] = lambda _: None,
    handle_signals: bool = False,
) -> RunReport:
    """Sync facade. With `handle_signals`, the first Ctrl-C (or SIGTERM, or SIGHUP) stops sending, lets calls in flight
    finish and records them; a second one cancels at once (the journal stays consistent either way)."""

    async def main() -> RunReport:
        if not handle_signals or threading.current_thread() is not threading.main_thread():
            return await arun(config, env=env, stats=stats, notice=notice)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        runners: list[Runner] = []

        def on_signal(name: str) -> None:
            if not runners:  # still preparing: nothing sent yet
                if task is not None:
                    task.cancel()
            elif runners[0].abort_reason is None:
                notice(f"stopping: waiting for the calls in flight to finish ({name} again to stop at once)")
                runners[0].stop(f"interrupted ({name}): run the same command again to continue")
            else:
                notice("stopping now: calls in flight are abandoned and will be sent again by a re-run")
                runners[0].stop_now(f"interrupted ({name} twice): run the same command again to continue")

        # SIGHUP (the terminal closed, an ssh session dropped) drains like SIGTERM: calls in flight were paid.
        for sig, name in _STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, on_signal, name)
        return await arun(config, env=env, stats=stats, notice=notice, runner_hook=runners.append)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    # Called from a running event loop (a notebook): the run gets a loop of its own in a worker thread, where
    # signal handlers cannot be installed (the notebook's own interrupt still stops the kernel).
    handle_signals = False
    box: list[RunReport | BaseException] = []

    def target() -> None:
        try:
            box.append(asyncio.run(main()))
        except BaseException as exc:
            box.append(exc)

    worker = threading.Thread(target=target, name="pixelmill-run")
    worker.start()
    worker.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _config(task: str, input: str | Path, output: str | Path | None, options: dict[str, Any]) -> RunConfig:
    """The same configuration the command line builds, from the same options in snake_case."""
    return build_config(task, Path(input), job_options(output=output, **options))


def generate(input: str | Path, *, output: str | Path | None = None, **options: Any) -> RunReport:
    """Text-to-image over every record of `input`. Options are the command line's, in snake_case."""
    return run_config(_config("generate", input, output, dict(options)))


def edit(input: str | Path, *, output: str | Path | None = None, **options: Any) -> RunReport:
    """Image editing over every record of `input` (input images + instruction; multi-turn conversations)."""
    return run_config(_config("edit", input, output, dict(options)))
