"""The `pixelmill` command. Errors become one clear line and an exit code (DESIGN 2.1):
0 every row done; 1 some rows failed (recorded); 2 usage or configuration error, nothing sent;
3 aborted (authentication, quota, budget, interrupted).

Heavy modules (pydantic, aiohttp, the engine) are imported inside the commands, so `pixelmill --help` is quick.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="pixelmill",
    help="Datasets of prompts and images in, datasets of generated and edited images out: in bulk, resumable, "
    "paid once.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_CONFIG = 2

# ---------------------------------------------------------------- the options of generate / edit / estimate
Input = Annotated[Path, typer.Argument(help="Input dataset: .jsonl, .json, .csv, .parquet, a saved HF dataset folder, or hf:name:split.", show_default=False)]
Output = Annotated[Path | None, typer.Option("--output", "-o", help="Run directory [default: pixelmill-out/<input stem>].")]
Fmt = Annotated[str, typer.Option("--format", help="Output format: jsonl, parquet or hf (a saved Hugging Face dataset).")]
Limit = Annotated[int | None, typer.Option(help="Only the first N rows.")]
ProviderOpt = Annotated[str, typer.Option("--provider", help="openai, azure, gemini, openai-compatible, diffusers, emulator.")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Model name, alias or preset (fast, base, best); Azure: the deployment.")]
BaseUrl = Annotated[str | None, typer.Option("--base-url", help="API base URL (gateways, compatible servers).")]
ApiKey = Annotated[str | None, typer.Option("--api-key", help="API key (default: the provider's environment variable).", show_default=False)]
BaseModel = Annotated[str | None, typer.Option("--base-model", help="Azure: the model behind the deployment, for rules and prices.")]
ApiVersion = Annotated[str | None, typer.Option("--api-version", help="Azure API version (default: OPENAI_API_VERSION).")]
Str = Annotated[str | None, typer.Option()]
Int = Annotated[int | None, typer.Option()]
Float = Annotated[float | None, typer.Option()]


def _job(
    task: str,
    input: Input,
    output: Output = None,
    format: Fmt = "jsonl",
    limit: Limit = None,
    provider: ProviderOpt = "openai",
    model: ModelOpt = None,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    base_model: BaseModel = None,
    api_version: ApiVersion = None,
    prompt_field: Annotated[str | None, typer.Option(help="Field holding the prompt [default: prompt, else conversations].")] = None,
    prompt_template: Annotated[str | None, typer.Option(help='Prompt template over the row\'s fields, e.g. "A photo of {product}".')] = None,
    image_field: Annotated[str | None, typer.Option(help="Field holding input image(s) [default: images].")] = None,
    mask_field: Annotated[str | None, typer.Option(help="Field holding the mask (PNG, transparent = edit).")] = None,
    id_field: Annotated[str | None, typer.Option(help="Field whose value names the row's image files.")] = None,
    output_field: Annotated[str | None, typer.Option(help="Output field [default: images / output_image].")] = None,
    name_template: Annotated[str | None, typer.Option(help='Image file names below RUNDIR/images, e.g. "{key}_{field}_{i}" [default: {step}/{key}_{i}].')] = None,
    n: Annotated[int | None, typer.Option("--n", help="Images per row.")] = None,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT or auto.")] = None,
    aspect_ratio: Annotated[str | None, typer.Option(help="W:H, e.g. 16:9.")] = None,
    resolution: Annotated[str | None, typer.Option(help="512, 1K, 2K or 4K.")] = None,
    quality: Annotated[str | None, typer.Option(help="low, medium, high, auto (or the model's own: hd, standard).")] = None,
    style: Str = None,
    background: Annotated[str | None, typer.Option(help="transparent, opaque or auto.")] = None,
    output_format: Annotated[str | None, typer.Option(help="png, jpeg or webp.")] = None,
    compression: Annotated[int | None, typer.Option(help="0-100, for jpeg and webp.")] = None,
    seed: Int = None,
    steps: Annotated[int | None, typer.Option(help="Inference steps (local models).")] = None,
    guidance_scale: Float = None,
    negative_prompt: Str = None,
    moderation: Str = None,
    input_fidelity: Str = None,
    param: Annotated[list[str] | None, typer.Option(help="KEY=VALUE passed to the provider unchanged (repeatable).")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 16,
    batch_size: Annotated[int | None, typer.Option(help="Local models: rows per pipeline call.")] = None,
    devices: Annotated[str | None, typer.Option(help="Local models: auto, a GPU count, cuda:0,cuda:1, cpu or mps.")] = None,
    rpm: Annotated[float | None, typer.Option(help="Requests per minute at most.")] = None,
    ipm: Annotated[float | None, typer.Option(help="Images per minute at most.")] = None,
    max_retries: Annotated[int, typer.Option(help="Retries of transient errors per call (429s: bounded by --deadline).")] = 5,
    timeout: Annotated[float, typer.Option(help="Seconds for one request.")] = 300.0,
    deadline: Annotated[float, typer.Option(help="Seconds for one row, retries included.")] = 600.0,
    max_cost: Annotated[float | None, typer.Option(help="Budget in USD for this run directory, across resumes.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Also re-request rows that failed.")] = False,
    restart: Annotated[bool, typer.Option(help="Discard the run in the output folder and start over.")] = False,
    embed_images: Annotated[bool, typer.Option(help="Images as data URLs in the output instead of file paths.")] = False,
    allow_private_urls: Annotated[bool, typer.Option(help="Let input image URLs point at private or loopback addresses.")] = False,
    models_file: Annotated[Path | None, typer.Option(help="A TOML model table laid over the built-in one.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    options = {k: v for k, v in locals().items() if k not in ("task", "input", "quiet")}
    code = _run_job(task, input, options, quiet=quiet)
    raise typer.Exit(code)


def _command(task: str, doc: str) -> Any:
    """A command with `_job`'s options, bound to `task` (one option list for generate and edit)."""
    import inspect

    def command(**kwargs: Any) -> None:
        _job(task, **kwargs)

    sig = inspect.signature(_job, eval_str=True)
    command.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])  # type: ignore[attr-defined]
    command.__name__ = task
    command.__doc__ = doc
    return command


