"""The Python API: the command line's engine, async at the core (`arun_config`), with a sync facade that also
works inside a running event loop (Jupyter).

```python
import pixelmill
report = pixelmill.generate("prompts.jsonl", output="out/prompts", model="gpt-image-2", size="1024x1536")
report = pixelmill.generate([{"prompt": "a red fox"}], provider="emulator")     # rows in memory
report = await pixelmill.aedit(df, output="out/edits", prompt_field="instruction")  # inside an event loop
report = pixelmill.run("pipeline.yaml")                  # or a dict with the file's keys, or a Pipeline
df = report.to_pandas()
```

- `generate` / `edit` / `run` and their async twins `agenerate` / `aedit` / `arun` take the command line's
  options as typed keyword arguments (`JobOptions` for generate/edit, `PipelineOptions` for run: declared once
  in options.py; `_takes` gives each function their signature and their help, for editors and `help()`).
- Called where an event loop already runs (a notebook cell), the sync functions run the job on a loop of their
  own in a worker thread and wait for it; an interrupt (the notebook's stop button) stops the run as Ctrl-C
  does: calls in flight finish and are recorded, the report says it stopped (exit 3).
- Inputs: a path, or rows in memory (an iterable of dicts, a pandas DataFrame, a pyarrow Table, a
  `datasets.Dataset`), spooled once into the run directory under the run's lock (reading/memory.py), so that a
  call made again with the same rows resumes: nothing done is sent again.
- `progress=True`: an HTML display updated in place in a notebook (reports/notebook.py), the terminal display
  elsewhere; no thread of it outlives the call.

The output is written after every run, an aborted one included (its rows not done are pending). On a full disk
the run stops (exit 3) and the output is still written into the space the run kept in reserve; when even that
fails, the report says so and the journal keeps every result for the next run to write it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import os
import signal
import sys
import threading
import typing
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, Union

from pixelmill import defaults
from pixelmill.config import RunConfig
from pixelmill.engine.plan import plan_run
from pixelmill.engine.runner import Runner, RunOutcome
from pixelmill.engine.stats import RunStats
from pixelmill.errors import DiskFull
from pixelmill.options import JobOptions, PipelineOptions, build_config, job_options, pipeline_config
from pixelmill.reading.memory import kind_of, spool_path, write_spool
from pixelmill.report import EXIT_ABORTED, EXIT_FAILED_ROWS, EXIT_OK, EXIT_UNCOLLECTED, RunReport
from pixelmill.reports.status import remember_outcome
from pixelmill.writing.journal import Journal
from pixelmill.writing.lock import RunLock
from pixelmill.writing.output import OutputCounts, write_output

if TYPE_CHECKING:
    import datasets
    import pandas
    import pyarrow

__all__ = ["EXIT_ABORTED", "EXIT_CONFIG", "EXIT_FAILED_ROWS", "EXIT_OK", "EXIT_UNCOLLECTED", "Input",
           "Pipeline", "RunReport", "aedit", "agenerate", "arun", "arun_config", "edit", "generate", "run",
           "run_config"]

EXIT_CONFIG = 2
# The signals that stop a run cleanly, with the names its messages give them.
_STOP_SIGNALS = ((signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM"), (signal.SIGHUP, "SIGHUP"))
TICK = 0.5  # seconds between two updates of a notebook's progress display

# What generate/edit read: a path, or rows in memory.
Input = Union[str, os.PathLike[str], Iterable[Mapping[str, Any]], "pandas.DataFrame", "pyarrow.Table",
              "datasets.Dataset"]
IN_MEMORY = Path("rows")  # the default output of rows in memory is pixelmill-out/rows


# ---------------------------------------------------------------- the core: one RunConfig
async def arun_config(
    config: RunConfig,
    *,
    env: Mapping[str, str] | None = None,
    stats: RunStats | None = None,
    notice: Callable[[str], None] = lambda _: None,
    runner_hook: Callable[[Runner], None] | None = None,
    prepare: Callable[[], None] | None = None,
) -> RunReport:
    """Run `config` to the end (or until stopped) and write the output dataset. `prepare` runs first, under
    the run's lock (the spool of an in-memory input: no other process reads or writes RUNDIR meanwhile)."""
    with contextlib.ExitStack() as held:
        if prepare is not None:
            held.enter_context(RunLock(config.output))
            await asyncio.to_thread(prepare)
        plan = plan_run(config, env=os.environ if env is None else env, notice=notice)  # ConfigError: nothing sent
        runner = Runner(config, plan, stats=stats, notice=notice)
        if runner_hook is not None:
            runner_hook(runner)
        if prepare is None:  # one process per RUNDIR: a second one would pay for every row again
            held.enter_context(RunLock(config.output))
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
    # Absolute paths: the report's rows stay readable after the caller changes its working directory.
    where = config.model_copy(update={"output": config.output.absolute()})
    return RunReport(path.absolute(), counts, outcome.stats, aborted, kind, where)


