"""The options of `generate`, `edit`, `run` and `estimate`: declared once, typed, and turned into a `RunConfig`.

- `JobOptions`: every option of generate / edit (and estimate), with its default, its help text, its `--help`
  panel (`PANELS`: input, model and image parameters, limits and spend, output, run control) and whether only a
  run reads it (`estimate` leaves those out). The command line builds its flags from these fields (cli.py maps
  no option by hand); the Python API, the demo and the DataFlow compatibility layer fill the same fields
  (`job_options(**overrides)`).
- `PipelineOptions`: what `run PIPELINE.yaml` takes from the command line; every value left unset keeps the
  file's.
- `build_config` / `pipeline_config`: the `RunConfig` the engine runs; every mistake is a `ConfigError` naming the
  flag (or the file, step and key).
- `command_line`: the inverse, the command that resumes a run (`status` shows it).

Defaults come from `defaults.py`. This module stays free of typer and pydantic at import time, so that the command
line's `--help` is quick; the configuration models are imported when a configuration is built.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pixelmill import defaults

if TYPE_CHECKING:
    from pixelmill.config import RunConfig

Task = Literal["generate", "edit"]


# The panels of `--help`, in the order they are shown; each field names its own, so that every command that
# takes the field shows it in the same panel.
INPUT = "Input"
MODEL = "Model and image parameters"
LIMITS = "Limits and spend"
OUTPUT = "Output"
RUN = "Run control"
PANELS = (INPUT, MODEL, LIMITS, OUTPUT, RUN)


def option(default: Any, help: str, *flags: str, panel: str | None = None, run_only: bool = False) -> Any:
    """A field of an options class: its default, its help text, the `--help` panel it is shown in and, where
    the flag is not `--<name>`, its flags. A default the field cannot hold (None standing for "the input's
    stem") is written in the help as `[default: ...]`. `run_only`: the option changes how a run sends or
    writes, never what it would cost, so `estimate` does not offer it."""
    return field(default=default, metadata={"help": help, "flags": flags, "panel": panel, "run_only": run_only})


# The Python API's own option (the command line shows progress unless -q).
PROGRESS_HELP = ("Python API: show progress while the run goes (an HTML display updated in place in a notebook, "
                 "the terminal display elsewhere).")


def _formats() -> str:
    *first, last = defaults.OUTPUT_FORMATS
    return f"{', '.join(first)} or {last}"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobOptions:
    """The options of generate / edit / estimate, in command-line order."""

    output: Path | None = option(None, f"Run directory [default: {defaults.OUTPUT_ROOT}/<input stem>].",
                                 "--output", "-o", panel=OUTPUT)
    format: str = option("jsonl", f"Output format: {_formats()} (a saved Hugging Face dataset).", panel=OUTPUT,
                         run_only=True)
    limit: int | None = option(None, "Only the first N rows.", panel=INPUT)
    provider: str = option(defaults.DEFAULT_PROVIDER, ", ".join(defaults.DEFAULT_MODEL) + ".", panel=MODEL)
    model: str | None = option(
        None, f"Model name, alias or preset (fast, base, best); Azure: the deployment [default: {defaults.MODEL} "
        f"for openai, {defaults.DEFAULT_MODEL['gemini']} for gemini].", "--model", "-m", panel=MODEL)
    base_url: str | None = option(None, "API base URL (gateways, compatible servers) [default: the provider's].",
                                  panel=MODEL)
    api_key: str | None = option(None, "API key [default: the provider's environment variable].", panel=MODEL,
                                 run_only=True)
    base_model: str | None = option(None, "Azure: the model behind the deployment, for rules and prices.",
                                    panel=MODEL)
    api_version: str | None = option(None, "Azure API version [default: OPENAI_API_VERSION].", panel=MODEL)
    prompt_field: str | None = option(None, "Field holding the prompt [default: prompt, else conversations].",
                                      panel=INPUT)
    prompt_template: str | None = option(None, 'Prompt template over the row\'s fields, e.g. "A photo of {product}".',
                                         panel=INPUT)
    image_field: str | None = option(None, "Field holding input image(s) [default: images].", panel=INPUT)
    mask_field: str | None = option(None, "Field holding the mask (PNG, transparent = edit).", panel=INPUT)
    id_field: str | None = option(None, "Field whose value names the row's image files [default: the row's "
                                        "position].", panel=INPUT)
    output_field: str | None = option(None, "Output field [default: images for generate, output_image for edit].",
                                      panel=OUTPUT)
    name_template: str | None = option(
        None, 'Image file names below RUNDIR/images, e.g. "{key}_{field}_{i}" [default: {step}/{key}_{i}].',
        panel=OUTPUT)
    n: int | None = option(None, "Images per row [default: 1].", "--n", panel=MODEL)
    size: str | None = option(None, "WIDTHxHEIGHT or auto.", panel=MODEL)
    aspect_ratio: str | None = option(None, "W:H, e.g. 16:9.", panel=MODEL)
    resolution: str | None = option(None, "512, 1K, 2K or 4K.", panel=MODEL)
    quality: str | None = option(None, "low, medium, high, auto (or the model's own: hd, standard).", panel=MODEL)
    style: str | None = option(None, "vivid or natural (dall-e-3).", panel=MODEL)
    background: str | None = option(None, "transparent, opaque or auto.", panel=MODEL)
    output_format: str | None = option(None, "png, jpeg or webp.", panel=MODEL)
    compression: int | None = option(None, "0-100, for jpeg and webp.", panel=MODEL)
    seed: int | None = option(None, "Seed (models that take one; local models: per image).", panel=MODEL)
    steps: int | None = option(None, "Inference steps (local models).", panel=MODEL)
    guidance_scale: float | None = option(None, "Guidance scale (local models).", panel=MODEL)
    negative_prompt: str | None = option(None, "What the image should not show (models that take it).", panel=MODEL)
    moderation: str | None = option(None, "low or auto (GPT image models).", panel=MODEL)
    input_fidelity: str | None = option(None, "low or high (GPT image edits).", panel=MODEL)
    param: list[str] | None = option(None, "KEY=VALUE passed to the provider unchanged (repeatable).", panel=MODEL)
    concurrency: int = option(defaults.CONCURRENCY, "Requests in flight.", panel=LIMITS, run_only=True)
    batch_size: int | None = option(None, "Local models: rows per pipeline call [default: 1].", panel=LIMITS,
                                    run_only=True)
    devices: str | None = option(None, "Local models: auto, a GPU count, cuda:0,cuda:1, cpu or mps "
                                       "[default: auto].", panel=LIMITS, run_only=True)
    rpm: float | None = option(None, "Requests per minute at most [default: learned from 429s and rate-limit "
                                     "headers].", panel=LIMITS, run_only=True)
    ipm: float | None = option(None, "Images per minute at most [default: learned from 429s and rate-limit "
                                     "headers].", panel=LIMITS, run_only=True)
    deployment: list[str] | None = option(
        None, "Spread calls over several keys or endpoints, each with its own limits (repeatable): KEY=VALUE pairs "
        "joined by commas, KEY one of name, api_key_env (the variable that holds the key, never the key), "
        'base_url, deployment (Azure), api_version, rpm, ipm, concurrency; e.g. "name=east, api_key_env=KEY_EAST, '
        'ipm=60".', panel=LIMITS, run_only=True)
    max_retries: int = option(defaults.MAX_RETRIES,
                              "Retries of transient errors per call (429s: bounded by --deadline).", panel=LIMITS,
                              run_only=True)
    max_billed_retries: int = option(
        defaults.MAX_BILLED_RETRIES,
        "Retries of a call that may have been billed without a usable answer (0: never).", panel=LIMITS,
        run_only=True)
    timeout: float | None = option(
        None, f"Seconds for one request [default: the model's, from the model table, else {defaults.TIMEOUT:g}].",
        panel=LIMITS, run_only=True)
    deadline: float | None = option(
        None, f"Seconds for one call with its retries and 429 waits [default: {defaults.DEADLINE:g}, or twice the "
        "timeout plus a minute when longer].", panel=LIMITS, run_only=True)
    max_cost: float | None = option(None, "Budget in USD for this run directory, across resumes [default: none].",
                                    panel=LIMITS)
    retry_failed: bool = option(False, "Also re-request rows that failed.", panel=RUN)
    batch: bool = option(False, "Send rows through the provider's batch API (OpenAI, Gemini): half price, answered "
                                "within 24 h; re-running the same command collects.", panel=RUN)
    detach: bool = option(False, "With --batch: submit the batches and exit 4; run the same command again to "
                                 "collect.", panel=RUN)
    ray: bool = option(False, "Send the calls from a Ray cluster: the one RAY_ADDRESS names, else a local one "
                              "(pip install 'pixelmill[ray]'); RUNDIR stays on this machine.", panel=RUN,
                       run_only=True)
    restart: bool = option(False, "Discard the run in the output folder and start over.", panel=RUN)
    restart_step: list[str] | None = option(
        None, "Make step NAME (generate or edit here) again, with the steps that read it (repeatable).", panel=RUN)
    verify_images: bool = option(False, "Also decode every image of the rows done earlier (slower than the "
                                        "size check a resume always makes); broken ones are made again.", panel=RUN,
                                 run_only=True)
    report_broken: bool = option(False, "Done rows whose image files are missing or broken are only reported "
                                        "(pixelmill.broken_files), not sent again.", panel=RUN, run_only=True)
    embed_images: bool = option(False, "Images in the output instead of file paths: data URLs in JSONL, bytes "
                                "in Parquet and HF.", panel=OUTPUT, run_only=True)
    allow_private_urls: bool = option(False, "Let input image URLs point at private or loopback addresses.",
                                      panel=INPUT, run_only=True)
    allow_path: list[Path] | None = option(
        None, "A folder (besides the input file's) whose image files rows may name (repeatable).", panel=INPUT,
        run_only=True)
    models_file: Path | None = option(None, "A TOML model table laid over the built-in one.", panel=MODEL)
    # Limits fields with no flag (retry_base, retry_cap, drain_timeout): the Python API and tests.
    engine: dict[str, Any] = field(default_factory=dict, metadata={
        "flag": False, "help": "Engine settings with no flag: retry_base, retry_cap, drain_timeout (seconds)."})
    progress: bool = field(default=False, metadata={"flag": False, "help": PROGRESS_HELP})


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineOptions:
    """What `run PIPELINE.yaml` takes from the command line. None (or False) keeps the pipeline file's value."""

    output: Path | None = option(None, "Run directory [default: the file's `output`].", "--output", "-o",
                                 panel=OUTPUT)
    format: str | None = option(None, f"Output format: {_formats()} [default: the file's, else jsonl].",
                                panel=OUTPUT)
    limit: int | None = option(None, "Only the first N rows.", panel=INPUT)
    api_key: str | None = option(None, "API key [default: the provider's environment variable].", panel=MODEL)
    concurrency: int | None = option(None, f"Requests in flight [default: the file's, else {defaults.CONCURRENCY}].",
                                     panel=LIMITS)
    rpm: float | None = option(None, "Requests per minute at most [default: the file's, else learned].",
                               panel=LIMITS)
    ipm: float | None = option(None, "Images per minute at most [default: the file's, else learned].",
                               panel=LIMITS)
    max_retries: int | None = option(
        None, f"Retries of transient errors per call [default: the file's, else {defaults.MAX_RETRIES}].",
        panel=LIMITS)
    max_billed_retries: int | None = option(
        None, "Retries of a call that may have been billed (0: never) [default: the file's, else "
        f"{defaults.MAX_BILLED_RETRIES}].", panel=LIMITS)
    timeout: float | None = option(None, "Seconds for one request [default: the file's, else the model's].",
                                   panel=LIMITS)
    deadline: float | None = option(
        None, f"Seconds for one call, retries included [default: the file's, else {defaults.DEADLINE:g}].",
        panel=LIMITS)
    max_cost: float | None = option(
        None, "Budget in USD for this run directory, across resumes [default: the file's, else none].", panel=LIMITS)
    retry_failed: bool = option(False, "Also re-request rows that failed.", panel=RUN)
    batch: bool = option(False, "Send the rows of every step that can be batched through the provider's batch "
                                "API (OpenAI, Gemini): half price; re-running the same command collects [default: the "
                                "steps with `batch: true`].", panel=RUN)
    detach: bool = option(False, "With batch steps: submit the batches and exit 4; run the same command again to "
                                 "collect.", panel=RUN)
    ray: bool = option(False, "Send the calls from a Ray cluster: the one RAY_ADDRESS names, else a local one "
                              "(pip install 'pixelmill[ray]'); RUNDIR stays on this machine.", panel=RUN)
    restart: bool = option(False, "Discard the run in the output folder and start over.", panel=RUN)
    restart_step: list[str] | None = option(
        None, "Make step NAME again, with the steps that read its outputs; the others keep their done rows "
        "(repeatable).", panel=RUN)
    verify_images: bool = option(False, "Also decode every image of the rows done earlier; broken ones are made "
                                        "again.", panel=RUN)
    report_broken: bool = option(False, "Done rows whose image files are missing or broken are only reported.",
                                 panel=RUN)
    embed_images: bool = option(False, "Images in the output: data URLs in JSONL, bytes in Parquet and HF.",
                                panel=OUTPUT)
    allow_private_urls: bool = option(False, "Let input image URLs point at private addresses.", panel=INPUT)
    allow_path: list[Path] | None = option(
        None, "A folder (besides the source's) whose image files rows may name (repeatable).", panel=INPUT)
    progress: bool = field(default=False, metadata={"flag": False, "help": PROGRESS_HELP})


# The limits a pipeline run takes from the command line, by field name (they are also JobOptions fields).
LIMIT_OPTIONS = ("concurrency", "rpm", "ipm", "max_retries", "max_billed_retries", "timeout", "deadline",
                 "max_cost")
# Provider settings of local models that --param may also give (they configure the provider, not a request;
# ray_resource and ray_actors: with --ray, pixelmill/cluster/local.py).
LOCAL_OPTIONS = ("batch_size", "devices", "dtype", "scheduler", "attention_slicing", "vae_tiling", "cpu_offload",
                 "batch_window", "variant", "ray_resource", "ray_actors")


def job_options(**overrides: Any) -> JobOptions:
    """The options of generate/edit with their defaults, updated by `overrides` (snake_case names; `param` may
    also be a mapping). Unknown names raise `TypeError`."""
    unknown = set(overrides) - {f.name for f in dataclasses.fields(JobOptions)}
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    if isinstance(overrides.get("param"), dict):
        overrides["param"] = [f"{k}={v}" for k, v in overrides["param"].items()]
    if overrides.get("output") is not None:
        overrides["output"] = Path(overrides["output"])
    return JobOptions(**overrides)


def changed_options(options: Any) -> list[str]:
    """The names of the fields of `options` (a JobOptions or PipelineOptions) that differ from their defaults."""
    changed = []
    for f in dataclasses.fields(options):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if getattr(options, f.name) != default:
            changed.append(f.name)
    return changed


def build_config(task: str, input: Path, options: JobOptions, *, input_dir: Path | None = None) -> RunConfig:
    """The RunConfig of generate/edit (pydantic errors become a ConfigError naming the flag). `input_dir`: the
    input is the Python API's spool of in-memory rows (written when the run starts), whose relative paths
    resolve there."""
    from pydantic import ValidationError

    from pixelmill.config import Limits, ModelRef, RunConfig, StepConfig
    from pixelmill.errors import ConfigError
    from pixelmill.models.table import builtin_table
    from pixelmill.params import ImageParams

    o = options
    model = o.model or defaults.default_model(o.provider)
    if model is None:
        raise ConfigError(f"--provider {o.provider} needs --model PATH_OR_HUB_ID")
    extra = _parse_params(o.param)
    model_options = {k: extra.pop(k) for k in list(extra) if k in LOCAL_OPTIONS}
    for name in ("batch_size", "devices"):
        if getattr(o, name) is not None:
            model_options[name] = getattr(o, name)
    try:
        params = ImageParams(
            n=o.n, size=o.size, aspect_ratio=o.aspect_ratio, resolution=o.resolution, quality=o.quality,
            style=o.style, background=o.background, compression=o.compression, seed=o.seed, steps=o.steps,
            guidance_scale=o.guidance_scale, negative_prompt=o.negative_prompt,
            moderation=o.moderation, input_fidelity=o.input_fidelity, extra=extra,
            output_format=o.output_format,  # type: ignore[arg-type]  # checked by the model
        )
        step = StepConfig(
            name=task, task=task,  # type: ignore[arg-type]
            model=ModelRef(provider=o.provider, model=model, base_url=o.base_url, base_model=o.base_model,
                           api_version=o.api_version, options=model_options),
            prompt=o.prompt_template, prompt_field=o.prompt_field, image_field=o.image_field,
            mask_field=o.mask_field, output_field=o.output_field, name_template=o.name_template, params=params,
            deployments=_parse_deployments(o.deployment),
        )
        config = RunConfig(
            source=input, input_dir=input_dir, output=o.output or defaults.OUTPUT_ROOT / input.stem, steps=(step,),
            limits=Limits(**{name: getattr(o, name) for name in LIMIT_OPTIONS}, **o.engine),
            id_field=o.id_field, format=o.format, limit=o.limit,  # type: ignore[arg-type]
            embed_images=o.embed_images, retry_failed=o.retry_failed, restart=o.restart,
            restart_steps=tuple(o.restart_step or ()),
            verify_images=o.verify_images, report_broken=o.report_broken,
            allow_private_urls=o.allow_private_urls, allowed_paths=tuple(o.allow_path or ()), api_key=o.api_key,
            models_file=o.models_file, batch=o.batch or o.detach, detach=o.detach, ray=o.ray,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][-1]).replace("_", "-") if first["loc"] else "an option"
        raise ConfigError(f"{flag}: {first['msg']}") from None
    if o.prompt_template is not None:
        from pixelmill.reading.records import template_fields

        template_fields(o.prompt_template)
    if input_dir is None and not input.exists() and not str(input).startswith("hf:"):
        raise ConfigError(f"input file {input} does not exist")
    builtin_table()  # fail early on a broken table
    return config


