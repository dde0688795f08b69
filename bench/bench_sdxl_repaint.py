#!/usr/bin/env python3
"""GPU benchmark of the project's SDXL repaint backend (``recolour.backend = "sdxl"``).

Builds the full-size SDXL inpainting model (diffusers/stable-diffusion-xl-1.0-inpainting-0.1),
the SDXL refiner (stabilityai/stable-diffusion-xl-refiner-1.0, sharing text_encoder_2 and the
VAE) and both CLIP text encoders from their public configs, with RANDOM weights (speed does
not depend on the values; nothing is downloaded), injects them into
``gen4gen.models.sdxl_repaint.SdxlRepainter`` and times ``repaint()`` on 1024² requests at the
original settings: 60 steps, strength 0.9 (54 base steps), guidance 6.0, refiner from 0.75.
The UNet, VAE and scheduler configs and the inputs are the same as
``../shared/tools/sdxl_anchor/bench_sdxl.py`` (the anchor) so the two can run side by side:

    python ../shared/tools/sdxl_anchor/bench_sdxl.py     # the anchor: bare diffusers pipelines
    python bench/bench_sdxl_repaint.py                   # this project's backend, same card

Unlike the anchor, prompts go through the text encoders (a byte-level tokenizer stands in for
the CLIP vocabulary), and the timed work is everything ``repaint()`` does per batch: request
preparation, both pipelines, conversion back to arrays.

Variants (``--variants``, default ABCD; letters run in the order given):
  A  fp16, batch 1                      (the original script's settings)
  B  bf16, batch 4                      (the project's defaults at batch 4)
  C  B + refiner_handoff="latent" (no VAE decode + encode between base and refiner)
       + attention_backend="cudnn" (cuDNN fused attention first)
  D  C + channels_last + fused QKV projections
  E  D + torch.compile of both UNets (the warm-up includes compile time)
  F  E + fp8_linear (float8 transformer linears; changes numerics; run it last)

    python bench/bench_sdxl_repaint.py --tiny           # CPU smoke test: tiny configs, 64 px, 2 steps
    python bench/bench_sdxl_repaint.py --out results.json

On the GPU machine the project's own dependencies are absent: diffusers (0.42.1) and pydantic
must be importable (e.g. wheels installed into a folder on PYTHONPATH); dagster is not needed.
Prints s/image, images/s and peak GPU memory per variant, and a summary table last.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*invalid value encountered.*")  # NaN pixels from random weights

# ------------------------------------------------------------------ public configs (as the anchor)
SDXL_INPAINT_UNET = dict(
    sample_size=128, in_channels=9, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), only_cross_attention=False,
    block_out_channels=(320, 640, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=2048,
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
    upcast_attention=False, resnet_time_scale_shift="default", addition_embed_type="text_time",
    addition_time_embed_dim=256, addition_embed_type_num_heads=64, projection_class_embeddings_input_dim=2816,
    time_embedding_type="positional", conv_in_kernel=3, conv_out_kernel=3,
)
SDXL_REFINER_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), only_cross_attention=False,
    block_out_channels=(384, 768, 1536, 1536), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=1280, transformer_layers_per_block=4,
    attention_head_dim=(6, 12, 24, 24), use_linear_projection=True, upcast_attention=False,
    resnet_time_scale_shift="default", addition_embed_type="text_time", addition_time_embed_dim=256,
    addition_embed_type_num_heads=64, projection_class_embeddings_input_dim=2560, time_embedding_type="positional",
    conv_in_kernel=3, conv_out_kernel=3,
)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)
SDXL_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", interpolation_type="linear", use_karras_sigmas=False, timestep_spacing="leading",
    steps_offset=1,
)
# CLIP ViT-L/14 text tower (text_encoder) and OpenCLIP ViT-bigG/14 text tower (text_encoder_2).
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                   projection_dim=768, hidden_act="quick_gelu")
CLIP_G_TEXT = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                   projection_dim=1280, hidden_act="gelu")
RES, STEPS, SEED = 1024, 60, 0


def tiny_configs() -> None:
    """Tiny stand-ins (CPU logic test), same as the anchor's BENCH_TINY plus tiny text encoders."""
    global RES, STEPS
    SDXL_INPAINT_UNET.update(sample_size=8, block_out_channels=(32, 64, 64), layers_per_block=1,
                             transformer_layers_per_block=(1, 1, 2), attention_head_dim=(1, 2, 2),
                             cross_attention_dim=64, addition_time_embed_dim=8,
                             projection_class_embeddings_input_dim=6 * 8 + 32)
    SDXL_REFINER_UNET.update(sample_size=8, block_out_channels=(32, 64, 64, 64), layers_per_block=1,
                             transformer_layers_per_block=1, attention_head_dim=(1, 2, 2, 2), cross_attention_dim=32,
                             addition_time_embed_dim=8, projection_class_embeddings_input_dim=5 * 8 + 32)
    SDXL_VAE.update(block_out_channels=(32, 32, 32, 32), layers_per_block=1, sample_size=64)
    for text in (CLIP_L_TEXT, CLIP_G_TEXT):
        text.update(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=32)
    RES, STEPS = 64, 2