app.command("generate")(_command("generate", "Text-to-image over every record of INPUT."))
app.command("edit")(_command("edit", "Image editing over every record of INPUT (input images + instruction; "
                                     "several user messages make a multi-turn edit)."))


# Provider settings of local models that --param may also give (they configure the provider, not a request).
LOCAL_OPTIONS = ("batch_size", "devices", "dtype", "scheduler", "attention_slicing", "vae_tiling", "cpu_offload",
                 "batch_window", "variant")


def job_options(**overrides: Any) -> dict[str, Any]:
    """The options of generate/edit with their command-line defaults, updated by `overrides` (for the demo,
    the Python API and tests: one list of options, the command line's)."""
    import inspect

    options: dict[str, Any] = {
        name: p.default for name, p in inspect.signature(_job).parameters.items()
        if name not in ("task", "input", "quiet")
    }
    unknown = set(overrides) - set(options) - {"engine"}  # engine: Limits fields with no flag
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    options.update(overrides)
    return options


def _parse_params(pairs: list[str] | None) -> dict[str, Any]:
    import orjson

    from pixelmill.errors import ConfigError

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            out[key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            out[key] = value
    return out


def build_config(task: str, input: Path, options: dict[str, Any]) -> Any:
    """The RunConfig of a generate/edit command line (pydantic errors become ConfigError with the flag)."""
    from pydantic import ValidationError

    from pixelmill.config import Limits, ModelRef, RunConfig, StepConfig
    from pixelmill.errors import ConfigError
    from pixelmill.models.table import builtin_table
    from pixelmill.params import ImageParams

    o = dict(options)
    provider = o["provider"]
    model = o["model"]
    if model is None:
        model = {"gemini": "gemini-3.1-flash-image", "diffusers": None}.get(provider, "gpt-image-2")
        if model is None:
            raise ConfigError("--provider diffusers needs --model PATH_OR_HUB_ID")
    extra = _parse_params(o["param"])
    model_options = {k: extra.pop(k) for k in list(extra) if k in LOCAL_OPTIONS}
    for name in ("batch_size", "devices"):
        if o.get(name) is not None:
            model_options[name] = o[name]
    try:
        params = ImageParams(
            n=o["n"], size=o["size"], aspect_ratio=o["aspect_ratio"], resolution=o["resolution"],
            quality=o["quality"], style=o["style"], background=o["background"], output_format=o["output_format"],
            compression=o["compression"], seed=o["seed"], steps=o["steps"], guidance_scale=o["guidance_scale"],
            negative_prompt=o["negative_prompt"], moderation=o["moderation"], input_fidelity=o["input_fidelity"],
            extra=extra,
        )
        step = StepConfig(
            name=task, task=task,  # type: ignore[arg-type]
            model=ModelRef(provider=provider, model=model, base_url=o["base_url"], base_model=o["base_model"],
                           api_version=o["api_version"], options=model_options),
            prompt=o["prompt_template"], prompt_field=o["prompt_field"], image_field=o["image_field"],
            mask_field=o["mask_field"], output_field=o["output_field"], name_template=o["name_template"],
            params=params,
        )
        config = RunConfig(
            source=input, output=o["output"] or Path("pixelmill-out") / input.stem, steps=(step,),
            limits=Limits(concurrency=o["concurrency"], rpm=o["rpm"], ipm=o["ipm"], max_retries=o["max_retries"],
                          timeout=o["timeout"], deadline=o["deadline"], max_cost=o["max_cost"],
                          **o.get("engine", {})),
            id_field=o["id_field"], format=o["format"], limit=o["limit"], embed_images=o["embed_images"],
            retry_failed=o["retry_failed"], restart=o["restart"], allow_private_urls=o["allow_private_urls"],
            api_key=o["api_key"], models_file=o["models_file"],
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][-1]).replace("_", "-") if first["loc"] else "an option"
        raise ConfigError(f"{flag}: {first['msg']}") from None
    if o["prompt_template"] is not None:
        from pixelmill.reading.records import template_fields

        template_fields(o["prompt_template"])
    if not input.exists() and not str(input).startswith("hf:"):
        raise ConfigError(f"input file {input} does not exist")
    builtin_table()  # fail early on a broken table
    return config