def run_config(
    config: RunConfig,
    *,
    env: Mapping[str, str] | None = None,
    stats: RunStats | None = None,
    notice: Callable[[str], None] = lambda _: None,
    handle_signals: bool = False,
    prepare: Callable[[], None] | None = None,
    on_tick: Callable[[], None] | None = None,
) -> RunReport:
    """Sync facade. With `handle_signals`, the first Ctrl-C (or SIGTERM, or SIGHUP) stops sending, lets calls in flight
    finish and records them; a second one cancels at once (the journal stays consistent either way). Inside a
    running event loop (or with `on_tick`, called every TICK seconds while the run goes) the run gets a loop of
    its own in a worker thread."""
    runners: list[Runner] = []

    async def main() -> RunReport:
        if not handle_signals or threading.current_thread() is not threading.main_thread():
            return await arun_config(config, env=env, stats=stats, notice=notice, prepare=prepare,
                                     runner_hook=runners.append)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal(name: str) -> None:
            if not runners:  # still preparing: nothing sent yet
                if task is not None:
                    task.cancel()
            elif runners[0].abort_reason is None:
                notice(f"stopping: waiting for the calls in flight to finish ({name} again to stop at once)")
                runners[0].stop(f"interrupted ({name}): run the same command again to continue")
            else:
                notice("stopping now: calls in flight are abandoned and will be sent again by a re-run (remote jobs "
                       "stay journaled: a re-run collects them)")
                runners[0].stop_now(f"interrupted ({name} twice): run the same command again to continue")

        # SIGHUP (the terminal closed, an ssh session dropped) drains like SIGTERM: calls in flight were paid.
        for sig, name in _STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, on_signal, name)
        return await arun_config(config, env=env, stats=stats, notice=notice, prepare=prepare,
                                 runner_hook=runners.append)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        if on_tick is None:
            return asyncio.run(main())
    # A running event loop (a notebook), or a display to update: the run gets a loop of its own in a worker
    # thread (where signal handlers cannot be installed); this thread waits, updates, and turns an interrupt
    # into the clean stop Ctrl-C makes on the command line.
    handle_signals = False
    return _in_worker(main, runners, notice, on_tick)


def _in_worker(main: Callable[[], Coroutine[Any, Any, RunReport]], runners: list[Runner],
               notice: Callable[[str], None], on_tick: Callable[[], None] | None) -> RunReport:
    box: list[RunReport | BaseException] = []
    loops: list[asyncio.AbstractEventLoop] = []

    async def main_here() -> RunReport:
        loops.append(asyncio.get_running_loop())
        return await main()

    finished = threading.Event()  # waited on rather than join(): an interrupted join can leave is_alive() wrong

    def target() -> None:
        try:
            box.append(asyncio.run(main_here()))
        except BaseException as exc:
            box.append(exc)
        finally:
            finished.set()

    worker = threading.Thread(target=target, name="pixelmill-run")
    worker.start()
    interrupts = 0
    while not finished.is_set():
        try:
            if not finished.wait(TICK) and on_tick is not None:
                with contextlib.suppress(Exception):  # a display that fails never stops a run
                    on_tick()
        except KeyboardInterrupt:
            interrupts += 1
            _interrupt(loops, runners, notice, interrupts)
    worker.join()
    if isinstance(box[0], asyncio.CancelledError) and interrupts:
        raise KeyboardInterrupt
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _interrupt(loops: list[asyncio.AbstractEventLoop], runners: list[Runner], notice: Callable[[str], None],
               times: int) -> None:
    """An interrupt in the waiting thread: the first stops sending (calls in flight finish and are recorded),
    the second abandons the calls in flight (a re-run sends them again)."""
    if not loops:
        return
    if not runners:  # still preparing: nothing sent yet, so nothing to wait for
        loops[0].call_soon_threadsafe(_cancel_all, loops[0])
        return
    runner = runners[0]
    if times == 1:
        notice("stopping: waiting for the calls in flight to finish (interrupt again to stop at once)")
        loops[0].call_soon_threadsafe(runner.stop, "interrupted: run the same call again to continue")
    else:
        notice("stopping now: calls in flight are abandoned and will be sent again by a re-run")
        loops[0].call_soon_threadsafe(runner.stop_now, "interrupted twice: run the same call again to continue")


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()


