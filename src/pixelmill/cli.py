"""The `pixelmill` command: flags mapped onto the options of `options.py`, and errors turned into one clear line
and an exit code (DESIGN 2.1): 0 every row done; 1 some rows failed (recorded); 2 usage or configuration error,
nothing sent; 3 aborted (authentication, quota, budget, interrupted); 4 submitted, not yet collected (`--batch
--detach`): run the same command again to collect.

The flags of generate / edit / estimate / run are built from the fields of `JobOptions` and `PipelineOptions`
(their types, defaults, help and `--help` panel are declared there once; `estimate` leaves out the run-only
ones). Help texts are shown as written: typer reads them as rich markup, where `[default: ...]` is a tag and
vanishes, so every command of this app escapes its help once (`_LiteralHelpCommand`). Heavy modules (pydantic, aiohttp, the engine) are
imported inside the commands, so `pixelmill --help` is quick. Nothing in the library imports this module.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from typer.core import TyperCommand
from typer.models import CommandFunctionType

from pixelmill.options import (
    INPUT,
    OUTPUT,
    PANELS,
    RUN,
    JobOptions,
    PipelineOptions,
    Task,
    build_config,
    changed_options,
    pipeline_config,
)
from pixelmill.version import VERSION


class _LiteralHelpCommand(TyperCommand):
    """A command whose help texts are shown as written. Typer parses help as rich markup, where `[word ...]` is
    a style tag: "Run directory [default: pixelmill-out/<input stem>]." showed as "Run directory ." Escaping
    each text once, here, keeps every bracket of every option, argument and command of the app. A docstring's
    line breaks are joined too: the list of commands showed them as they were typed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = "\n\n".join(" ".join(part.split()) for part in inspect.cleandoc(self.help).split("\n\n"))
        if self.rich_markup_mode != "rich":  # plain click help (TYPER_USE_RICH=0) shows text as it is
            return
        from rich.markup import escape

        self.help = self.help and escape(self.help)
        for param in self.params:
            if getattr(param, "help", None):
                param.help = escape(param.help)  # type: ignore[attr-defined]


class _App(typer.Typer):
    """Every command of the app is a `_LiteralHelpCommand`."""

    def command(self, *args: Any, cls: type[TyperCommand] | None = None,
                **kwargs: Any) -> Callable[[CommandFunctionType], CommandFunctionType]:
        return super().command(*args, cls=cls or _LiteralHelpCommand, **kwargs)


app = _App(
    name="pixelmill",
    help="Datasets of prompts and images in, datasets of generated and edited images out: in bulk, resumable, "
    "paid once.\n\nExit status: 0 every row done; 1 some rows failed (recorded); 2 usage or configuration error, "
    "nothing sent; 3 aborted (authentication, quota, budget, interrupted); 4 submitted (--batch --detach, or "
    "batches or remote jobs still running): run the same command again to collect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_CONFIG = 2

Input = Annotated[Path, typer.Argument(help="Input dataset: .jsonl, .json, .csv, .parquet, a saved HF dataset folder, or hf:name:split.", show_default=False)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.", rich_help_panel=RUN)]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pixelmill {VERSION}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", help="Print pixelmill's version and exit.", callback=_version, is_eager=True)] = False) -> None:
    pass


def _flags(options_class: type, *, estimate: bool = False) -> list[inspect.Parameter]:
    """Typer parameters for the fields of an options class (options.py): each field's default, type, help and
    panel, as `--field-name` (or the flags the field names), ordered by panel; `estimate` leaves out the fields
    marked run-only. A bool field is a switch (`--restart`, no `--no-restart`): off unless given."""
    hints = typing.get_type_hints(options_class)
    params = []
    for f in dataclasses.fields(options_class):
        if f.metadata.get("flag", True) is False or (estimate and f.metadata.get("run_only")):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flags = f.metadata.get("flags") or (("--" + f.name.replace("_", "-"),) if hints[f.name] is bool else ())
        panel = f.metadata.get("panel")
        option = typer.Option(*flags, help=f.metadata.get("help"), show_default=f.name != "api_key",
                              rich_help_panel=panel)
        params.append((PANELS.index(panel) if panel in PANELS else len(PANELS), inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[hints[f.name], option])))
    return [param for _, param in sorted(params, key=lambda item: item[0])]