def pipeline_config(path: Path | Mapping[str, Any], options: PipelineOptions | None = None,
                    **settings: Any) -> RunConfig:
    """The RunConfig of a pipeline file (or of a mapping with the file's keys) with the command line's
    overrides; `settings` are RunConfig fields the Python API sets (`source`, `input_dir` for in-memory rows)."""
    from pixelmill.pipeline import load_pipeline, pipeline_from_mapping

    o = options or PipelineOptions()
    overrides = {
        "output": o.output, "format": o.format, "limit": o.limit, "api_key": o.api_key,
        "retry_failed": o.retry_failed or None, "restart": o.restart or None,
        "batch": o.batch or o.detach or None, "detach": o.detach or None,
        "restart_steps": tuple(o.restart_step) if o.restart_step else None,
        "verify_images": o.verify_images or None, "report_broken": o.report_broken or None,
        "embed_images": o.embed_images or None, "allow_private_urls": o.allow_private_urls or None,
        "allowed_paths": tuple(o.allow_path) if o.allow_path else None, "ray": o.ray or None,
        "limits": {name: getattr(o, name) for name in LIMIT_OPTIONS},
        **settings,
    }
    if isinstance(path, Mapping):
        return pipeline_from_mapping(path, overrides)
    return load_pipeline(path, overrides)


