"""Tiny random-weight models, saved the way real weights are.

Used by the tests and by ``gen4gen personalise --tiny``: the project then loads them through the
same ``from_pretrained(..., local_files_only=True)`` path as real weights, so a whole run can be
exercised on a laptop CPU in seconds. Nothing is downloaded. Heavy imports stay inside functions.

The byte-level tokenizer (shared with the tests' SDXL, IS-Net and VLM stand-ins in
``tests/paper_models.py`` and the scoring models in ``tiny_scoring_models``): 256 byte characters,
their ``</w>`` forms, then the two special tokens last (ids 512 and 513), no merges. Every word therefore tokenizes to one id per character,
and added tokens such as ``<new1>`` get ids 514, 515, ...
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

_BUILT: dict[tuple[str, str], Path] = {}


def cached_build(kind: str, root: Path, build: Callable[[Path], None]) -> Path:
    """``root/kind``, built with ``build(target)`` unless that folder already exists.

    Remembered per (kind, root) for the life of the process, so callers sharing a root build once.
    """
    key = (kind, str(root))
    if key not in _BUILT:
        target = Path(root) / kind
        if not target.exists():
            build(target)
        _BUILT[key] = target
    return _BUILT[key]


# ------------------------------------------------------------------ tokenizer
def byte_vocab() -> dict[str, int]:
    """256 byte characters, their ``</w>`` forms, then the two special tokens LAST (ids 512, 513)."""
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def tiny_clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=byte_vocab(), merges=[], model_max_length=77)


# ------------------------------------------------------------------ components
def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         latent_channels=4, sample_size=64)


def _clip_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=514,
        max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513, projection_dim=32))


def _sd15_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=32)


def _sd15_scheduler():
    from diffusers import DDIMScheduler

    # The betas every Stable Diffusion 1.x checkpoint was trained with.
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")


# ------------------------------------------------------------------ pipelines
def build_tiny_sd15(target: Path, seed: int = 0) -> Path:
    """A Stable Diffusion 1.x text-to-image pipeline folder (like stable-diffusion-v1-5) with
    random weights: UNet (32, 64) channels with cross-attention width 32, a 2-layer CLIP text
    encoder of width 32, the byte tokenizer, a 2-level VAE (64 px image -> 8 x 8 latents)."""
    import torch
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(seed)
    text_encoder = _clip_text_encoder()
    torch.manual_seed(seed + 1)
    vae = tiny_vae()
    torch.manual_seed(seed + 2)
    unet = _sd15_unet()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(),
                                   unet=unet, scheduler=_sd15_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    target = Path(target)
    pipe.save_pretrained(target)
    return target


def tiny_sd15(root: Path) -> Path:
    return cached_build("tiny-sd15", root, build_tiny_sd15)
