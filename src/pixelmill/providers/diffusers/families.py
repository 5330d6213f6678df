"""Which diffusers pipelines serve a model, and the rules that follow from them, as data.

A model folder (or hub repository) names its pipeline class in `model_index.json` (`_class_name`). That class
belongs to one family below; the family names the classes for text-to-image, image-to-image / editing, and
inpainting (chosen per row when a mask is given), the kwarg that `--guidance-scale` sets, how negative
prompts are taken, and how many input images an edit takes. `tests/test_provider_diffusers_plan.py` checks
the table against the installed diffusers' signatures, so a renamed kwarg shows up as a failing test.

Nothing here imports torch or diffusers: planning and `estimate` stay cheap.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pixelmill.errors import ConfigError

NegativePrompt = Literal["yes", "true_cfg"]  # true_cfg: only with true_cfg_scale > 1 (twice the compute)


@dataclass(frozen=True, slots=True)
class Family:
    key: str
    label: str
    generate: str | None  # text-to-image class; None: the model only edits
    edit: str | None  # image-to-image / editing class
    inpaint: str | None  # the class for edits with a mask
    multiple: int  # sides must be multiples of this (the pipelines check it; a larger VAE factor can raise it)
    patch: int  # latent patch size on top of the VAE factor (packed 2x2 latents: 2)
    native: int  # the default side when the configs do not say
    negative_prompt: NegativePrompt
    guidance: str  # the kwarg --guidance-scale sets
    max_input_images: int = 1
    batch_edits: bool = True  # several rows' edits in one call (one image per row)
    area_kwarg: str | None = None  # Kontext rescales to `max_area` whatever height/width say
    # Image-to-image makes the input's size (rounded) when no size is asked; editing models that pick their
    # own working size from the input (Kontext, Qwen-Image-Edit) are left to do so.
    edit_keeps_size: bool = True
    default_negative: str | None = None  # sent when the user gives none (Qwen-Image's CFG needs one)

    def classes(self) -> tuple[str, ...]:
        return tuple(c for c in (self.generate, self.edit, self.inpaint) if c)

    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t, c in (("generate", self.generate), ("edit", self.edit)) if c)

    def pipeline_class(self, task: str, mask: bool) -> str | None:
        if task == "generate":
            return self.generate
        return self.inpaint if mask else self.edit


FAMILIES: tuple[Family, ...] = (
    Family("stable-diffusion", "Stable Diffusion 1.x/2.x", "StableDiffusionPipeline",
           "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
           multiple=8, patch=1, native=512, negative_prompt="yes", guidance="guidance_scale"),
    Family("sdxl", "Stable Diffusion XL", "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
           "StableDiffusionXLInpaintPipeline",
           multiple=8, patch=1, native=1024, negative_prompt="yes", guidance="guidance_scale"),
    Family("sd3", "Stable Diffusion 3", "StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
           "StableDiffusion3InpaintPipeline",
           multiple=16, patch=2, native=1024, negative_prompt="yes", guidance="guidance_scale"),
    Family("flux", "FLUX.1", "FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline",
           multiple=16, patch=2, native=1024, negative_prompt="true_cfg", guidance="guidance_scale"),
    Family("flux-kontext", "FLUX.1 Kontext", "FluxKontextPipeline", "FluxKontextPipeline",
           "FluxKontextInpaintPipeline",
           multiple=16, patch=2, native=1024, negative_prompt="true_cfg", guidance="guidance_scale",
           area_kwarg="max_area", edit_keeps_size=False),
    Family("qwen-image", "Qwen-Image", "QwenImagePipeline", "QwenImageImg2ImgPipeline",
           "QwenImageInpaintPipeline",
           multiple=16, patch=2, native=1024, negative_prompt="yes", guidance="true_cfg_scale",
           default_negative=" "),
    Family("qwen-image-edit", "Qwen-Image-Edit", None, "QwenImageEditPipeline", "QwenImageEditInpaintPipeline",
           multiple=16, patch=2, native=1024, negative_prompt="yes", guidance="true_cfg_scale",
           batch_edits=False, edit_keeps_size=False, default_negative=" "),
    Family("qwen-image-edit-plus", "Qwen-Image-Edit (multi-image)", None, "QwenImageEditPlusPipeline", None,
           multiple=16, patch=2, native=1024, negative_prompt="yes", guidance="true_cfg_scale",
           max_input_images=3, batch_edits=False, edit_keeps_size=False, default_negative=" "),
)

# A model saved as its image-to-image or inpainting variant still belongs to its family.
_BY_CLASS: dict[str, Family] = {}
for _family in FAMILIES:
    for _name in _family.classes():
        _BY_CLASS.setdefault(_name, _family)


def family_of(class_name: str) -> Family | None:
    return _BY_CLASS.get(class_name)


def supported_classes() -> list[str]:
    return sorted(_BY_CLASS)


@dataclass(frozen=True, slots=True)
class LocalModel:
    """What planning needs to know about a model, read from its configuration files (no weights)."""

    name: str  # the folder or hub id as the user wrote it
    source: str  # the resolved folder, or the hub id
    local: bool
    class_name: str  # model_index.json's _class_name
    family: Family
    multiple: int
    native: int  # the pipeline's default side

    def describe(self) -> str:
        return f"{self.family.label} ({self.class_name})"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@cache
def inspect_model(model: str) -> LocalModel:
    """Read `model_index.json` (and the VAE / denoiser configs for the size rules) from a folder or the hub.
    Raises `ConfigError` saying what to fix when the model cannot be read or its pipeline is not supported."""
    path = Path(model).expanduser()
    if path.is_dir():
        local = True
        source = str(path.resolve())
        index = _local_json(path / "model_index.json", model)
        if index is None:
            raise ConfigError(f"{model} is a folder without model_index.json: give the folder of a diffusers "
                              "pipeline (what save_pretrained writes), or a hub id such as "
                              "black-forest-labs/FLUX.1-dev")
    elif _HUB_ID.match(model) and not path.exists():
        local = False
        source = model
        index = _hub_json(model, "model_index.json", required=True)
    else:
        raise ConfigError(f"model {model!r}: no such folder, and not a hub id (owner/name): give the folder of a "
                          "diffusers pipeline or its hub id")
    assert index is not None
    class_name = str(index.get("_class_name", ""))
    family = family_of(class_name)
    if family is None:
        raise ConfigError(
            f"{model}: pipeline {class_name or '(none named)'} is not supported by --provider diffusers; "
            f"supported: {', '.join(supported_classes())}"
        )

    def config(sub: str) -> dict[str, Any]:
        if sub not in index:  # a component the pipeline does not have
            return {}
        found = _local_json(path / sub / "config.json", model) if local else \
            _hub_json(model, f"{sub}/config.json", required=False)
        return found or {}

    vae = config("vae")
    vae_factor = _vae_factor(vae)
    # The pipelines' own checks use the family's multiple even where the VAE would allow less (Stable
    # Diffusion checks for 8 whatever its VAE), and the VAE's when it is larger.
    multiple = math.lcm(family.multiple, vae_factor * family.patch) if vae_factor else family.multiple
    denoiser = config("unet") or config("transformer")
    sample = denoiser.get("sample_size")
    if isinstance(sample, int) and vae_factor and family.key in ("stable-diffusion", "sdxl", "sd3"):
        native = sample * vae_factor
    elif vae_factor and family.key not in ("stable-diffusion", "sdxl", "sd3"):
        native = 128 * vae_factor  # FLUX and Qwen-Image pipelines: default_sample_size 128 latents
    else:
        native = family.native
    return LocalModel(model, source, local, class_name, family, multiple, native)


def _vae_factor(vae: dict[str, Any]) -> int | None:
    """The VAE's downsampling factor, as the pipelines compute it."""
    if isinstance(vae.get("temperal_downsample"), list):  # Qwen-Image's video VAE
        return int(2 ** len(vae["temperal_downsample"]))
    blocks = vae.get("block_out_channels")
    if isinstance(blocks, list) and blocks:
        return int(2 ** (len(blocks) - 1))
    return None


def _local_json(path: Path, model: str) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{model}: cannot read {path.name}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{model}: {path} is not a JSON object")
    return data


def _hub_json(repo: str, filename: str, *, required: bool) -> dict[str, Any] | None:
    """One small file from the hub (or the local hub cache: HF_HUB_OFFLINE=1 works once it is there)."""
    try:
        from huggingface_hub import hf_hub_download

        downloaded = hf_hub_download(repo, filename)
        data = json.loads(Path(downloaded).read_text(encoding="utf-8"))
    except Exception as exc:  # network, auth, missing file, bad JSON: all end the same way
        if not required:
            return None
        raise ConfigError(
            f"cannot read {filename} of hub model {repo}: {type(exc).__name__}: {exc}. Check the id, set HF_TOKEN "
            "for gated models, or download the model and pass its folder"
        ) from None
    return data if isinstance(data, dict) else None
