"""One model copy per device, through diffusers' own `from_pretrained`, with the memory options applied.

The class loaded is the one `model_index.json` names; the image-to-image, editing and inpainting variants are
made from it with `from_pipe` when a row first needs them (they share the weights: no second copy). Every
function here that touches a pipeline runs in the device's own worker thread, never on the event loop.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pixelmill.errors import ConfigError
from pixelmill.providers.diffusers.families import LocalModel
from pixelmill.providers.diffusers.options import LocalOptions

log = logging.getLogger("pixelmill.providers.diffusers.provider")

EXTRA_PACKAGES = ("torch", "diffusers", "transformers", "accelerate")


def require_extra() -> None:
    """`ConfigError` naming the extra when any of its packages is missing (checked without importing them)."""
    missing = [name for name in EXTRA_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"--provider diffusers needs the optional extra pixelmill[local] (missing: {', '.join(missing)}): "
            "install it with pip install 'pixelmill[local]' (for a GPU, install the torch build for your CUDA "
            "first, from pytorch.org)"
        )


def visible_devices() -> tuple[int, bool]:
    """(number of CUDA GPUs, whether Apple MPS is there)."""
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return cuda, mps


def dtype_name(requested: str, device: str) -> str:
    """The dtype for a copy on `device`: bf16 on GPUs that have it (fp16 otherwise), fp32 on the CPU."""
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        import torch

        index = int(device.split(":")[1])
        major, _ = torch.cuda.get_device_capability(index)
        return "bfloat16" if major >= 8 else "float16"  # bf16 needs Ampere or newer
    return "float16" if device == "mps" else "float32"


@cache
def pipeline_class(name: str) -> Any:
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ConfigError(f"pipeline {name} is not in the installed diffusers {diffusers.__version__}: "
                          "upgrade it with pip install -U diffusers")
    return cls


@cache
def call_kwargs(class_name: str) -> frozenset[str]:
    """The keyword arguments of a pipeline class's `__call__`."""
    params = inspect.signature(pipeline_class(class_name).__call__).parameters
    return frozenset(k for k, p in params.items() if k != "self" and p.kind is not p.VAR_KEYWORD)


def scheduler_class(name: str) -> Any:
    import diffusers

    cls = getattr(diffusers, name, None)
    backends = getattr(cls, "_backends", None)  # diffusers' stand-in for a class whose packages are missing
    if cls is not None and backends:
        needs = ", ".join(str(b) for b in backends)
        raise ConfigError(f"scheduler {name} needs {needs}: pip install {needs.replace(', ', ' ')}")
    if cls is None or not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and n[0].isupper())
        raise ConfigError(f"scheduler {name!r} is not a diffusers scheduler; choose one of {', '.join(known)}")
    return cls


def quiet_progress_bars() -> None:
    """diffusers' and transformers' loading bars would tear through pixelmill's own progress display."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    # Through a typed name: transformers' function is untyped where transformers is installed, and Any (no
    # stubs) where it is not; a `type: ignore` would be wrong in one of the two.
    disable: Callable[[], None] = transformers_logging.disable_progress_bar
    disable()


@dataclass(slots=True)
class LoadedCopy:
    """A model on one device: the pipeline `model_index.json` names, and its task variants (same weights)."""

    model: LocalModel
    device: str
    dtype: str
    base: Any
    variants: dict[str, Any] = field(default_factory=dict)

    def pipeline(self, class_name: str) -> Any:
        if class_name == type(self.base).__name__:
            return self.base
        if class_name not in self.variants:
            variant = pipeline_class(class_name).from_pipe(self.base)
            variant.set_progress_bar_config(disable=True)
            self.variants[class_name] = variant
        return self.variants[class_name]

    def release(self) -> None:
        self.variants.clear()
        self.base = None


def load_copy(model: LocalModel, device: str, options: LocalOptions) -> LoadedCopy:
    """Load `model` onto `device` (in the device's worker thread). Exceptions propagate unmapped: the caller
    turns them into `ModelUnavailable` with the model's name."""
    import torch

    quiet_progress_bars()
    dtype = dtype_name(options.dtype, device)
    kwargs: dict[str, Any] = {_dtype_kwarg(): getattr(torch, dtype)}
    if options.variant:
        kwargs["variant"] = options.variant
    if model.local:
        kwargs["local_files_only"] = True
    pipe = pipeline_class(model.class_name).from_pretrained(model.source, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    if options.scheduler:
        pipe.scheduler = scheduler_class(options.scheduler).from_config(pipe.scheduler.config)
    if options.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)  # the variants share the hooked modules
    elif device != "cpu":
        pipe.to(device)
    if options.attention_slicing:
        pipe.enable_attention_slicing()
    if options.vae_tiling:
        vae = getattr(pipe, "vae", None)
        if vae is not None and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
        else:
            log.warning("%s: this pipeline's VAE cannot tile; vae_tiling ignored", model.name)
    log.info("loaded %s on %s as %s", model.name, device, dtype)
    return LoadedCopy(model, device, dtype, pipe)


@cache
def _dtype_kwarg() -> str:
    """`dtype` in diffusers releases that deprecate `torch_dtype` (which then warns), `torch_dtype` before."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"