def _run_job(task: str, input: Path, options: dict[str, Any], *, quiet: bool) -> int:
    from pixelmill.errors import ConfigError, redact

    try:
        config = build_config(task, input, options)
        return _execute(config, quiet=quiet)
    except ConfigError as exc:
        _error(redact(str(exc), (options.get("api_key") or "",)))
        return EXIT_CONFIG


def _execute(config: Any, *, quiet: bool) -> int:
    from pixelmill.api import emulated, run_config
    from pixelmill.engine.stats import RunStats
    from pixelmill.reports.progress import Progress
    from pixelmill.reports.status import rebuild_command, remember_command

    stats = RunStats()
    progress = Progress(stats, quiet=quiet, config=config)
    resume = rebuild_command(config)  # before `emulated` rewrites the provider: resuming starts an emulator too
    with emulated(config) as config, progress:
        report = run_config(config, stats=stats, notice=progress.notice, handle_signals=True)
    remember_command(config.output, resume)
    progress.summary(report, config)
    return report.exit_code


def _error(message: str) -> None:
    sys.stderr.write(f"pixelmill: error: {message}\n")


@app.command("run")
def run_pipeline(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline file (YAML).", show_default=False)],
    output: Output = None,
    format: Annotated[str | None, typer.Option("--format", help="Output format: jsonl or parquet.")] = None,
    limit: Limit = None,
    api_key: ApiKey = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight.")] = None,
    rpm: Annotated[float | None, typer.Option(help="Requests per minute at most.")] = None,
    ipm: Annotated[float | None, typer.Option(help="Images per minute at most.")] = None,
    max_retries: Annotated[int | None, typer.Option(help="Retries of transient errors per call.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds for one request.")] = None,
    deadline: Annotated[float | None, typer.Option(help="Seconds for one row, retries included.")] = None,
    max_cost: Annotated[float | None, typer.Option(help="Budget in USD for this run directory, across resumes.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Also re-request rows that failed.")] = False,
    restart: Annotated[bool, typer.Option(help="Discard the run in the output folder and start over.")] = False,
    embed_images: Annotated[bool, typer.Option(help="Images as data URLs in the output.")] = False,
    allow_private_urls: Annotated[bool, typer.Option(help="Let input image URLs point at private addresses.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """A multi-step pipeline from a YAML file (source, models, limits, steps)."""
    from pixelmill.errors import ConfigError, redact

    try:
        config = pipeline_config(pipeline, locals())
        code = _execute(config, quiet=quiet)
    except ConfigError as exc:
        _error(redact(str(exc), (api_key or "",)))
        code = EXIT_CONFIG
    raise typer.Exit(code)


def pipeline_config(path: Path, options: dict[str, Any]) -> Any:
    """The RunConfig of a pipeline file with the command line's overrides."""
    from pixelmill.pipeline import load_pipeline

    limit_keys = ("concurrency", "rpm", "ipm", "max_retries", "timeout", "deadline", "max_cost")
    overrides = {
        "output": options.get("output"), "format": options.get("format"), "limit": options.get("limit"),
        "api_key": options.get("api_key"), "retry_failed": options.get("retry_failed") or None,
        "restart": options.get("restart") or None, "embed_images": options.get("embed_images") or None,
        "allow_private_urls": options.get("allow_private_urls") or None,
        "limits": {k: options.get(k) for k in limit_keys},
    }
    return load_pipeline(path, overrides)


@app.command()
def emulate(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port).")] = 8765,
    latency: Annotated[float, typer.Option(help="Median latency of an answer, in seconds.")] = 0.2,
    sigma: Annotated[float, typer.Option(help="Lognormal sigma of the latency (0: fixed).")] = 0.0,
    rpm: Annotated[float | None, typer.Option(help="Rate limit: requests per minute (429 beyond).")] = None,
    ipm: Annotated[float | None, typer.Option(help="Rate limit: images per minute (429 beyond).")] = None,
) -> None:
    """Serve the local API emulator (OpenAI, Azure and Gemini wire formats) until stopped. Loopback only."""
    from pixelmill.testing import EmulatorConfig, serve

    config = EmulatorConfig(latency=latency, latency_sigma=sigma, rpm=int(rpm) if rpm else None, ipm=int(ipm) if ipm else None,
                            serve_retired=True)
    # Printed once bound, from the emulator itself: with --port 0 only it knows the port.
    serve(config, host="127.0.0.1", port=port, on_ready=lambda emu: typer.echo(
        f"pixelmill emulator on {emu.url} (OpenAI base URL {emu.openai_base_url}); Ctrl-C stops it"))


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the demo writes its runs.")] = Path("pixelmill-demo"),
) -> None:
    """Rehearse the whole job offline: emulator + generate + edit, with no key and no cost."""
    from pixelmill.demo import run_demo

    raise typer.Exit(run_demo(output))


@app.command()
def models(
    provider: Annotated[str | None, typer.Option(help="Only this provider's family (openai, gemini, ...).")] = None,
) -> None:
    """Known models: tasks, sizes, limits, prices, retirement dates, aliases."""
    from pixelmill.reports.models import print_models

    print_models(provider)


# ---------------------------------------------------------------- spend and visibility: estimate, status, gallery
_PIPELINE_SUFFIXES = (".yaml", ".yml")
# The options a pipeline file takes from the command line (as `run` does); the rest are the file's.
_PIPELINE_OPTIONS = ("output", "limit", "api_key", "max_cost", "retry_failed", "restart")


def _estimate(input: Path, task: str, as_json: bool, options: dict[str, Any]) -> int:
    import orjson

    from pixelmill.errors import ConfigError, redact
    from pixelmill.reports.estimate import describe, estimate

    try:
        if task not in ("generate", "edit"):
            raise ConfigError(f"--task {task!r}: use generate or edit")
        if input.suffix.lower() in _PIPELINE_SUFFIXES:
            defaults = job_options()
            ignored = sorted(k for k, v in options.items() if k not in _PIPELINE_OPTIONS and v != defaults.get(k))
            if ignored:
                raise ConfigError(f"{input} is a pipeline file: its steps, models and limits come from the file; "
                                  f"remove {', '.join('--' + k.replace('_', '-') for k in ignored)}")
            config = pipeline_config(input, {k: options.get(k) for k in _PIPELINE_OPTIONS})
        else:
            config = build_config(task, input, options)
        result = estimate(config)
    except ConfigError as exc:
        _error(redact(str(exc), (options.get("api_key") or "",)))
        return EXIT_CONFIG
    if as_json:
        typer.echo(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in describe(result, config):
            typer.echo(line)
    return 0


def _estimate_command() -> Any:
    """`estimate` takes generate/edit's options (the same `_job` signature), plus --task and --json."""
    import inspect

    def command(input: Path, task: str, json: bool, **kwargs: Any) -> None:
        raise typer.Exit(_estimate(input, task, json, kwargs))

    sig = inspect.signature(_job, eval_str=True)
    keep = [p for name, p in sig.parameters.items() if name not in ("task", "input", "quiet")]
    first = [
        inspect.Parameter("input", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[Path, typer.Argument(
            help="Input dataset (.jsonl, .json, .csv, .parquet) or pipeline file (.yaml).", show_default=False)]),
        inspect.Parameter("task", inspect.Parameter.KEYWORD_ONLY, default="generate", annotation=Annotated[
            str, typer.Option(help="For an input dataset: generate or edit.")]),
        inspect.Parameter("json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option("--json", help="The estimate as JSON.")]),
    ]
    keep = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in keep]
    command.__signature__ = sig.replace(parameters=[*first, *keep])  # type: ignore[attr-defined]
    command.__name__ = "estimate"
    command.__doc__ = ("Requests, images and cost (low, expected, at most) that a run would make, per step; "
                       "sends nothing.")
    return command


app.command("estimate")(_estimate_command())


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
    max_rows: Annotated[int, typer.Option(help="Cards on the page at most (the first rows).")] = 5000,
) -> None:
    """One self-contained HTML page of the run: thumbnails beside prompts, model, cost and status; filters and
    search that work offline."""
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