def log(*args) -> None:
    print(*args, flush=True)


# ------------------------------------------------------------------ models
def byte_tokenizer():
    """A CLIP tokenizer over the 256 byte characters (no vocabulary download); ids < 514."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 512, 513
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_pipelines(device, dtype):
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def build(factory, what):
        start = time.perf_counter()
        with torch.device(device):
            module = factory()
        module = module.to(dtype=dtype).eval().requires_grad_(False)
        count = sum(p.numel() for p in module.parameters()) / 1e6
        log(f"  built {what:16s} {count:9.1f} M parameters in {time.perf_counter() - start:5.1f} s")
        return module

    torch.manual_seed(SEED)
    text = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    text_encoder = build(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT, **text)), "text_encoder")
    text_encoder_2 = build(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G_TEXT, **text)), "text_encoder_2")
    vae = build(lambda: AutoencoderKL(**SDXL_VAE), "vae")
    unet = build(lambda: UNet2DConditionModel(**SDXL_INPAINT_UNET), "unet (inpaint)")
    refiner_unet = build(lambda: UNet2DConditionModel(**SDXL_REFINER_UNET), "unet (refiner)")
    base = StableDiffusionXLInpaintPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=byte_tokenizer(),
        tokenizer_2=byte_tokenizer(), unet=unet, scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        requires_aesthetics_score=False, force_zeros_for_empty_prompt=True, add_watermarker=False)
    # The refiner checkpoint: no first text encoder, aesthetic-score conditioning, shared encoder 2 and VAE.
    refiner = StableDiffusionXLInpaintPipeline(
        vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None, tokenizer_2=byte_tokenizer(),
        unet=refiner_unet, scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER), requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False, add_watermarker=False)
    for pipe in (base, refiner):
        pipe.set_progress_bar_config(disable=True)
    return base, refiner


def requests(n: int):
    """n requests like the anchor's input: random pixels, two object boxes kept, the rest repainted."""
    import numpy as np

    from gen4gen.config import DEFAULT_NEGATIVE_PROMPT
    from gen4gen.recolour import RepaintRequest

    rng = np.random.default_rng(SEED)
    s = RES / 1024
    out = []
    for i in range(n):
        mask = np.zeros((RES, RES), np.uint8)
        mask[int(300 * s):int(850 * s), int(100 * s):int(470 * s)] = 255
        mask[int(420 * s):int(900 * s), int(560 * s):int(930 * s)] = 255
        image = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
        image[mask == 0] = 0
        out.append(RepaintRequest(image=image, mask=mask, prompt="a realistic photo of a sunny lawn in a park",
                                  negative_prompt=DEFAULT_NEGATIVE_PROMPT, seed=1000 + i, scene="noise"))
    return out


