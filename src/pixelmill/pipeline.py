"""Pipeline files (YAML, DESIGN 2.4): a source, model aliases, limits and steps, turned into a `RunConfig`.

Every error names the file, the step and the key. Unknown keys are errors. A step's `model` that is close to an
alias of the file and is no known model is a misspelt alias (`UnknownAlias`, listing the aliases defined). The
fields a step names are checked against the source's rows when the run is planned (engine/preflight.py).
`source` and `output` resolve against the file's folder.

```yaml
source: data/products.jsonl          # or {path: ..., format: parquet} or "hf:user/dataset:split"
output: out/products
models:
  fast: {provider: openai, model: gpt-image-1-mini, quality: low}
limits: {concurrency: 16, ipm: 200, max_cost: 25.0}
steps:
  - name: product_image
    task: generate
    model: fast
    prompt: "A professional product photo of {product_name}: {product_description}."
    aspect_ratio: "1:1"
    output_field: product_image
  - name: on_marble
    task: edit
    model: {provider: gemini, model: gemini-3-pro-image}
    images: "{product_image}"
    prompt: "Put this product on a marble table."
    output_field: marble_image
```

`deployments:` (in a step, or at the top for every step without its own) spreads a step's calls over several keys
or endpoints of its provider, each with its own limits; a key is named by its environment variable
(`api_key_env`), and a key written in the file is refused.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pixelmill import defaults
from pixelmill.config import KEY_LITERAL, Deployment, Limits, ModelRef, RunConfig, StepConfig
from pixelmill.errors import ConfigError, UnknownAlias
from pixelmill.models.table import builtin_table
from pixelmill.params import ImageParams

TOP_KEYS = {"source", "output", "models", "limits", "steps", "id_field", "format", "embed_images",
            "allow_private_urls", "allowed_paths", "deployments"}
REF_KEYS = {"provider", "model", "base_url", "base_model", "api_version", "options"}
PARAM_KEYS = set(ImageParams.model_fields) - {"extra"}
STEP_KEYS = {"name", "task", "model", "fallback", "prompt", "prompt_field", "images", "image_field", "mask",
             "mask_field", "output_field", "name_template", "param", "batch", "deployments"} | PARAM_KEYS
DEPLOYMENT_KEYS = set(Deployment.model_fields)
LIMIT_KEYS = set(Limits.model_fields)
_FIELD_REF = re.compile(r"^\{([^{}]+)\}$")


class _Where:
    def __init__(self, label: str) -> None:
        self.label = label  # the file, or "pipeline" for a mapping given to the Python API

    def error(self, message: str, *, step: str | None = None, key: str | None = None) -> ConfigError:
        where = [self.label]
        if step is not None:
            where.append(f"step {step!r}")
        if key is not None:
            where.append(f"key {key!r}")
        return ConfigError(f"{': '.join(where)}: {message}")

    def unknown(self, keys: set[str], allowed: set[str], *, step: str | None = None,
                section: str | None = None) -> ConfigError:
        key = sorted(keys)[0]
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        name = f"{section}.{key}" if section else key
        return self.error(f"unknown key{hint}; allowed: {', '.join(sorted(allowed))}", step=step, key=name)


def load_pipeline(path: Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a pipeline file into a RunConfig. `overrides` come from the command line (output, format, limit,
    limits, retry_failed, restart, ...) and beat the file."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"pipeline file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return _pipeline(raw, _Where(str(path)), path.parent, str(path), path.stem, overrides)


def pipeline_from_mapping(raw: Mapping[str, Any], overrides: dict[str, Any] | None = None) -> RunConfig:
    """A pipeline given as a mapping with the file's keys (the Python API: `pixelmill.run({...})`, `Pipeline`):
    the same RunConfig the file would make, its relative paths resolved against the working directory. An
    override `source` (the API's spool of in-memory rows) stands for the mapping's own."""
    return _pipeline(dict(raw), _Where("pipeline"), Path(), None, "pipeline", overrides)


def _pipeline(raw: Any, where: _Where, base: Path, origin: str | None, stem: str,
              overrides: dict[str, Any] | None) -> RunConfig:
    if not isinstance(raw, dict):
        raise where.error("a pipeline file is a mapping with source, output and steps")
    if unknown := set(raw) - TOP_KEYS:
        raise where.unknown(unknown, TOP_KEYS)
    for key in ("source", "steps"):
        if key not in raw:
            raise where.error("missing", key=key)
    o = dict(overrides or {})
    if "source" in o:
        source, source_format = o.pop("source"), None
    else:
        source, source_format = _source(raw["source"], base, where)
    output = raw.get("output")
    aliases = _aliases(raw.get("models") or {}, where)
    limits = raw.get("limits") or {}
    if not isinstance(limits, dict):
        raise where.error("must be a mapping", key="limits")
    if unknown := set(limits) - LIMIT_KEYS:
        raise where.unknown(unknown, LIMIT_KEYS, section="limits")
    if not isinstance(raw["steps"], list) or not raw["steps"]:
        raise where.error("must be a non-empty list of steps", key="steps")
    shared = _deployments(raw["deployments"], where, None) if "deployments" in raw else ()
    steps = []
    earlier_outputs: set[str] = set()
    for i, body in enumerate(raw["steps"]):
        step = _step(body, i, aliases, where, earlier_outputs, shared)
        earlier_outputs.add(step.out_field)
        steps.append(step)
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise where.error(f"step names must be unique; got {names}", key="steps")
    limits = {**limits, **{k: v for k, v in o.pop("limits", {}).items() if v is not None}}
    try:
        return RunConfig(
            source=source,
            source_format=source_format,
            output=Path(o.pop("output", None) or (base / output if output else defaults.OUTPUT_ROOT / stem)),
            steps=tuple(steps),
            pipeline=True,
            origin=origin,
            limits=Limits(**limits),
            id_field=raw.get("id_field"),
            format=o.pop("format", None) or raw.get("format", "jsonl"),
            embed_images=o.pop("embed_images", None) or raw.get("embed_images", False),
            allow_private_urls=o.pop("allow_private_urls", None) or raw.get("allow_private_urls", False),
            allowed_paths=o.pop("allowed_paths", None) or _folders(raw.get("allowed_paths"), base, where),
            **{k: v for k, v in o.items() if v is not None},
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise where.error(first["msg"], key=loc) from None


def _folders(value: Any, base: Path, where: _Where) -> tuple[Path, ...]:
    """`allowed_paths`: folders whose image files rows may name, relative to the pipeline file's folder."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise where.error("must be a list of folders", key="allowed_paths")
    return tuple(Path(v) if Path(v).is_absolute() else base / v for v in value)


def _source(value: Any, base: Path, where: _Where) -> tuple[Path, str | None]:
    fmt = None
    if isinstance(value, dict):
        if unknown := set(value) - {"path", "format"}:
            raise where.unknown(unknown, {"path", "format"}, section="source")
        if "path" not in value:
            raise where.error("needs a path", key="source.path")
        fmt = value.get("format")
        value = value["path"]
    if isinstance(value, os.PathLike):  # a Path, in a pipeline given to the Python API
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise where.error("must be a path, {path, format} or hf:name:split", key="source")
    if value.startswith("hf:"):
        return Path(value), "hf"
    path = Path(value)
    return (path if path.is_absolute() else base / path), fmt


def _aliases(models: Any, where: _Where) -> dict[str, tuple[ModelRef, dict[str, Any]]]:
    if not isinstance(models, dict):
        raise where.error("must be a mapping of alias: {provider, model, ...}", key="models")
    out = {}
    for alias, body in models.items():
        if isinstance(body, str):
            body = {"model": body}
        if not isinstance(body, dict):
            raise where.error("must be a mapping", key=f"models.{alias}")
        if unknown := set(body) - REF_KEYS - PARAM_KEYS:
            raise where.unknown(unknown, REF_KEYS | PARAM_KEYS, section=f"models.{alias}")
        out[alias] = (_ref({k: v for k, v in body.items() if k in REF_KEYS}, where, f"models.{alias}"),
                      {k: v for k, v in body.items() if k in PARAM_KEYS})
    return out


def _ref(body: dict[str, Any], where: _Where, key: str, step: str | None = None) -> ModelRef:
    body = dict(body)
    if "provider" not in body and isinstance(body.get("model"), str):
        body["provider"] = _provider_of(body["model"])
    try:
        return ModelRef(**body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise where.error(first["msg"], step=step, key=f"{key}.{first['loc'][0]}" if first["loc"] else key) \
            from None


def _provider_of(model: str) -> str:
    spec = builtin_table().get(model)
    if spec is not None:
        return "openai" if spec.family == "openai" else spec.family
    return "gemini" if model.startswith("gemini") else "openai"


def _model(value: Any, aliases: dict[str, tuple[ModelRef, dict[str, Any]]], where: _Where, step: str,
           key: str) -> tuple[ModelRef, dict[str, Any]]:
    if isinstance(value, str):
        if value in aliases:
            return aliases[value]
        _check_alias(value, aliases, where, step, key)
        return _ref({"model": value}, where, key, step), {}
    if isinstance(value, dict):
        if unknown := set(value) - REF_KEYS - PARAM_KEYS:
            raise where.unknown(unknown, REF_KEYS | PARAM_KEYS, step=step, section=key)
        return (_ref({k: v for k, v in value.items() if k in REF_KEYS}, where, key, step),
                {k: v for k, v in value.items() if k in PARAM_KEYS})
    raise where.error("must be an alias, a model name or {provider, model, ...}", step=step, key=key)


def _check_alias(value: str, aliases: dict[str, tuple[ModelRef, dict[str, Any]]], where: _Where, step: str,
                 key: str) -> None:
    """A name that is neither an alias nor a known model (nor a preset), and is close to an alias, is a misspelt
    alias: said as such, rather than sent to a provider guessed from the name (a missing key, then no price)."""
    if not aliases:
        return
    table = builtin_table()
    if table.get(value) is not None or any(value in names for names in table.presets.values()):
        return
    close = difflib.get_close_matches(value, sorted(aliases), n=1)
    if not close:
        return
    message = where.error(
        f"{value!r} is not a model alias of this file (did you mean {close[0]!r}?); aliases defined: "
        f"{', '.join(aliases)}. To use a model named {value!r}, write model: {{provider: ..., model: {value}}}",
        step=step, key=key)
    raise UnknownAlias(str(message), alias=value, defined=tuple(aliases))


def _field(value: Any, where: _Where, step: str, key: str) -> str:
    """`images: "{product_image}"` or `images: product_image`: the name of the field holding the images."""
    if not isinstance(value, str) or not value:
        raise where.error("must name a field, like \"{product_image}\"", step=step, key=key)
    match = _FIELD_REF.match(value)
    return match.group(1) if match else value


def _deployments(value: Any, where: _Where, step: str | None) -> tuple[Deployment, ...]:
    """`deployments:` (top level: every step's that gives none of its own): keys or endpoints to spread calls over,
    each `{name, base_url, api_key_env, deployment, api_version, rpm, ipm, concurrency}`."""
    if not isinstance(value, list) or not value:
        raise where.error("must be a list of {base_url, api_key_env, rpm, ipm, concurrency, ...}", step=step,
                          key="deployments")
    out = []
    for i, body in enumerate(value):
        key = f"deployments[{i}]"
        if not isinstance(body, dict):
            raise where.error("must be a mapping", step=step, key=key)
        literal = sorted(set(body) & {"api_key", "key", "token"})
        if literal:
            raise where.error(KEY_LITERAL, step=step, key=f"{key}.{literal[0]}")
        if unknown := set(body) - DEPLOYMENT_KEYS:
            raise where.unknown(unknown, DEPLOYMENT_KEYS, step=step, section=key)
        try:
            out.append(Deployment(**body))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join([key, *(str(p) for p in first["loc"])])
            raise where.error(first["msg"].removeprefix("Value error, "), step=step, key=loc) from None
    return tuple(out)


def _step(body: Any, index: int, aliases: dict[str, tuple[ModelRef, dict[str, Any]]], where: _Where,
          earlier_outputs: set[str], shared: tuple[Deployment, ...] = ()) -> StepConfig:
    if not isinstance(body, dict):
        raise where.error("must be a mapping", key=f"steps[{index}]")
    name = str(body.get("name", f"step{index + 1}"))
    if unknown := set(body) - STEP_KEYS:
        raise where.unknown(unknown, STEP_KEYS, step=name)
    ref, preset = _model(body.get("model", defaults.MODEL), aliases, where, name, "model")
    fallback = tuple(_model(v, aliases, where, name, f"fallback[{i}]")[0]
                     for i, v in enumerate(body.get("fallback") or []))
    params = {**preset, **{k: v for k, v in body.items() if k in PARAM_KEYS}}
    extra = body.get("param") or {}
    if not isinstance(extra, dict):
        raise where.error("must be a mapping of provider parameters", step=name, key="param")
    task = body.get("task", "generate")
    batch = body.get("batch", False)
    if not isinstance(batch, bool):
        raise where.error("must be true or false (send this step's rows through the provider's batch API)",
                          step=name, key="batch")
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise where.error("must be text (a template with {field} placeholders, or a fixed prompt)", step=name,
                          key="prompt")
    if prompt is not None:
        from pixelmill.reading.records import template_fields

        try:
            template_fields(prompt)
        except ConfigError as exc:
            raise where.error(str(exc), step=name, key="prompt") from None
    try:
        return StepConfig(
            name=name,
            task=task,
            model=ref,
            fallback=fallback,
            deployments=_deployments(body["deployments"], where, name) if "deployments" in body else shared,
            prompt=prompt,
            prompt_field=body.get("prompt_field"),
            image_field=_field(body["images"], where, name, "images") if "images" in body
            else body.get("image_field"),
            mask_field=_field(body["mask"], where, name, "mask") if "mask" in body else body.get("mask_field"),
            output_field=body.get("output_field"),
            name_template=body.get("name_template"),
            params=ImageParams(**params, extra=extra),
            batch=batch,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "?"
        raise where.error(first["msg"], step=name, key=loc) from None
