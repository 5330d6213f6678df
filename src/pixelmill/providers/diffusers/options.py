"""The settings of `--provider diffusers` (`ProviderSettings.options`: `--param batch_size=4` and friends on
the command line, `options:` of a model in a pipeline file), validated before anything loads."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pixelmill.errors import ConfigError

DTYPES = {"auto": "auto", "bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "half": "float16", "fp32": "float32", "float32": "float32", "float": "float32"}


class LocalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Rows with identical parameters run as one pipeline call of up to this many images.
    batch_size: int = Field(default=1, ge=1, le=256)
    # "auto" (every GPU, else CPU), a count of GPUs, or a list: "cuda:0,cuda:1", "0,1", "cpu", "mps".
    devices: str | int | list[str] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    scheduler: str | None = None  # a diffusers scheduler class name, built from the model's scheduler config
    attention_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False  # model CPU offload (accelerate): one model at a time on the GPU
    # How long a partial batch waits for more rows with the same parameters (seconds).
    batch_window: float = Field(default=0.05, ge=0.0, le=10.0)
    variant: str | None = None  # weights variant to load ("fp16"), as from_pretrained's `variant`
    # On a Ray cluster only (pixelmill/cluster/local.py; `devices` is then each actor's own GPU): the resource
    # each model copy takes instead of one GPU (a custom resource such as "gpu_slot", for CPU nodes and tests),
    # and how many copies (default: as many as the cluster has of that resource).
    ray_resource: str | None = None
    ray_actors: int | None = Field(default=None, ge=1, le=4096)

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, value: object) -> object:
        if isinstance(value, str):
            canonical = DTYPES.get(value.strip().lower())
            if canonical is None:
                raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (got {value!r})")
            return canonical
        return value

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None


def parse_options(raw: dict[str, Any]) -> LocalOptions:
    try:
        return LocalOptions(**raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "options"
        known = ", ".join(LocalOptions.model_fields)
        raise ConfigError(f"diffusers option {where!r}: {first['msg']} (options: {known})") from None


def device_list(spec: str | int | list[str], cuda_count: int, mps: bool) -> list[str]:
    """The devices to put one model copy on each. Raises `ConfigError` for devices this machine lacks."""
    if spec == "auto":
        if cuda_count:
            return [f"cuda:{i}" for i in range(cuda_count)]
        return ["mps"] if mps else ["cpu"]
    if isinstance(spec, int):
        if spec < 1 or spec > cuda_count:
            raise ConfigError(f"devices={spec}: this machine has {cuda_count} GPU(s); give at most that many, "
                              "or use devices=cpu")
        return [f"cuda:{i}" for i in range(spec)]
    items = spec if isinstance(spec, list) else [p for p in spec.replace(" ", "").split(",") if p]
    devices: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if name.isdigit():
            name = f"cuda:{name}"
        elif name == "cuda":
            name = "cuda:0"
        if name.startswith("cuda:"):
            index = name.removeprefix("cuda:")
            if not index.isdigit() or int(index) >= cuda_count:
                raise ConfigError(f"device {item!r} does not exist: this machine has {cuda_count} GPU(s)"
                                  + (f" (cuda:0..cuda:{cuda_count - 1})" if cuda_count else "; use devices=cpu"))
        elif name == "mps":
            if not mps:
                raise ConfigError("device 'mps' is not available on this machine; use devices=cpu")
        elif name != "cpu":
            raise ConfigError(f"device {item!r} is not a device: use cuda:N, N, cpu or mps")
        if name in devices:
            raise ConfigError(f"device {name} is listed twice: one model copy per device")
        devices.append(name)
    if not devices:
        raise ConfigError("devices is empty: give cuda:N (or N), cpu or mps")
    return devices
