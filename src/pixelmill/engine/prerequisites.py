"""Prerequisites: every optional package a run will need, checked before anything is sent.

An output written with `--format hf` needs `datasets` only at the very end, after every image was paid; a source
saved as a Hugging Face dataset needs it to read the first row; a local model needs torch and diffusers to load.
`check_prerequisites` (called first by `plan_run`, so `estimate` says it too) looks each one up without importing
it (`importlib.util.find_spec`: importing torch or datasets takes seconds) and raises one `MissingDependency`
(exit 2) naming what needs which package and the pip command to run; `--ray` without Ray says its extra.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass

from pixelmill.config import RunConfig
from pixelmill.errors import ConfigError, MissingDependency
from pixelmill.reading import hfsource
from pixelmill.reading.records import source_format

# Providers that run a model in this process, and what they import.
LOCAL_PROVIDERS = {"diffusers": (("torch", "diffusers"), "pixelmill[local]")}


@dataclass(frozen=True, slots=True)
class Requirement:
    needed_by: str  # "--format hf"
    packages: tuple[str, ...]
    install: str  # what `pip install` takes


def requirements(config: RunConfig) -> list[Requirement]:
    """What `config` needs beyond pixelmill's own dependencies."""
    needs: list[Requirement] = []
    if config.format == "hf":
        needs.append(Requirement("--format hf" if not config.pipeline else "format: hf", ("datasets",),
                                 "pixelmill[hf]"))
    if config.format == "parquet":
        needs.append(Requirement("--format parquet", ("pyarrow",), "pyarrow"))
    try:
        kind = source_format(config.source, config.source_format)
    except ConfigError:
        kind = None  # an unknown format is said when the source is read
    if kind == "hf":
        needs.append(Requirement(hfsource.NEEDED_BY, ("datasets",), hfsource.INSTALL))
    elif kind == "parquet":
        needs.append(Requirement("a Parquet source", ("pyarrow",), "pyarrow"))
    for step in config.steps:
        for ref in (step.model, *step.fallback):
            if ref.provider in LOCAL_PROVIDERS:
                packages, install = LOCAL_PROVIDERS[ref.provider]
                needs.append(Requirement(f"the local model {ref.model} (provider {ref.provider})", packages, install))
    return needs


def check_prerequisites(config: RunConfig) -> None:
    """Raise `MissingDependency` for the first requirement of `config` whose packages are not installed (and
    `ConfigError` for --ray without Ray: the cluster's own message, before RUNDIR is touched)."""
    if config.ray and not installed("ray"):
        from pixelmill.cluster.connect import INSTALL

        raise ConfigError(INSTALL)
    for need in requirements(config):
        missing = tuple(name for name in need.packages if not installed(name))
        if missing:
            raise MissingDependency(need.needed_by, missing, need.install)


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked or broken package is as good as absent
        return False