# ---------------------------------------------------------------- a job: its configuration and its input
@dataclasses.dataclass(slots=True)
class _Job:
    config: RunConfig
    data: Any = None  # rows in memory, spooled into RUNDIR when the run starts
    kind: str | None = None
    progress: bool = False

    def spool(self, stats: RunStats) -> Callable[[], None] | None:
        if self.kind is None:
            return None
        data, kind, config = self.data, self.kind, self.config

        def write() -> None:
            written = write_spool(data, kind, config.source, limit=config.limit)
            if stats.total is None:
                stats.total = written

        return write

    def total(self) -> int | None:
        """The rows the run will read, when cheap to know (the progress display's bar)."""
        if self.kind is None:
            from pixelmill.reports.status import count_rows

            return count_rows(self.config.source, self.config.source_format, self.config.limit)
        try:
            size = len(self.data)
        except TypeError:  # a generator: known once spooled
            return None
        return size if self.config.limit is None else min(size, self.config.limit)


def _in_memory(config: RunConfig, data: Any, kind: str, progress: bool) -> _Job:
    source = spool_path(config.output, kind)
    config = config.model_copy(update={"source": source, "source_format": None, "input_dir": Path.cwd()})
    return _Job(config, data, kind, progress)


def _job(task: str, input: Input, options: dict[str, Any]) -> _Job:
    opts = job_options(**options)
    kind = kind_of(input)
    if kind is None:
        return _Job(build_config(task, Path(typing.cast("str | os.PathLike[str]", input)), opts),
                    progress=opts.progress)
    config = build_config(task, IN_MEMORY, opts, input_dir=Path.cwd())
    return _in_memory(config, input, kind, opts.progress)


def _pipeline_job(pipeline: str | os.PathLike[str] | Mapping[str, Any] | Pipeline, options: dict[str, Any]) -> _Job:
    opts = PipelineOptions(**options)
    if isinstance(pipeline, Pipeline):
        pipeline = pipeline.to_dict()
    if not isinstance(pipeline, Mapping):
        return _Job(pipeline_config(Path(pipeline), opts), progress=opts.progress)
    source = pipeline.get("source")
    kind = None if source is None or isinstance(source, Mapping) else kind_of(source)
    if kind is None:
        return _Job(pipeline_config(pipeline, opts), progress=opts.progress)
    config = pipeline_config(pipeline, opts, source=IN_MEMORY, input_dir=Path.cwd())
    return _in_memory(config, source, kind, opts.progress)


# ---------------------------------------------------------------- running a job, with or without progress
def _run_sync(job: _Job) -> RunReport:
    stats = RunStats()
    if not job.progress:
        return run_config(job.config, stats=stats, prepare=job.spool(stats))
    from pixelmill.reports.notebook import NotebookProgress, in_notebook

    stats.total = job.total()
    if in_notebook():
        display = NotebookProgress(stats, job.config)
        display.show()
        report = run_config(job.config, stats=stats, prepare=job.spool(stats), notice=_say, on_tick=display.update)
        display.update(final=_ending(report))
        return report
    with _terminal(job, stats) as progress:
        return run_config(job.config, stats=stats, prepare=job.spool(stats), notice=progress.notice)


