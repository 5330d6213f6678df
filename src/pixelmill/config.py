"""The configuration of a run, as strict pydantic models (unknown keys are errors).

The command line and pipeline files both produce a `RunConfig`; the engine takes nothing else.
`fingerprint()` is what makes "another configuration": provider, model, prompt field or template, image and mask
fields, image parameters, per step, and the id field. Base URLs, keys, deployments, concurrency, limits, retries,
budget and output format are not part of it. The journal judges a change per step (writing/fingerprints.py): a
changed step and the steps that read its outputs are made again (`--restart-step NAME`, or without a flag when
nothing of them was paid for), the others keep their done rows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pixelmill import defaults
from pixelmill.errors import ConfigError
from pixelmill.netpolicy import strip_userinfo
from pixelmill.params import ImageParams

DEFAULT_OUTPUT_FIELD = defaults.DEFAULT_OUTPUT_FIELD
RESERVED_FIELD = "pixelmill"  # each output row's metadata


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str = defaults.DEFAULT_PROVIDER
    model: str = defaults.MODEL
    base_url: str | None = None
    base_model: str | None = None  # Azure: the model behind a deployment, for rules and prices
    api_version: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # provider settings (diffusers: batch_size, devices)


# What a literal key in a deployment is told (a pipeline file may be committed; a command line is kept in shell
# histories and `ps`): the key goes in an environment variable, and the entry names the variable.
KEY_LITERAL = ("a key is never written here (a pipeline file may be committed, a command line is kept in your "
               "shell history): put it in an environment variable and name the variable with api_key_env: NAME")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class Deployment(BaseModel):
    """One key or endpoint a step's calls are spread over (engine/deployments.py), with its own limits.

    Every entry uses the step's provider and model; what differs is where calls go (`base_url`), with which key
    (`api_key_env`: the name of the environment variable that holds it, never the key), the Azure deployment and
    API version, and the limits of that key or endpoint. Unset fields keep the step's own (its base URL, the
    provider's key variable, --concurrency as the only bound on calls in flight, no rate but the learned one)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str | None = None  # shown in notices and recorded on each row (pixelmill.response.deployment)
    base_url: str | None = None
    api_key_env: str | None = None
    deployment: str | None = None  # Azure: the deployment name sent (default: the step's model)
    api_version: str | None = None
    rpm: float | None = Field(default=None, gt=0)
    ipm: float | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, ge=1, le=4096)

    @model_validator(mode="before")
    @classmethod
    def _no_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in ("api_key", "key", "token")):
            raise ValueError(KEY_LITERAL)
        return data

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        # The value is never repeated in the message: a key pasted here by mistake stays out of the output.
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError("api_key_env names the environment variable that holds the key (like "
                             "OPENAI_API_KEY_2), not the key itself")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", value):
            raise ValueError(f"deployment name {value!r} must be letters, digits, '_', '-', '.' or ':'")
        return value


class StepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "generate"
    task: Literal["generate", "edit", "auto"] = "generate"
    model: ModelRef = Field(default_factory=ModelRef)
    fallback: tuple[ModelRef, ...] = ()
    # Keys or endpoints the model's calls are spread over, each with its own limits (not part of the
    # fingerprint: like a base URL or a key, where calls go does not change what is asked).
    deployments: tuple[Deployment, ...] = ()
    prompt: str | None = None  # a template with {field} placeholders, or a static prompt
    prompt_field: str | None = None
    image_field: str | None = None  # default "images" for edit
    mask_field: str | None = None
    output_field: str | None = None
    name_template: str | None = None  # image file names below RUNDIR/images; default "{step}/{key}_{i}"
    params: ImageParams = Field(default_factory=ImageParams)
    # `batch: true` (pipelines): this step's rows go through the provider's batch API (engine/batch/). Not part of
    # the fingerprint, like `--batch`: a run may switch (a row is never in two live batches either way).
    batch: bool = False

    @field_validator("name_template")
    @classmethod
    def _name_template(cls, value: str | None) -> str | None:
        if value is not None:
            from pixelmill.writing.store import check_name_template

            try:
                check_name_template(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("output_field")
    @classmethod
    def _output_field(cls, value: str | None) -> str | None:
        # It names a column and may name a folder ({field} in a name template): no path separators, no `..`.
        if value is not None and (not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_. -]{0,99}", value) or ".." in value):
            raise ValueError(f"output field {value!r} must be letters, digits, '_', '-', '.' or spaces")
        if value == RESERVED_FIELD:
            raise ValueError(f"output field {value!r} is where pixelmill writes each row's metadata: choose another")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value) or ".." in value:
            raise ValueError(f"step name {value!r} must be letters, digits, '_', '-' or '.' (it names a folder)")
        return value

    @property
    def out_field(self) -> str:
        return self.output_field or DEFAULT_OUTPUT_FIELD[self.task]

    def fingerprint(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "provider": _wire_provider(self.model),
            "model": self.model.model,
            "base_model": self.model.base_model,
            "fallback": [(_wire_provider(m), m.model) for m in self.fallback],
            "prompt": self.prompt,
            "prompt_field": self.prompt_field,
            "image_field": self.image_field,
            "mask_field": self.mask_field,
            "output_field": self.out_field,
            "name_template": self.name_template,
            "params": self.params.fingerprint(),
        }