def _command(name: str, doc: str, body: Any, first: list[inspect.Parameter], options_class: type,
             last: list[inspect.Parameter] | None = None) -> None:
    """Register `body(**kwargs)` as command `name`, taking `first`, the fields of `options_class` (for
    `estimate`, those it uses) and `last`."""
    def command(**kwargs: Any) -> None:
        raise typer.Exit(body(**kwargs))

    quiet = [inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Quiet)] \
        if name != "estimate" else []
    flags = _flags(options_class, estimate=name == "estimate")
    command.__signature__ = inspect.Signature([*first, *flags, *(last or []), *quiet])  # type: ignore[attr-defined]
    command.__name__ = name
    command.__doc__ = doc
    app.command(name)(command)


def _split(kwargs: dict[str, Any], options_class: type) -> Any:
    return options_class(**{f.name: kwargs[f.name] for f in dataclasses.fields(options_class) if f.name in kwargs})


def _job(task: str) -> Any:
    def body(input: Path, quiet: bool = False, **kwargs: Any) -> int:
        options = _split(kwargs, JobOptions)
        return _guarded(lambda: _execute(build_config(task, input, options), quiet=quiet), options.api_key)
    return body


def _guarded(action: Any, api_key: str | None) -> int:
    """Run `action`; a configuration error becomes one line and exit 2 (never the key)."""
    from pixelmill.errors import ConfigError, redact

    try:
        return int(action())
    except ConfigError as exc:
        _error(redact(str(exc), (api_key or "",)))
        return EXIT_CONFIG


def _execute(config: Any, *, quiet: bool) -> int:
    from pixelmill.console import run_with_progress

    return run_with_progress(config, quiet=quiet).exit_code


def _error(message: str) -> None:
    sys.stderr.write(f"pixelmill: error: {message}\n")


_INPUT = [inspect.Parameter("input", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Input)]
_command("generate", "Text-to-image over every record of INPUT.", _job("generate"), _INPUT, JobOptions)
_command("edit", "Image editing over every record of INPUT (input images + instruction; several user messages "
                 "make a multi-turn edit).", _job("edit"), _INPUT, JobOptions)


def _run_pipeline(pipeline: Path, quiet: bool = False, **kwargs: Any) -> int:
    options = _split(kwargs, PipelineOptions)
    return _guarded(lambda: _execute(pipeline_config(pipeline, options), quiet=quiet), options.api_key)


_command("run", "A multi-step pipeline from a YAML file (source, models, limits, steps).", _run_pipeline,
         [inspect.Parameter("pipeline", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[
             Path, typer.Argument(help="Pipeline file (YAML).", show_default=False)])], PipelineOptions)


@app.command()
def emulate(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port).")] = 8765,
    latency: Annotated[float, typer.Option(help="Median latency of an answer, in seconds.")] = 0.2,
    sigma: Annotated[float, typer.Option(help="Lognormal sigma of the latency (0: fixed).")] = 0.0,
    rpm: Annotated[float | None, typer.Option(help="Rate limit: requests per minute (429 beyond) [default: none].")] = None,
    ipm: Annotated[float | None, typer.Option(help="Rate limit: images per minute (429 beyond) [default: none].")] = None,
    job_latency: Annotated[float, typer.Option(help="Remote jobs (fal, Replicate, BFL): run time of a job, seconds.")] = 0.2,
    job_jitter: Annotated[float, typer.Option(help="Remote jobs: relative jitter of the run time (0.25: +-25%).")] = 0.0,
    retention_scale: Annotated[float, typer.Option(help="Remote jobs: factor on every result lifetime (fal 1 h, "
                                                   "Replicate 1 h, BFL 10 min); 0.001 expires them in seconds.")] = 1.0,
    fal_concurrency: Annotated[int, typer.Option(help="fal: requests running at once; the rest wait IN_QUEUE.")] = 40,
) -> None:
    """Serve the local API emulator until stopped (OpenAI, Azure, Gemini; fal queue, Replicate, BFL, Hugging Face).
    Loopback only; docs/emulator.md lists the routes and controls."""
    from pixelmill.testing import EmulatorConfig, serve

    config = EmulatorConfig(latency=latency, latency_sigma=sigma, rpm=int(rpm) if rpm else None, ipm=int(ipm) if ipm else None,
                            serve_retired=True, job_latency=job_latency, job_jitter=job_jitter,
                            retention_scale=retention_scale, fal_concurrency=fal_concurrency)
    # Printed once bound, from the emulator itself: with --port 0 only it knows the port.
    # The first line's shape is kept as it was (scripts and tests read it); the job APIs get a line of their own.
    serve(config, host="127.0.0.1", port=port, on_ready=lambda emu: typer.echo(
        f"pixelmill emulator on {emu.url} (OpenAI base URL {emu.openai_base_url}); Ctrl-C stops it\n"
        f"fal, Replicate, BFL and Hugging Face: --base-url {emu.jobs_base_url} (docs/emulator.md)"))


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the demo writes its runs.")] = Path("pixelmill-demo"),
) -> None:
    """Rehearse the whole job offline: emulator + generate + edit, with no key and no cost."""
    from pixelmill.demo import run_demo

    raise typer.Exit(run_demo(output))