def _parse_deployments(specs: list[str] | None) -> tuple[Any, ...]:
    """`--deployment "name=east,api_key_env=KEY_EAST,ipm=60"` (repeated): the step's deployments (config.py)."""
    from pydantic import ValidationError

    from pixelmill.config import KEY_LITERAL, Deployment
    from pixelmill.errors import ConfigError

    out = []
    for number, spec in enumerate(specs or [], 1):
        fields: dict[str, str] = {}
        for pair in spec.split(","):
            key, sep, value = pair.strip().partition("=")
            if key in ("api_key", "key", "token"):  # the value is never repeated: it may be a key
                raise ConfigError(f"--deployment #{number}: {KEY_LITERAL}")
            if not sep or not key or key not in Deployment.model_fields:
                got = f"; got {key!r}" if sep else ""  # a pair without `=` is not echoed: it may be a pasted key
                raise ConfigError(f"--deployment #{number}: expected KEY=VALUE pairs separated by commas, with KEY "
                                  f"one of {', '.join(Deployment.model_fields)}{got}")
            fields[key] = value
        try:
            out.append(Deployment(**fields))  # type: ignore[arg-type]  # pydantic parses the numbers
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            raise ConfigError(f"--deployment #{number}: {where + ': ' if where else ''}{message}") from None
    return tuple(out)


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