async def _run_async(job: _Job) -> RunReport:
    stats = RunStats()
    if not job.progress:
        return await arun_config(job.config, stats=stats, prepare=job.spool(stats))
    from pixelmill.reports.notebook import NotebookProgress, in_notebook

    stats.total = job.total()
    if not in_notebook():
        with _terminal(job, stats) as progress:
            return await arun_config(job.config, stats=stats, prepare=job.spool(stats), notice=progress.notice)
    display = NotebookProgress(stats, job.config)
    display.show()

    async def tick() -> None:
        while True:
            await asyncio.sleep(TICK)
            display.update()

    ticker = asyncio.create_task(tick())
    try:
        report = await arun_config(job.config, stats=stats, prepare=job.spool(stats), notice=_say)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    display.update(final=_ending(report))
    return report


@contextlib.contextmanager
def _terminal(job: _Job, stats: RunStats) -> typing.Iterator[Any]:
    from pixelmill.reports.progress import Progress

    # Given the configuration only when the total is known: the display would otherwise count the source in
    # a thread of its own, which could outlive the call.
    with Progress(stats, config=job.config if stats.total is not None else None) as progress:
        yield progress


def _say(text: str) -> None:
    print(f"pixelmill: notice: {text}", file=sys.stderr)


def _ending(report: RunReport) -> str:
    c, s = report.counts, report.stats
    line = (f"{c.rows} rows: {c.done} done, {c.failed} failed, {c.pending} pending; {s.images} images, "
            f"${s.spent:.4f}; output: {report.output}")
    return f"stopped: {report.aborted}; {line}" if report.aborted else line


# ---------------------------------------------------------------- the public functions
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def _takes(options: Callable[P, Any]) -> Callable[[Callable[Concatenate[T, ...], R]], Callable[Concatenate[T, P], R]]:
    """The decorated function takes the fields of the options class `options` as keyword arguments: their
    names, types and defaults for type checkers and editors (the class's own signature), for `inspect` and
    notebooks (`__signature__`), and each one's help in the docstring. Declared once, in options.py."""
    cls = typing.cast(type, options)

    def decorate(function: Callable[Concatenate[T, ...], R]) -> Callable[Concatenate[T, P], R]:
        hints = typing.get_type_hints(cls)
        first = next(iter(inspect.signature(function, eval_str=True).parameters.values()))
        params = [first.replace(kind=inspect.Parameter.POSITIONAL_ONLY)]
        lines = []
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=hints[f.name]))
            lines.append(f"    {f.name}: {f.metadata.get('help', '')}")
        returns = inspect.signature(function, eval_str=True).return_annotation
        function.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
        function.__doc__ = f"{function.__doc__}\n\nOptions (the command line's flags, in snake_case):\n" + \
            "\n".join(lines)
        return typing.cast(Callable[Concatenate[T, P], R], function)

    return decorate


@_takes(JobOptions)
def generate(input: Input, **options: Any) -> RunReport:
    """Text-to-image over every row of `input` (a path, an iterable of dicts, a pandas DataFrame, a pyarrow Table
    or a datasets.Dataset). Works inside a running event loop (a notebook). Returns the run's report; its rows
    come back with `report.to_pandas()`. Unknown options raise TypeError; bad values a ConfigError naming them."""
    return _run_sync(_job("generate", input, options))


@_takes(JobOptions)
def edit(input: Input, **options: Any) -> RunReport:
    """Image editing over every row of `input` (input images + instruction; several user messages make a
    multi-turn edit). `input` and the report as for `generate`."""
    return _run_sync(_job("edit", input, options))


@_takes(JobOptions)
async def agenerate(input: Input, **options: Any) -> RunReport:
    """`generate`, awaited on the caller's event loop."""
    return await _run_async(_job("generate", input, options))


@_takes(JobOptions)
async def aedit(input: Input, **options: Any) -> RunReport:
    """`edit`, awaited on the caller's event loop."""
    return await _run_async(_job("edit", input, options))