@app.command()
def models(
    provider: Annotated[str | None, typer.Option(
        help="Only the models this provider serves (openai, azure, gemini, ...) [default: all].")] = None,
    json: Annotated[bool, typer.Option("--json", help="The models as a JSON array of objects.")] = False,
) -> None:
    """Known models: tasks, sizes, limits, prices, retirement dates, aliases. A table on a terminal; one
    tab-separated line per model when piped (`pixelmill models | grep gemini`)."""
    from pixelmill.errors import ConfigError
    from pixelmill.reports.models import print_models

    try:
        print_models(provider, json=json)
    except ConfigError as exc:
        _error(str(exc))
        raise typer.Exit(EXIT_CONFIG) from None


# ---------------------------------------------------------------- spend and visibility: estimate, status, gallery
_PIPELINE_SUFFIXES = (".yaml", ".yml")
# The options `estimate` takes for a pipeline file (the budget and what selects rows); the rest are the file's.
_PIPELINE_OPTIONS = ("output", "limit", "max_cost", "retry_failed", "restart", "restart_step", "batch")


def _estimate(input: Path, task: str = "generate", json: bool = False, **kwargs: Any) -> int:
    import orjson

    from pixelmill.errors import ConfigError
    from pixelmill.reports.estimate import describe, estimate

    options = _split(kwargs, JobOptions)

    def config() -> Any:
        if task not in get_args(Task):
            raise ConfigError(f"--task {task!r}: use {_TASKS}")
        if input.suffix.lower() not in _PIPELINE_SUFFIXES:
            return build_config(task, input, options)
        # A pipeline file: its steps, models and limits are the file's; only what `run` takes may be given.
        ignored = [name for name in changed_options(options) if name not in _PIPELINE_OPTIONS]
        if ignored:
            raise ConfigError(f"{input} is a pipeline file: its steps, models and limits come from the file; "
                              f"remove {', '.join('--' + k.replace('_', '-') for k in ignored)}")
        return pipeline_config(input, PipelineOptions(**{name: getattr(options, name) for name in _PIPELINE_OPTIONS}))

    def show() -> int:
        run = config()
        result = estimate(run)
        if json:
            typer.echo(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode())
        else:
            for line in describe(result, run):
                typer.echo(line)
        return 0

    return _guarded(show, options.api_key)


_TASKS = " or ".join(get_args(Task))
_command("estimate", "Requests, images and cost (low, expected, at most) that a run would make, per step; sends "
                     "nothing.", _estimate, [
    inspect.Parameter("input", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[Path, typer.Argument(
        help="Input dataset (.jsonl, .json, .csv, .parquet) or pipeline file (.yaml).", show_default=False)]),
    inspect.Parameter("task", inspect.Parameter.KEYWORD_ONLY, default="generate", annotation=Annotated[
        str, typer.Option(help=f"For an input dataset: {_TASKS}.", rich_help_panel=INPUT)]),
], JobOptions, last=[
    inspect.Parameter("json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--json", help="The estimate as JSON.", rich_help_panel=OUTPUT)]),
])


@app.command()
def status(
    rundir: Annotated[Path, typer.Argument(help="The run directory (the --output of the run).", show_default=False)],
    json: Annotated[bool, typer.Option("--json", help="The status as JSON.")] = False,
) -> None:
    """Done / failed / pending per step, spend, failure reasons, and the command that resumes the run."""
    import orjson

    from pixelmill.errors import ConfigError
    from pixelmill.reports.status import describe, read_status

    try:
        state = read_status(rundir)
    except ConfigError as exc:
        _error(str(exc))
        raise typer.Exit(EXIT_CONFIG) from None
    if json:
        typer.echo(orjson.dumps(state.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in describe(state):
            typer.echo(line)


@app.command()
def gallery(
    rundir: Annotated[Path, typer.Argument(help="The run directory (the --output of the run).", show_default=False)],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="The page [default: RUNDIR/gallery.html].")] = None,
    thumbnails: Annotated[str, typer.Option(help="auto, embed (one file) or files (a folder beside the page).")] = "auto",
    max_rows: Annotated[int, typer.Option(help="Cards on the page at most (the first rows).")] = 50_000,
) -> None:
    """One self-contained HTML page to review the run offline: thumbnails at a density you choose, a lightbox,
    filters (status, error kind, step, model), sort (row, cost, time), keep/reject marks exported for `export`."""
    from pixelmill.errors import ConfigError
    from pixelmill.reports.gallery.page import write_gallery

    try:
        if thumbnails not in ("auto", "embed", "files"):
            raise ConfigError(f"--thumbnails {thumbnails!r}: use auto, embed or files")
        result = write_gallery(rundir, output, thumbnails=thumbnails, max_rows=max_rows)  # type: ignore[arg-type]
    except ConfigError as exc:
        _error(str(exc))
        raise typer.Exit(EXIT_CONFIG) from None
    typer.echo(f"gallery: {result.path} ({result.cards} rows, {result.images} thumbnails)")


