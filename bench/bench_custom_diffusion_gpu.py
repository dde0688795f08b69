"""Custom Diffusion training and sampling speed on a GPU, with a full-size random-weight SD 1.5.

    .venv/bin/python bench/bench_custom_diffusion_gpu.py [--steps 20] [--out bench/results/x.json]
    .venv/bin/python bench/bench_custom_diffusion_gpu.py --tiny     # a CPU smoke test of this script

Builds SD 1.5's architecture (diffusers' UNet2DConditionModel defaults, the SD VAE, a 12-layer
CLIP text encoder; random weights, the byte-level tokenizer of the tiny models: speed does not
depend on the vocabulary) and saves it, then trains `gen4gen.custom_diffusion` at batch 2 and 512 px
on 8 generated images (seconds per step after 3 warm-up steps, peak GPU memory), and samples 8
images (25 steps, guidance 6) through a plain diffusers pipeline with the saved weights (images/s).
SDXL is not measured: the platform does not train it (README: "Personalisation").
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_sd15(target: Path) -> Path:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from gen4gen.tiny_models import tiny_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # SD 1.x: the defaults
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=12, vocab_size=514, max_position_embeddings=77,
                                        bos_token_id=512, eos_token_id=513, pad_token_id=513))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tiny_clip_tokenizer(), unet=unet,
                            scheduler=scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU: checks the script, not speed")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    import numpy as np
    import torch
    from PIL import Image

    from gen4gen.custom_diffusion import (TrainingExample, TrainingParams, load_personalised_pipeline, sample_images,
                                          train_custom_diffusion)
    from gen4gen.tiny_models import build_tiny_sd15

    device = "cpu" if args.tiny else "cuda"
    resolution = 64 if args.tiny else 512
    with tempfile.TemporaryDirectory(prefix="g4g-cd-bench-") as scratch:
        work = Path(scratch)
        began = time.perf_counter()
        base = build_tiny_sd15(work / "base") if args.tiny else build_sd15(work / "base")
        build_seconds = time.perf_counter() - began
        rng = np.random.default_rng(0)
        examples = []
        for i in range(8):
            path = work / f"img{i}.png"
            Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(path)
            examples.append(TrainingExample(path, f"a photo of <new1> cat and <new2> dog, view {i}"))
        params = TrainingParams(base_model=base, resolution=resolution, max_train_steps=args.steps, train_batch_size=2,
                                mixed_precision="no" if args.tiny else "fp16", log_every=args.steps)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result = train_custom_diffusion(examples, ["<new1>", "<new2>"], ["cat", "dog"], params, work / "model",
                                        device=device)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        timed = result.seconds_per_step[3:] or result.seconds_per_step
        pipe = load_personalised_pipeline(base, work / "model", ["<new1>", "<new2>"], device=device,
                                          torch_dtype=None if args.tiny else torch.float16)
        pipe.set_progress_bar_config(disable=True)
        sample_images(pipe, ["warm-up <new1>"], [0], steps=2, resolution=resolution)
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        images = sample_images(pipe, ["a photo of <new1> cat and <new2> dog on a beach"] * 2, [1, 2], n_per_prompt=4,
                               steps=25, guidance=6.0, resolution=resolution, batch_size=4)
        if device == "cuda":
            torch.cuda.synchronize()
        sampling = time.perf_counter() - began
    figures = {"model": "tiny SD 1.x" if args.tiny else "SD 1.5 architecture, random weights",
               "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
               "resolution": resolution, "batch": 2, "mixed_precision": params.mixed_precision,
               "build_and_save_seconds": round(build_seconds, 1), "training_steps": args.steps,
               "seconds_per_step": round(sum(timed) / len(timed), 4), "peak_gpu_memory_gib": peak and round(peak, 2),
               "sampling_images_per_s": round(len(images) / sampling, 3), "sampling_steps": 25}
    print(json.dumps(figures, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
