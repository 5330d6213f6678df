"""`APIImageGenServing`: which API, model and key a DataFlow step uses, mapped onto pixelmill's options.

| DataFlow | pixelmill |
|---|---|
| `api_format="openai"` / `"gemini"` | provider `openai` / `gemini` (also `azure`, `openai-compatible`) |
| `api_url` | the provider's base URL (OpenAI: with or without `/v1`; Gemini: the host, with or without `/v1beta`) |
| `api_key` | the key (None: `OPENAI_API_KEY` / `GEMINI_API_KEY` / ..., then `DF_API_KEY`) |
| `model_name` | the model (None: pixelmill's default for the provider) |
| `batch_size` | requests in flight (DataFlow sent them one at a time) |
| `timeout` / `connect_timeout` | seconds for one request / for opening its connection |
| `Image_gen_task` | `"text2image"` (generate) or `"imageedit"` (edit) |

Every other pixelmill option of `generate` / `edit` may be given as a keyword, in snake_case: `size`, `quality`,
`n`, `aspect_ratio`, `rpm`, `ipm`, `max_retries`, `deadline`, `max_cost`, `retry_failed`, `output_format`,
`param={...}`, ... The engine underneath retries 429s, 5xx and timeouts, resumes on re-run and records every
row's errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixelmill.compat.dataflow.imageio import ImageIO
from pixelmill.compat.dataflow.storage import DataFlowConfigError

if TYPE_CHECKING:
    from pixelmill.config import RunConfig

API_FORMATS = {"openai": "openai", "gemini": "gemini", "azure": "azure", "openai-compatible": "openai-compatible"}
TASKS = {"text2image": "generate", "imageedit": "edit"}
# Options the DataFlow layer sets itself: they come from the constructor, the storage or the operator.
_OWNED = frozenset({
    "output", "provider", "model", "base_url", "api_key", "concurrency", "id_field", "prompt_field",
    "prompt_template", "image_field", "mask_field", "output_field", "name_template", "format", "limit",
    "restart", "embed_images",
})
_ID_FIELD = "_id"


class ImageGenServing:
    """What the operators need of a serving: the task, where images go, and the engine's configuration.
    Extra keywords are pixelmill's generate/edit options in snake_case."""

    owned: frozenset[str] = _OWNED  # options set from the constructor's own arguments

    def __init__(self, image_io: ImageIO, image_gen_task: str, batch_size: int, progress: bool,
                 options: dict[str, Any]) -> None:
        name = type(self).__name__
        if image_gen_task not in TASKS:
            raise DataFlowConfigError(f"Image_gen_task {image_gen_task!r}: use 'text2image' or 'imageedit'")
        if not isinstance(image_io, ImageIO):
            raise DataFlowConfigError(f"{name}: image_io must be an ImageIO(save_path=...)")
        if int(batch_size) < 1:
            raise DataFlowConfigError(f"batch_size must be at least 1, got {batch_size}")
        owned = sorted(set(options) & self.owned)
        if owned:
            raise DataFlowConfigError(f"{', '.join(owned)}: set by {name}'s own arguments or by the operator, not "
                                      "as extra options")
        from pixelmill.options import job_options

        try:
            job_options(**options)
        except TypeError as exc:
            raise DataFlowConfigError(f"{name}: {exc}; extra keywords are pixelmill's generate/edit options in "
                                      "snake_case (size, quality, n, rpm, max_cost, ...)") from None
        self.image_io = image_io
        self.image_gen_task = image_gen_task
        self.batch_size = int(batch_size)
        self.progress = progress
        self.options = dict(options)

    @property
    def task(self) -> str:
        return TASKS[self.image_gen_task]

    def engine_options(self) -> dict[str, Any]:
        """The job options that this serving's own arguments stand for."""
        raise NotImplementedError

    def model_options(self) -> dict[str, Any]:
        """Provider settings that have no flag (`ModelRef.options`)."""
        return {}

    def run_config(self, source: Path, output: Path, *, image_field: str | None, output_field: str) -> RunConfig:
        """The engine's configuration for one operator run over `source` (the derived requests)."""
        from pixelmill.errors import ConfigError
        from pixelmill.options import build_config, job_options

        options = {**self.engine_options(), **self.options}
        params = _param_list(self.engine_options().get("param")) + _param_list(self.options.get("param"))
        options["param"] = params or None
        try:
            config = build_config(self.task, source, job_options(
                output=output, id_field=_ID_FIELD, image_field=image_field, output_field=output_field,
                name_template="{key}/{key}_{i}", **options,
            ))
        except ConfigError as exc:
            raise DataFlowConfigError(str(exc)) from None
        step = config.steps[0]
        extra = self.model_options()
        if extra:
            model = step.model.model_copy(update={"options": {**step.model.options, **extra}})
            config = config.model_copy(update={"steps": (step.model_copy(update={"model": model}),)})
        return config


class APIImageGenServing(ImageGenServing):
    def __init__(
        self,
        api_url: str | None,
        image_io: ImageIO,
        Image_gen_task: str = "text2image",  # DataFlow's spelling
        batch_size: int = 4,
        timeout: float = 300,
        connect_timeout: float = 30,
        api_format: str = "openai",
        api_key: str | None = None,
        model_name: str | None = None,
        *,
        progress: bool = True,
        **options: Any,
    ) -> None:
        if api_format not in API_FORMATS:
            raise DataFlowConfigError(f"api_format {api_format!r} is not one of {', '.join(API_FORMATS)}")
        if float(timeout) <= 0 or float(connect_timeout) <= 0:
            raise DataFlowConfigError("timeout and connect_timeout must be positive numbers of seconds")
        if "timeout" in options:
            raise DataFlowConfigError("timeout: give it as APIImageGenServing's timeout argument")
        super().__init__(image_io, Image_gen_task, batch_size, progress, options)
        self.api_url = api_url.strip() if api_url else None
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.api_format = api_format
        self.api_key = api_key or None
        self.model_name = model_name or None

    def __repr__(self) -> str:  # never the key
        return (f"APIImageGenServing(api_format={self.api_format!r}, model_name={self.model_name!r}, "
                f"api_url={self.api_url!r}, batch_size={self.batch_size})")

    def engine_options(self) -> dict[str, Any]:
        return {"provider": API_FORMATS[self.api_format], "model": self.model_name, "base_url": self.api_url,
                "api_key": self.api_key, "concurrency": self.batch_size, "timeout": self.timeout}

    def model_options(self) -> dict[str, Any]:
        return {"connect_timeout": self.connect_timeout}


def _param_list(param: Any) -> list[str]:
    """`param` as the command line's KEY=VALUE list (a dict is accepted too)."""
    import orjson

    if param is None:
        return []
    if isinstance(param, dict):
        return [f"{k}={v if isinstance(v, str) else orjson.dumps(v).decode()}" for k, v in param.items()]
    return [str(p) for p in param]