# ---------------------------------------------------------------- the inverse: the command that resumes a run
def command_line(config: RunConfig) -> str | None:
    """The command line of a configuration: `generate` / `edit` for one step, `run PIPELINE` for a pipeline
    read from a file (never a key, never --restart, which a resume must not repeat); None otherwise."""
    import orjson

    from pixelmill.netpolicy import strip_userinfo

    if config.pipeline:
        if not config.origin:
            return None
        args = ["pixelmill", "run", config.origin, "-o", str(config.output)]
        for flag, value in (("--limit", config.limit), ("--max-cost", config.limits.max_cost)):
            if value is not None:
                args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        if config.ray:
            args.append("--ray")
        return shlex.join(args)
    if len(config.steps) != 1:
        return None

    step = config.steps[0]
    args = ["pixelmill", step.task if step.task != "auto" else "edit", str(config.source), "-o", str(config.output)]
    ref = step.model
    args += ["--provider", ref.provider, "--model", ref.model]
    values: list[tuple[str, Any]] = [
        ("--base-url", ref.base_url and strip_userinfo(ref.base_url)),  # never a password in a shown command
        ("--base-model", ref.base_model), ("--api-version", ref.api_version),
        ("--prompt-field", step.prompt_field), ("--prompt-template", step.prompt),
        ("--image-field", step.image_field), ("--mask-field", step.mask_field), ("--id-field", config.id_field),
        ("--output-field", step.output_field), ("--limit", config.limit),
        ("--format", config.format if config.format != "jsonl" else None),
        ("--models-file", config.models_file),
    ]
    params = step.params.model_dump(exclude_none=True)
    extra = {**params.pop("extra", {}), **ref.options}
    for name, value in params.items():
        values.append(("--" + name.replace("_", "-"), value))
    for name, value in extra.items():
        values.append(("--param", f"{name}={value if isinstance(value, str) else orjson.dumps(value).decode()}"))
    defaults_ = JobOptions()
    for name in LIMIT_OPTIONS:
        value = getattr(config.limits, name)
        if value != getattr(defaults_, name):
            values.append(("--" + name.replace("_", "-"), f"{value:g}" if isinstance(value, float) else value))
    for flag, value in values:
        if value is not None:
            args += [flag, str(value)]
    for flag, on in (("--embed-images", config.embed_images), ("--allow-private-urls", config.allow_private_urls),
                     ("--ray", config.ray)):
        if on:
            args.append(flag)
    for folder in config.allowed_paths:
        args += ["--allow-path", str(folder)]
    for entry in step.deployments:  # names of key variables, never keys; URLs without their credentials
        fields = entry.model_dump(exclude_none=True)
        if "base_url" in fields:
            fields["base_url"] = strip_userinfo(fields["base_url"])
        args += ["--deployment", ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in fields.items())]
    return shlex.join(args)


def with_option(command: str, flag: str, value: str | None = None) -> str:
    """`command` with `flag` (and its value) set, replacing an earlier value of the same flag."""
    args = shlex.split(command)
    out: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg == flag:
            skip = value is not None and i + 1 < len(args)
            continue
        if arg.startswith(flag + "="):
            continue
        out.append(arg)
    out += [flag] if value is None else [flag, value]
    return shlex.join(out)
