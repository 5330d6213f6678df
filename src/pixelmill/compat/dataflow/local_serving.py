"""`LocalImageGenServing`: DataFlow's local diffusers serving, on pixelmill's `diffusers` provider
(extra `pixelmill[local]`).

- `hf_model_name_or_path`: the model, a local folder or a Hub id (a list of the same model: one copy on each of
  that many GPUs);
- `batch_size`: images per pipeline call (rows with the same parameters share a call);
- `diffuser_image_height` / `_width`: `size` (rounded to the model's multiple, with a notice);
- `diffuser_num_inference_steps`: `steps`; `diffuser_guidance_scale`: `guidance_scale` (Qwen-Image:
  `true_cfg_scale`); `diffuser_num_images_per_prompt`: `n`;
- `diffuser_model_name`: not needed: the pipeline class is read from the model's own files;
- `hf_cache_dir`, `hf_local_dir`: not used: Hub models load through diffusers' `from_pretrained`, which downloads
  only the files the pipeline needs into the Hugging Face cache (`HF_HOME` chooses where).

Unlike DataFlow's, the model loads on the first image, not in the constructor; every image has its own seed
(derived from the row when none is given, so a re-run makes the same image); runs resume like API runs.
"""

from __future__ import annotations

from typing import Any

from pixelmill.compat.dataflow.imageio import ImageIO
from pixelmill.compat.dataflow.serving import _OWNED, ImageGenServing
from pixelmill.compat.dataflow.storage import DataFlowConfigError


class LocalImageGenServing(ImageGenServing):
    owned = _OWNED | {"n", "size", "steps", "guidance_scale"}

    def __init__(
        self,
        image_io: ImageIO,
        hf_model_name_or_path: str | list[str] | None = None,
        hf_cache_dir: str | None = None,
        hf_local_dir: str = "./ckpt/models/",
        Image_gen_task: str = "text2image",  # DataFlow's spelling
        batch_size: int = 4,
        diffuser_model_name: str = "FLUX",
        diffuser_image_height: int = 1024,
        diffuser_image_width: int = 1024,
        diffuser_num_inference_steps: int = 50,
        diffuser_guidance_scale: float = 2.5,
        diffuser_num_images_per_prompt: int = 1,
        *,
        progress: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(image_io, Image_gen_task, batch_size, progress, options)
        models = hf_model_name_or_path if isinstance(hf_model_name_or_path, list) else [hf_model_name_or_path]
        if not models or not all(isinstance(m, str) and m.strip() for m in models):
            raise DataFlowConfigError("hf_model_name_or_path is required: a local model folder or a Hugging Face "
                                      "Hub id such as black-forest-labs/FLUX.1-dev")
        if len(set(models)) > 1:
            raise DataFlowConfigError("hf_model_name_or_path lists different models; one run uses one model (a "
                                      "list of the same model puts one copy on each of that many GPUs)")
        self.model = str(models[0]).strip()
        self.copies = len(models) if isinstance(hf_model_name_or_path, list) else None
        self.hf_cache_dir = hf_cache_dir
        self.hf_local_dir = hf_local_dir
        self.diffuser_model_name = diffuser_model_name
        self.height = int(diffuser_image_height)
        self.width = int(diffuser_image_width)
        self.steps = int(diffuser_num_inference_steps)
        self.guidance_scale = float(diffuser_guidance_scale)
        self.n = int(diffuser_num_images_per_prompt)

    def __repr__(self) -> str:
        return f"LocalImageGenServing(model={self.model!r}, batch_size={self.batch_size})"

    def engine_options(self) -> dict[str, Any]:
        param = [f"batch_size={self.batch_size}"]
        if self.copies is not None:
            param.append(f"devices={self.copies}")
        return {
            "provider": "diffusers", "model": self.model, "size": f"{self.width}x{self.height}",
            "steps": self.steps, "guidance_scale": self.guidance_scale, "n": self.n,
            # Enough rows in flight to fill every device's batches.
            "concurrency": max(16, 2 * self.batch_size * (self.copies or 1)), "param": param,
        }