PipelineInput = Union[str, os.PathLike[str], Mapping[str, Any], "Pipeline"]


@_takes(PipelineOptions)
def run(pipeline: PipelineInput, **options: Any) -> RunReport:
    """A multi-step pipeline: a YAML file (docs/pipeline-file.md), a dict with the same keys (its relative paths
    resolve against the working directory; its `source` may also be rows in memory), or a `Pipeline`. The
    options override the pipeline's own, as on the command line."""
    return _run_sync(_pipeline_job(pipeline, options))


@_takes(PipelineOptions)
async def arun(pipeline: PipelineInput, **options: Any) -> RunReport:
    """`run`, awaited on the caller's event loop."""
    return await _run_async(_pipeline_job(pipeline, options))


# ---------------------------------------------------------------- Pipeline: a pipeline file built in Python
ImageParam = str | int | float | None


class Pipeline:
    """A pipeline built in Python, with the keys of a pipeline file (docs/pipeline-file.md): it makes exactly
    the configuration the file would.

    ```python
    pipe = (pixelmill.Pipeline(source=df, output="out/products", limits={"concurrency": 16})
            .step(name="product_image", model="gpt-image-1-mini", prompt="A photo of {product_name}.")
            .step(name="on_marble", task="edit", model={"provider": "gemini", "model": "gemini-3-pro-image"},
                  images="{product_image}", prompt="Put this product on a marble table."))
    report = pipe.run()          # or: await pipe.arun()
    ```
    """

    def __init__(self, source: Input | Mapping[str, Any], output: str | os.PathLike[str] | None = None, *,
                 models: Mapping[str, Any] | None = None, limits: Mapping[str, Any] | None = None,
                 id_field: str | None = None, format: defaults.OutputFormat | None = None,
                 embed_images: bool | None = None, allow_private_urls: bool | None = None,
                 allowed_paths: list[str] | None = None) -> None:
        keys = {"source": source, "output": output, "models": models, "limits": limits, "id_field": id_field,
                "format": format, "embed_images": embed_images, "allow_private_urls": allow_private_urls,
                "allowed_paths": allowed_paths}
        self._top = {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in keys.items() if v is not None}
        self._steps: list[dict[str, Any]] = []

    def step(self, name: str | None = None, *, task: typing.Literal["generate", "edit", "auto"] | None = None,
             model: str | Mapping[str, Any] | None = None, prompt: str | None = None, images: str | None = None,
             mask: str | None = None, output_field: str | None = None, prompt_field: str | None = None,
             image_field: str | None = None, mask_field: str | None = None, name_template: str | None = None,
             fallback: list[str | Mapping[str, Any]] | None = None, param: Mapping[str, Any] | None = None,
             batch: bool | None = None, **image_params: ImageParam) -> Pipeline:
        """Add a step (the keys of a pipeline file's step); `image_params` are its image parameters (n, size,
        aspect_ratio, resolution, quality, ...: an unknown one is an error naming it when the pipeline is run).
        Returns the pipeline, so that steps chain."""
        keys = {"name": name, "task": task, "model": model, "prompt": prompt, "images": images, "mask": mask,
                "output_field": output_field, "prompt_field": prompt_field, "image_field": image_field,
                "mask_field": mask_field, "name_template": name_template, "fallback": fallback, "param": param,
                "batch": batch, **image_params}
        self._steps.append({k: v for k, v in keys.items() if v is not None})
        return self

    def to_dict(self) -> dict[str, Any]:
        """The pipeline file's content, as a dict (`yaml.safe_dump` of it is the file, save for rows in memory)."""
        return {**self._top, "steps": [dict(step) for step in self._steps]}

    @_takes(PipelineOptions)
    def run(self, **options: Any) -> RunReport:
        """Run the pipeline (`pixelmill.run(self, ...)`)."""
        return _run_sync(_pipeline_job(self, options))

    @_takes(PipelineOptions)
    async def arun(self, **options: Any) -> RunReport:
        """Run the pipeline on the caller's event loop (`await pixelmill.arun(self, ...)`)."""
        return await _run_async(_pipeline_job(self, options))
