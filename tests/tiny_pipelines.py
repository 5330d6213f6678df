"""Tiny, randomly initialised diffusers pipelines built on disk, for tests and the benchmark (no download).

Each builder makes real components with tiny configs (a few thousand weights), fixed by a seed, and writes
them with `save_pretrained`: the provider then loads them through the same `from_pretrained` path as a real
model folder. Tokenizers are built from a vocabulary written here (byte-level for CLIP, one piece per letter
for T5), so nothing is fetched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _byte_chars() -> list[str]:
    """GPT-2 / CLIP byte-level alphabet: one printable character per byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for char in _byte_chars():
        vocab[char] = len(vocab)
    for char in _byte_chars():
        vocab[char + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer() -> Any:
    from transformers import T5Tokenizer

    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    vocab += [(c, -2.0) for c in letters] + [("▁" + c, -1.5) for c in letters]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _clip_text(tokenizer: Any, hidden: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    size = len(tokenizer.get_vocab())
    return CLIPTextModel(CLIPTextConfig(
        bos_token_id=size - 2, eos_token_id=size - 1, pad_token_id=1, vocab_size=size, hidden_size=hidden,
        intermediate_size=2 * hidden, num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=77,
        projection_dim=hidden, layer_norm_eps=1e-5,
    ))


def _flag_everything_checker() -> tuple[Any, Any]:
    """A real StableDiffusionSafetyChecker, tiny, whose thresholds flag every image (it then returns black
    images, as it does for a flagged prompt), and its image processor."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0)  # any cosine similarity beats -2: always flagged
        checker.special_care_embeds_weights.fill_(-2.0)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker, processor


def build_sd(path: Path, *, safety_checker: bool = False, seed: int = 0) -> Path:
    """A Stable Diffusion 1.x-shaped pipeline: UNet2DConditionModel, AutoencoderKL (factor 2: native 32x32),
    CLIPTextModel, DDIM."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, sample_size=32,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    checker, processor = _flag_everything_checker() if safety_checker else (None, None)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=_clip_text(tokenizer, 16), tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=checker, feature_extractor=processor, requires_safety_checker=safety_checker,
    )
    pipe.save_pretrained(path)
    return path


def build_flux(path: Path, *, kontext: bool = False, seed: int = 0) -> Path:
    """A FLUX.1-shaped pipeline (FluxTransformer2DModel, CLIP + T5 encoders, flow matching), saved as
    FluxPipeline or, with `kontext`, as FluxKontextPipeline (same components, as in the real models)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    tokenizer_2 = t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2.get_vocab()), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    ))
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )
    cls = FluxKontextPipeline if kontext else FluxPipeline
    pipe = cls(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_clip_text(tokenizer, 32),
        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
    )
    pipe.save_pretrained(path)
    return path