def _wire_provider(ref: ModelRef) -> str:
    """The provider as a configuration: the emulator stands for the wire it speaks for the model, so that a
    rehearsal on the emulator and the real run share a RUNDIR (the engine re-sends the rows the emulator made)."""
    if ref.provider != "emulator":
        return ref.provider
    from pixelmill.models.table import builtin_table

    spec = builtin_table().get(ref.model)
    return "gemini" if spec is not None and spec.family == "gemini" else "openai"


class Limits(BaseModel):
    # allow_inf_nan=False: `--timeout inf` or a NaN budget would disable the very bound it names.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    concurrency: int = Field(default=defaults.CONCURRENCY, ge=1, le=4096)
    rpm: float | None = Field(default=None, gt=0)
    ipm: float | None = Field(default=None, gt=0)
    max_retries: int = Field(default=defaults.MAX_RETRIES, ge=0)
    max_billed_retries: int = Field(default=defaults.MAX_BILLED_RETRIES, ge=0)  # after broken or lost answers
    # One request; None: the model's own (`timeout` in the model table), else defaults.TIMEOUT (engine/plan.py).
    timeout: float | None = Field(default=None, gt=0)
    # One call of a row, all retries and 429 waits included; None: long enough for a retry after a full timeout.
    deadline: float | None = Field(default=None, gt=0)
    max_cost: float | None = Field(default=None, ge=0)
    drain_timeout: float = Field(default=60.0, ge=0)  # how long Ctrl-C waits for calls in flight
    retry_base: float = Field(default=0.5, gt=0)  # first backoff step, seconds (doubles per retry)
    retry_cap: float = Field(default=30.0, gt=0)
    # --batch: lines per batch at most (the provider's own limit is the default; tests and budgets set fewer),
    # and seconds between polls of a live batch.
    batch_max_lines: int | None = Field(default=None, ge=1)
    batch_poll: float = Field(default=30.0, gt=0)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Path
    source_format: str | None = None
    # Where relative paths in the rows resolve; None: the source's folder. The Python API sets it (to the working
    # directory) for an in-memory input, whose rows it spools into RUNDIR (reading/memory.py).
    input_dir: Path | None = None
    output: Path
    steps: tuple[StepConfig, ...]
    pipeline: bool = False  # `run`: the pixelmill object is keyed by step name
    origin: str | None = None  # the pipeline file, for error messages
    limits: Limits = Field(default_factory=Limits)
    id_field: str | None = None
    format: defaults.OutputFormat = "jsonl"
    limit: int | None = Field(default=None, ge=0)
    embed_images: bool = False
    retry_failed: bool = False
    restart: bool = False
    restart_steps: tuple[str, ...] = ()  # --restart-step: these steps and the steps reading them are made again
    # Done rows whose image files are missing or cut short are made again; with `report_broken` only reported.
    # `verify_images` also decodes every done image (slower). Neither is part of the fingerprint.
    verify_images: bool = False
    report_broken: bool = False
    allow_private_urls: bool = False
    # Folders beyond the input file's own whose files rows may name as input images (`--allow-path DIR`).
    allowed_paths: tuple[Path, ...] = ()
    api_key: str | None = Field(default=None, repr=False, exclude=True)
    models_file: Path | None = None
    # --batch: rows go through the provider's batch API (engine/batch/): the one step of generate/edit, every step
    # of a pipeline that can be batched; --detach: submit and exit 4. Neither is part of the fingerprint: a run
    # may switch between them (a row is never in two live batches either way).
    batch: bool = False
    detach: bool = False
    # --ray: provider calls run on a Ray cluster (pixelmill/cluster/); the driver keeps everything else. Not part
    # of the fingerprint: a run may move between one machine and a cluster and resume.
    ray: bool = False

    @model_validator(mode="after")
    def _steps_apart(self) -> RunConfig:
        from pixelmill.writing.store import check_step_names

        fields = [s.out_field for s in self.steps]
        if len(set(fields)) != len(fields):
            raise ValueError(f"steps must write different output fields; got {fields}")
        try:
            check_step_names([(s.name, s.name_template) for s in self.steps])
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        names = [s.name for s in self.steps]
        for name in self.restart_steps:
            if name not in names:
                raise ValueError(f"--restart-step {name}: no step of that name; the steps are {', '.join(names)}")
        return self

    @property
    def rows_dir(self) -> Path:
        """The folder relative paths in the input rows resolve against."""
        return self.input_dir if self.input_dir is not None else self.source.parent

    def fingerprint(self) -> dict[str, Any]:
        return {
            "id_field": self.id_field,
            "steps": {step.name: step.fingerprint() for step in self.steps},
        }

    def snapshot(self) -> dict[str, Any]:
        """What the journal keeps for `status` and the gallery (never a key, nor a base URL's credentials)."""
        data = self.model_dump(mode="json", exclude={"api_key"})
        for ref in (ref for step in data["steps"]
                    for ref in (step["model"], *step["fallback"], *step.get("deployments", ()))):
            ref["base_url"] = ref["base_url"] and strip_userinfo(ref["base_url"])
        return data