@app.command()
def cancel(
    rundir: Annotated[Path, typer.Argument(help="The run directory (the --output of the run).", show_default=False)],
) -> None:
    """Cancel a run's live remote jobs (fal, Replicate, ...) and batches (--batch): their rows go back to pending,
    and running the same command again submits them anew. Jobs that had already finished are kept, for that re-run
    to collect; a cancelled batch is collected at once (lines it answered before the cancel are kept). Keys come
    from the environment, as for the run; refused while a run is using RUNDIR (stop it first)."""
    import asyncio

    from pixelmill.engine.cancel import cancel_run
    from pixelmill.errors import ConfigError

    try:
        report = asyncio.run(cancel_run(rundir, os.environ))
    except ConfigError as exc:
        _error(str(exc))
        raise typer.Exit(EXIT_CONFIG) from None
    for line in report.lines():
        typer.echo(line)
    raise typer.Exit(report.exit_code)


@app.command()
def push(
    rundir: Annotated[Path, typer.Argument(help="The run directory (the --output of the run).", show_default=False)],
    repo_id: Annotated[str, typer.Argument(metavar="OWNER/NAME", help="The dataset on the Hub.", show_default=False)],
    public: Annotated[bool, typer.Option("--public", help="Make a new dataset public [default: private].")] = False,
) -> None:
    """Publish a run as a Hugging Face Hub dataset: its rows with the images embedded (Parquet) and a dataset card
    (models, parameters, counts, cost). The token comes from HF_TOKEN or `hf auth login`."""
    from pixelmill.errors import ConfigError, PublishError
    from pixelmill.reports.publish import push_run

    try:
        result = push_run(rundir, repo_id, public=public)
    except ConfigError as exc:
        _error(str(exc))
        raise typer.Exit(EXIT_CONFIG) from None
    except PublishError as exc:
        _error(str(exc))
        raise typer.Exit(3) from None
    typer.echo(f"pushed {result.rows} rows to {result.url} ({'private' if result.private else 'public'})")


@app.command()
def export(
    rundir: Annotated[Path, typer.Argument(help="The run directory (the --output of the run).", show_default=False)],
    keep: Annotated[Path, typer.Option("--keep", help="The marks file the gallery exported (JSONL).",
                                       show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="A new or empty folder for the kept rows.",
                                         show_default=False)],
    unmarked: Annotated[str, typer.Option(help="Rows without a mark: drop, or keep (then only rejects go).")] = "drop",
    link: Annotated[bool, typer.Option("--link", help="Hard-link the images instead of copying them.")] = False,
) -> None:
    """The rows marked keep in the gallery, with their images, as an output of their own (rows found by identity)."""
    from pixelmill.errors import ConfigError
    from pixelmill.reports.status import load_config, open_journal
    from pixelmill.writing.export import export_kept, read_marks

    try:
        if unmarked not in ("drop", "keep"):
            raise ConfigError(f"--unmarked {unmarked!r}: use drop or keep")
        marks = read_marks(keep)
        journal = open_journal(rundir)
        try:
            config = load_config(journal)
            if config is None:
                raise ConfigError(f"{rundir}: the journal holds no readable configuration; run the job again")
            result = export_kept(config, journal, rundir, marks, output, unmarked=unmarked,  # type: ignore[arg-type]
                                 link=link)
        finally:
            journal.close()
    except ConfigError as exc:
        _error(str(exc))
        raise typer.Exit(EXIT_CONFIG) from None
    if result.unmatched:
        sys.stderr.write(f"pixelmill: notice: {result.unmatched} of {len(marks)} marks name no row of {rundir} "
                         "(marks of another run, or rows since removed from the source): left out\n")
    typer.echo(f"export: {result.kept} of {result.rows} rows kept, {result.files} images "
               f"{'linked' if link else 'copied'}: {result.output}")


def main() -> None:
    """Console entry point."""
    if os.environ.get("PIXELMILL_TRACEBACK"):
        app()
        return
    try:
        app()
    except KeyboardInterrupt:
        _error("interrupted")
        sys.exit(3)
