"""The Python API: one async core (`arun`), a thin sync facade (`run_config`, `generate`, `edit`).

```python
import pixelmill
report = pixelmill.generate("prompts.jsonl", output="out/prompts", model="gpt-image-2", size="1024x1536")
print(report.output, report.counts.done, report.counts.failed)
```
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelmill.config import RunConfig
from pixelmill.engine.plan import plan_run
from pixelmill.engine.runner import Runner, RunOutcome
from pixelmill.engine.stats import RunStats
from pixelmill.reports.status import remember_outcome
from pixelmill.writing.journal import Journal
from pixelmill.writing.output import OutputCounts, write_output

EXIT_OK, EXIT_FAILED_ROWS, EXIT_CONFIG, EXIT_ABORTED = 0, 1, 2, 3


@dataclass(slots=True)
class RunReport:
    output: Path
    counts: OutputCounts
    stats: RunStats
    aborted: str | None
    abort_kind: str | None

    @property
    def exit_code(self) -> int:
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
    outcome: RunOutcome = await runner.run()
    journal = Journal.open(config.output)
    try:
        s = outcome.stats
        remember_outcome(journal, aborted=outcome.aborted, kind=outcome.abort_kind, spent=s.spent,
                         requests=s.requests, images=s.images)
        path, counts = await asyncio.to_thread(write_output, config, journal)
    finally:
        journal.close()
    return RunReport(path, counts, outcome.stats, outcome.aborted, outcome.abort_kind)


def run_config(
    config: RunConfig,
    *,
    env: Mapping[str, str] | None = None,
    stats: RunStats | None = None,
    notice: Callable[[str], None] = lambda _: None,
    handle_signals: bool = False,
) -> RunReport:
    """Sync facade. With `handle_signals`, the first Ctrl-C (or SIGTERM) stops sending, lets calls in flight
    finish and records them; a second one cancels at once (the journal stays consistent either way)."""

    async def main() -> RunReport:
        if not handle_signals:
            return await arun(config, env=env, stats=stats, notice=notice)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        runners: list[Runner] = []

        def on_signal() -> None:
            if not runners:  # still preparing: nothing sent yet
                if task is not None:
                    task.cancel()
            elif runners[0].abort_reason is None:
                notice("stopping: waiting for the calls in flight to finish (Ctrl-C again to stop at once)")
                runners[0].stop("interrupted (Ctrl-C): run the same command again to continue")
            else:
                notice("stopping now: calls in flight are abandoned and will be sent again by a re-run")
                runners[0].stop_now("interrupted (Ctrl-C twice): run the same command again to continue")

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal)
        return await arun(config, env=env, stats=stats, notice=notice, runner_hook=runners.append)

    return asyncio.run(main())


@contextlib.contextmanager
def emulated(config: RunConfig) -> Iterator[RunConfig]:
    """For `--provider emulator`: start the emulator on a free loopback port for the length of the run and point
    the steps at it (over real HTTP, with the OpenAI or Gemini wire format as the model asks)."""
    if not any(step.model.provider == "emulator" for step in config.steps):
        yield config
        return
    from pixelmill.models.table import builtin_table
    from pixelmill.testing import Emulator, EmulatorConfig

    emulator = Emulator(EmulatorConfig(latency=0.05, serve_retired=True))
    with emulator.run_in_thread() as emu:
        steps = []
        for step in config.steps:
            ref = step.model
            if ref.provider == "emulator":
                spec = builtin_table().get(ref.model)
                if spec is not None and spec.family == "gemini":
                    ref = ref.model_copy(update={"provider": "gemini", "base_url": emu.gemini_base_url})
                else:
                    ref = ref.model_copy(update={"provider": "openai", "base_url": emu.openai_base_url})
            steps.append(step.model_copy(update={"model": ref}))
        yield config.model_copy(update={"steps": tuple(steps), "api_key": config.api_key or "sk-emulator"})


def _config(task: str, input: str | Path, output: str | Path | None, options: dict[str, Any]) -> RunConfig:
    """The same configuration the command line builds, from the same options in snake_case."""
    from pixelmill.cli import build_config, job_options

    if "param" in options and isinstance(options["param"], dict):
        options["param"] = [f"{k}={v}" for k, v in options["param"].items()]
    config: RunConfig = build_config(task, Path(input), job_options(
        output=Path(output) if output is not None else None, **options))
    return config


def generate(input: str | Path, *, output: str | Path | None = None, **options: Any) -> RunReport:
    """Text-to-image over every record of `input`. Options are the command line's, in snake_case."""
    config = _config("generate", input, output, dict(options))
    with emulated(config) as config:
        return run_config(config)


def edit(input: str | Path, *, output: str | Path | None = None, **options: Any) -> RunReport:
    """Image editing over every record of `input` (input images + instruction; multi-turn conversations)."""
    config = _config("edit", input, output, dict(options))
    with emulated(config) as config:
        return run_config(config)