# ------------------------------------------------------------------ variants
FAST = dict(dtype="bf16", batch_size=4, refiner_handoff="latent", attention_backend="cudnn")
VARIANTS = {
    "A": dict(label="A original fp16 bs1", dtype="fp16", batch_size=1),
    "B": dict(label="B bf16 bs4", dtype="bf16", batch_size=4),
    "C": dict(label="C B + latent handoff + cuDNN attn", **FAST),
    "D": dict(label="D C + chlast + fused qkv", **FAST, channels_last=True, fuse_qkv=True),
    "E": dict(label="E D + torch.compile", **FAST, channels_last=True, fuse_qkv=True, compile=True),
    # Last: the float8 swap is made in place on the (uncompiled) UNets.
    "F": dict(label="F E + fp8 linears", **FAST, channels_last=True, fuse_qkv=True, compile=True,
              fp8_linear=True),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs at 64 px, 2 steps: a CPU logic test")
    parser.add_argument("--variants", default="ABCD", help="letters of the variants to run (E, F: torch.compile)")
    parser.add_argument("--compile", action="store_true", help="also run variant E")
    parser.add_argument("--min-left-s", default="E:190,F:190",
                        help="per variant: skip it unless this many seconds of --budget-s are left")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode for E (default mode if unset)")
    parser.add_argument("--batches", type=int, default=2, help="timed batches per variant (after one warm-up)")
    parser.add_argument("--steps", type=int, default=None, help="num_inference_steps (default 60; tiny: 2)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="skip variants once this much time has passed")
    parser.add_argument("--out", default=None, help="write the results as JSON here (default: $OUT/bench_repaint.json)")
    args = parser.parse_args()
    start_all = time.perf_counter()
    if args.tiny:
        tiny_configs()
    steps = args.steps or STEPS

    import torch

    import diffusers
    from gen4gen.config import RecolourConfig
    from gen4gen.models.sdxl_repaint import SdxlPipelines, SdxlRepainter, apply_speed_options

    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    env = dict(python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__,
               cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0) if cuda else "cpu", tiny=args.tiny,
               resolution=RES, steps=steps)
    log(f"env: {env}")
    letters = [v for v in args.variants.upper() if v in VARIANTS]
    min_left = {k.strip().upper(): float(v) for k, v in (p.split(":") for p in args.min_left_s.split(",") if p)}
    if args.compile and "E" not in letters:
        letters.append("E")

    out_path = args.out or (os.path.join(os.environ["OUT"], "bench_repaint.json") if os.environ.get("OUT") else None)

    def save(results: list) -> None:
        if out_path:
            Path(out_path).write_text(json.dumps(dict(env=env, results=results), indent=1, default=str))

    log("building models (random weights, on the device) ...")
    base, refiner = build_pipelines(device, torch.float16)
    current_dtype = torch.float16
    results = []
    for letter in letters:
        spec = dict(VARIANTS[letter])
        label = spec.pop("label")
        if time.perf_counter() - start_all > args.budget_s - min_left.get(letter, 0.0):
            results.append(dict(variant=label, status="skipped (time budget)"))
            continue
        log(f"\n=== {label}")
        result = dict(variant=label, status="ok", **spec)
        try:
            config = RecolourConfig(backend="sdxl", resolution=RES, num_inference_steps=steps, background_init="noise",
                                    device=str(device), compile_mode=args.compile_mode, **spec)
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[config.dtype]
            if not cuda and dtype == torch.float16:
                dtype = torch.float32
            if dtype != current_dtype:
                for module in (base.unet, refiner.unet, base.vae, base.text_encoder, base.text_encoder_2):
                    module.to(dtype=dtype)
                current_dtype = dtype
            notes: list = []
            apply_speed_options(config, base, refiner, notes)  # the backend's own switches
            pipes = SdxlPipelines(base, refiner, device, dtype, {"base": "random", "refiner": "random"}, notes)
            repainter = SdxlRepainter(config, [], ROOT, pipelines=pipes)
            batch = requests(config.batch_size)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            out = repainter.repaint(batch)  # warm-up (and compilation for E)
            if cuda:
                torch.cuda.synchronize()
            result["warmup_s"] = round(time.perf_counter() - t, 2)
            assert len(out) == len(batch) and out[0][0].shape == (RES, RES, 3)
            times = []
            for _ in range(args.batches):
                t = time.perf_counter()
                repainter.repaint(batch)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            n_images = len(batch) * len(times)
            result.update(s_per_image=round(sum(times) / n_images, 4), images_per_s=round(n_images / sum(times), 4),
                          n_images=n_images, batch_s=[round(x, 3) for x in times],
                          peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                          oom_halvings=out[0][1]["sdxl"]["oom_halvings"], notes=notes)
            log(f"RESULT {label}: {result['s_per_image']:.3f} s/image, {result['images_per_s']:.3f} images/s, "
                f"peak {result['peak_mem_gib']} GiB, warm-up {result['warmup_s']} s")
            if config.compile:  # later variants would inherit the compiled UNets
                base.unet, refiner.unet = base.unet._orig_mod, refiner.unet._orig_mod
        except Exception as exc:  # keep going with the other variants
            result["status"] = f"FAILED: {type(exc).__name__}: {str(exc)[:300]}"
            traceback.print_exc()
        finally:
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        results.append(result)
        save(results)  # after every variant: a run cut short keeps what it measured

    log("\n" + "=" * 100)
    log(f"SUMMARY ({env['gpu']}, {RES}px, {steps} steps, strength 0.9, guidance 6.0, refiner from 0.75; random weights)")
    log(f"{'variant':34s} {'s/image':>8s} {'images/s':>9s} {'peak GiB':>9s} {'warm-up s':>10s}  status")
    for r in results:
        log(f"{r['variant']:34s} {r.get('s_per_image', float('nan')):8.3f} {r.get('images_per_s', float('nan')):9.3f} "
            f"{(r.get('peak_mem_gib') or float('nan')):9.2f} {r.get('warmup_s', float('nan')):10.1f}  {r['status']}")
    log(f"total {time.perf_counter() - start_all:.0f} s")
    if out_path:
        log(f"results written to {out_path}")
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
