"""Custom Diffusion fine-tuning (Kumari et al., CVPR 2023), as in diffusers'
``examples/custom_diffusion/train_custom_diffusion.py``, for SD 1.x base models.

Trained: the key/value projections of a ``CustomDiffusionAttnProcessor`` on each cross-attention
layer, initialised from the layer's own (``freeze_model="crossattn"`` adds query and output), and
the embedding rows of new tokens (``<new1>``, ``<comp1>``...) initialised from initializer words.
All else is frozen, the pre-existing embedding rows bit-identically (the example zeroes their
gradients, which AdamW's weight decay defeats: here they are also written back every step).
Loss: MSE to the DDPM noise (or velocity), plus ``prior_loss_weight`` x the same on class images
with prior preservation. Not taken from the example: its rescale augmentation and masked loss.
Images are resized and centre-cropped and go through the frozen VAE encoder once.

Outputs (atomic writes), loadable by a plain diffusers pipeline (``load_personalised_pipeline``):
``pytorch_custom_diffusion_weights.bin`` (``unet.save_attn_procs``), ``<token>.bin`` per new token
(``{token: embedding}``, for ``load_textual_inversion``), ``training_log.jsonl``, ``loss_curve.png``.

SDXL is not offered: the example and ``load_attn_procs`` cover SD 1.x-style pipelines with one CLIP
text encoder; SDXL's second encoder, pooled embeddings and size conditioning are not handled there.
Heavy libraries (torch, diffusers, transformers) are imported inside the functions.
"""
from __future__ import annotations

import io
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .config.training import TrainingConfig
from .io import atomic_write_bytes, load_photo
from .training_log import write_log, write_loss_curve

log = logging.getLogger(__name__)

WEIGHTS_NAME = "pytorch_custom_diffusion_weights.bin"
FALLBACK_INITIALIZER = "ktn"  # the example's first default initializer word


# ------------------------------------------------------------------ configuration
_DEFAULTS = TrainingConfig()  # one place for the defaults: the configuration model


@dataclass
class TrainingParams:
    """``[training]`` (:class:`~gen4gen.config.training.TrainingConfig`) plus the optimiser's fixed settings."""

    base_model: Path
    resolution: int = _DEFAULTS.resolution
    max_train_steps: int = _DEFAULTS.max_train_steps
    learning_rate: float = _DEFAULTS.learning_rate
    scale_lr: bool = _DEFAULTS.scale_lr  # lr x batch x grad accumulation x processes (x2 with prior preservation)
    train_batch_size: int = _DEFAULTS.train_batch_size
    gradient_accumulation_steps: int = _DEFAULTS.gradient_accumulation_steps
    mixed_precision: str = _DEFAULTS.mixed_precision  # "no" | "fp16" (CUDA) | "bf16"
    gradient_checkpointing: bool = _DEFAULTS.gradient_checkpointing
    seed: int = _DEFAULTS.seed
    freeze_model: str = _DEFAULTS.freeze_model  # or "crossattn": also train the query and output projections
    with_prior_preservation: bool = False
    prior_loss_weight: float = _DEFAULTS.prior_loss_weight
    num_class_images: int = _DEFAULTS.num_class_images
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = _DEFAULTS.adam_weight_decay
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    hflip: bool = False  # seeded random horizontal flips
    log_every: int = 10  # steps between log lines and rewrites of training_log.jsonl

    @classmethod
    def from_config(cls, training: TrainingConfig, base_model: Path, with_prior_preservation: bool) -> "TrainingParams":
        keys = ("resolution", "max_train_steps", "learning_rate", "scale_lr", "train_batch_size", "seed",
                "gradient_accumulation_steps", "mixed_precision", "gradient_checkpointing", "freeze_model",
                "prior_loss_weight", "num_class_images", "adam_weight_decay")
        return cls(base_model=base_model, with_prior_preservation=with_prior_preservation,
                   **{key: getattr(training, key) for key in keys})

    def effective_learning_rate(self, num_processes: int = 1) -> float:
        if not self.scale_lr:
            return self.learning_rate
        lr = self.learning_rate * self.gradient_accumulation_steps * self.train_batch_size * num_processes
        return lr * 2.0 if self.with_prior_preservation else lr

    def check(self, device: str) -> None:
        counts = ("resolution", "max_train_steps", "train_batch_size", "gradient_accumulation_steps", "log_every")
        if (self.freeze_model not in ("crossattn_kv", "crossattn") or self.mixed_precision not in ("no", "fp16", "bf16")
                or any(getattr(self, n) < 1 for n in counts) or self.resolution % 8):
            raise ValueError(f"invalid training parameters: {self}")
        if self.mixed_precision == "fp16" and not str(device).startswith("cuda"):
            raise ValueError("fp16 mixed precision needs a CUDA device; use 'bf16' or 'no' on CPU")


@dataclass
class TrainingExample:
    image_path: Path
    prompt: str


@dataclass
class TrainingResult:
    output_dir: Path
    weights_path: Path
    embedding_paths: dict[str, Path]
    log_path: Path
    loss_curve_path: Path
    losses: list[float]
    seconds_per_step: list[float]
    learning_rate: float  # after scaling
    token_ids: dict[str, int]
    # The trained model in memory, or after mixed precision the saved weights on the float32 base.
    pipeline: Any = field(default=None, repr=False)


# ------------------------------------------------------------------ data
def _load_image_tensor(path: Path, resolution: int):
    """RGB in [-1, 1], (3, R, R): centre-cropped and resized (bicubic); transparency over white."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    photo = load_photo(path, min_side=8)
    rgb = photo.rgb.astype(np.float32)
    if photo.alpha is not None:
        alpha = photo.alpha.astype(np.float32)[..., None] / 255.0
        rgb = rgb * alpha + 255.0 * (1.0 - alpha)
    image = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
    image = ImageOps.fit(image, (resolution, resolution), method=Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def _latent_batches(vae, tokenizer, items: Sequence[TrainingExample], params: TrainingParams, device, dtype, seed):
    """Endless seeded batches of (latent mean, latent std, token ids), every one full. The frozen VAE
    encodes each image once (its mirror image too with ``hflip``); each pass is a new permutation."""
    import torch

    pixels = torch.stack([_load_image_tensor(Path(e.image_path), params.resolution) for e in items])
    views = [pixels, pixels.flip(-1)] if params.hflip else [pixels]
    with torch.no_grad():
        dists = [[vae.encode(v[i: i + 8].to(device, dtype)).latent_dist for i in range(0, len(v), 8)] for v in views]
    means = torch.stack([torch.cat([d.mean for d in view]) for view in dists])  # (views, N, C, h, w)
    stds = torch.stack([torch.cat([d.std for d in view]) for view in dists])
    input_ids = tokenizer([e.prompt for e in items], padding="max_length", truncation=True,
                          max_length=tokenizer.model_max_length, return_tensors="pt").input_ids.to(device)
    generator = torch.Generator().manual_seed(seed)

    def batches():  # a generator of its own, so the encoding above happens now, not at the first batch
        order: list[int] = []
        while True:
            picked = []
            while len(picked) < params.train_batch_size:
                order = order or torch.randperm(len(items), generator=generator).tolist()
                picked.append(order.pop(0))
            flips = [0] * len(picked)
            if params.hflip:
                flips = (torch.rand(len(picked), generator=generator) < 0.5).long().tolist()
            yield means[flips, picked], stds[flips, picked], input_ids[picked]

    return batches()


# ------------------------------------------------------------------ model set-up
def _add_tokens(tokenizer, text_encoder, new_tokens: list[str], initializer_words: list[str]) -> dict[str, int]:
    """Add the tokens; each new embedding row copies its word's (``FALLBACK_INITIALIZER``'s if several tokens)."""
    import torch

    if len(initializer_words) < len(new_tokens) or len(set(new_tokens)) != len(new_tokens):
        raise ValueError(f"need distinct new tokens, one initializer word each: {new_tokens}, {initializer_words}")
    ids, sources = {}, []
    for token, word in zip(new_tokens, initializer_words):
        if tokenizer.add_tokens(token) == 0:
            raise ValueError(f"the tokenizer already contains {token!r}; choose another modifier token")
        word_ids = tokenizer.encode(word, add_special_tokens=False)
        if len(word_ids) != 1:
            log.warning("initializer %r of %s is %d tokens; using %r", word, token, len(word_ids), FALLBACK_INITIALIZER)
            word_ids = tokenizer.encode(FALLBACK_INITIALIZER, add_special_tokens=False)
        sources.append(word_ids[0])
        ids[token] = tokenizer.convert_tokens_to_ids(token)
        if tokenizer.encode(token, add_special_tokens=False) != [ids[token]]:
            raise ValueError(f"{token!r} does not tokenize to its own single id")
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token, source in zip(new_tokens, sources):
            weight[ids[token]] = weight[source]
    return ids


def _install_custom_attention(unet, state: dict, freeze_model: str, device) -> list:
    """A Custom Diffusion processor on every attention layer, as in the example, initialised from the
    float32 ``state``; sizes from each layer's ``to_k``. Returns the trainable parameters."""
    import torch.nn.functional as F
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor, CustomDiffusionAttnProcessor2_0

    sdpa = hasattr(F, "scaled_dot_product_attention")  # as the example: the PyTorch 2 processor when available
    processor_class = CustomDiffusionAttnProcessor2_0 if sdpa else CustomDiffusionAttnProcessor
    train_q_out = freeze_model == "crossattn"
    processors = {}
    for name in unet.attn_processors:
        layer = name[: -len(".processor")]
        to_k = state[f"{layer}.to_k.weight"]
        if name.endswith("attn1.processor"):  # self-attention: nothing to train
            processors[name] = processor_class(train_kv=False, train_q_out=False, hidden_size=to_k.shape[0])
            continue
        keys = ["to_k.weight", "to_v.weight"]
        keys += ["to_q.weight", "to_out.0.weight", "to_out.0.bias"] if train_q_out else []
        weights = {key.replace(".", "_custom_diffusion.", 1): state[f"{layer}.{key}"] for key in keys}
        processor = processor_class(train_kv=True, train_q_out=train_q_out, hidden_size=to_k.shape[0],
                                    cross_attention_dim=to_k.shape[1])
        processor.load_state_dict(weights)
        processors[name] = processor.to(device)
    unet.set_attn_processor(processors)
    # New modules' parameters require gradients, whatever was frozen before.
    return [p for processor in unet.attn_processors.values() for p in processor.parameters()]


# ------------------------------------------------------------------ training
def train_custom_diffusion(examples: Sequence[TrainingExample], new_tokens: list[str], initializer_words: list[str],
                           params: TrainingParams, output_dir: Path, device: str = "cpu",
                           progress: Callable[[int, float, float], None] = lambda step, loss, seconds: None,
                           class_examples: Sequence[TrainingExample] = ()) -> TrainingResult:
    """Fine-tune ``params.base_model`` on ``examples``; save the weights, log and loss curve.
    ``progress(step, loss, seconds_per_step)`` follows every optimizer step. ``class_examples`` (the
    first ``num_class_images``) serve prior preservation. Deterministic for a fixed seed on CPU."""
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    params.check(device)
    class_examples = list(class_examples)[: params.num_class_images]
    if not examples or (params.with_prior_preservation and not class_examples):
        raise ValueError("no training examples" if not examples else "with_prior_preservation needs class_examples")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(params.seed)

    # --- models, loaded like real weights, in float32 whatever dtype the checkpoint holds
    base, local, fp32 = str(params.base_model), dict(local_files_only=True), torch.float32
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **local)
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", dtype=fp32, **local)
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=fp32, **local)
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", torch_dtype=fp32, **local)
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler", **local)
    if noise_scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"unknown prediction type {noise_scheduler.config.prediction_type}")
    original_vocab = len(tokenizer)
    token_ids = _add_tokens(tokenizer, text_encoder, list(new_tokens), list(initializer_words))

    # --- what trains: the processors' k/v (q/out) and the embedding matrix, new rows only
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[params.mixed_precision]
    for model in (vae, unet, text_encoder):
        model.requires_grad_(False)
    embeddings = text_encoder.get_input_embeddings().requires_grad_(True)
    frozen_rows = embeddings.weight.detach()[:original_vocab].clone()
    text_encoder.to(device)  # stays float32: its embedding matrix trains
    float32_state = unet.state_dict()  # the processors start from, and stay in, float32
    for model in (vae, unet):
        model.to(device)
        if weight_dtype != torch.float32:
            model.to(dtype=weight_dtype)
    trainable = [embeddings.weight, *_install_custom_attention(unet, float32_state, params.freeze_model, device)]
    del float32_state
    if params.gradient_checkpointing:
        unet.enable_gradient_checkpointing()  # and the text encoder, by its transformers 5 name if it has it:
        getattr(text_encoder, "activation_checkpointing_enable", text_encoder.gradient_checkpointing_enable)()
    learning_rate = params.effective_learning_rate()
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, betas=(params.adam_beta1, params.adam_beta2),
                                  weight_decay=params.adam_weight_decay, eps=params.adam_epsilon)
    scaler = torch.amp.GradScaler(device.type, enabled=params.mixed_precision == "fp16")  # a no-op otherwise

    instances = _latent_batches(vae, tokenizer, examples, params, device, weight_dtype, params.seed + 1)
    priors = (_latent_batches(vae, tokenizer, class_examples, params, device, weight_dtype, params.seed + 2)
              if params.with_prior_preservation else None)

    def diffusion_loss(mean, std, input_ids):
        latents = mean + std * torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype)
        latents = latents * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator, device=device).long()
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, text_encoder(input_ids)[0].to(weight_dtype)).sample
        epsilon = noise_scheduler.config.prediction_type == "epsilon"
        target = noise if epsilon else noise_scheduler.get_velocity(latents, noise, timesteps)
        return F.mse_loss(prediction.float(), target.float(), reduction="mean")

    autocast = torch.autocast(device_type=device.type, dtype=weight_dtype, enabled=weight_dtype != torch.float32)
    losses, seconds = [], []
    log_path = output_dir / "training_log.jsonl"
    unet.train()
    text_encoder.train()
    log.info("Custom Diffusion: %d images, lr %.3g, tokens %s", len(examples), learning_rate, token_ids)
    for step in range(1, params.max_train_steps + 1):
        started, step_loss = time.perf_counter(), 0.0
        for _ in range(params.gradient_accumulation_steps):
            with autocast:
                loss = diffusion_loss(*next(instances))
                if priors is not None:
                    loss = loss + params.prior_loss_weight * diffusion_loss(*next(priors))
            loss = loss / params.gradient_accumulation_steps
            scaler.scale(loss).backward()
            step_loss += float(loss.detach())
        embeddings.weight.grad[:original_vocab] = 0  # as the example: only new rows learn, or count for clipping
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # AdamW's weight decay shrank every row: put the pre-existing ones back
            embeddings.weight[:original_vocab] = frozen_rows
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"loss became {step_loss} at step {step}")
        losses.append(step_loss)
        seconds.append(time.perf_counter() - started)
        progress(step, step_loss, seconds[-1])
        if step % params.log_every == 0 or step == params.max_train_steps:
            log.info("step %d/%d loss %.5f (%.3f s/step)", step, params.max_train_steps, step_loss, seconds[-1])
            write_log(log_path, losses, seconds)
    unet.eval()
    text_encoder.eval()

    # --- outputs
    weights_path = _save_attn_procs(unet, output_dir)
    embedding_paths = {}
    for token, token_id in token_ids.items():
        buffer = io.BytesIO()  # a clone, so the file holds the row, not the whole matrix's storage
        torch.save({token: embeddings.weight[token_id].detach().to("cpu", torch.float32).clone()}, buffer)
        embedding_paths[token] = atomic_write_bytes(output_dir / f"{token}.bin", buffer.getvalue())
    curve_path = write_loss_curve(output_dir / "loss_curve.png", losses)
    if weight_dtype == torch.float32:
        pipeline = StableDiffusionPipeline.from_pretrained(base, unet=unet, vae=vae, text_encoder=text_encoder,
                                                           tokenizer=tokenizer, **local)
    else:  # the frozen weights were cast for training: start again from the base model's own
        del unet, vae, text_encoder
        pipeline = load_personalised_pipeline(params.base_model, output_dir, list(token_ids), device=str(device))
    return TrainingResult(output_dir=output_dir, weights_path=weights_path, embedding_paths=embedding_paths,
                          log_path=log_path, loss_curve_path=curve_path, losses=losses, seconds_per_step=seconds,
                          learning_rate=learning_rate, token_ids=token_ids, pipeline=pipeline)


def _save_attn_procs(unet, output_dir: Path) -> Path:
    """``unet.save_attn_procs`` into a scratch folder, then an atomic rename. Pickle, not safetensors:
    it keeps the self-attention processors' empty entries, which ``load_attn_procs`` needs."""
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".attn-procs-") as scratch:
        unet.save_attn_procs(scratch, weight_name=WEIGHTS_NAME, safe_serialization=False)
        os.replace(Path(scratch) / WEIGHTS_NAME, output_dir / WEIGHTS_NAME)
    return output_dir / WEIGHTS_NAME


# ------------------------------------------------------------------ loading and sampling
def load_personalised_pipeline(base_model: Path, weights_dir: Path, new_tokens: list[str], device: str = "cpu",
                               torch_dtype=None):
    """A plain diffusers ``StableDiffusionPipeline`` with the saved Custom Diffusion weights."""
    from diffusers import StableDiffusionPipeline
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor

    pipe = StableDiffusionPipeline.from_pretrained(str(base_model), local_files_only=True, torch_dtype=torch_dtype)
    # diffusers (0.42.1 and main, issue #9320) installs the loaded processors only when given the
    # private ``_pipeline`` argument; without it load_attn_procs silently changes nothing.
    pipe.unet.load_attn_procs(str(weights_dir), weight_name=WEIGHTS_NAME, local_files_only=True, _pipeline=pipe)
    if not all(isinstance(p, CustomDiffusionAttnProcessor) for p in pipe.unet.attn_processors.values()):
        raise RuntimeError(f"the Custom Diffusion weights in {weights_dir} were not installed in the UNet")
    for token in new_tokens:
        pipe.load_textual_inversion(str(weights_dir), weight_name=f"{token}.bin", local_files_only=True)
    return pipe.to(device)


def sample_images(pipe, prompts: Sequence[str], seeds: Sequence[int], n_per_prompt: int = 1, steps: int = 50,
                  guidance: float = 6.0, resolution: int = 512, batch_size: int = 4, output_type: str = "pil",
                  eta: float = 0.0) -> list:
    """``n_per_prompt`` images per prompt, prompt-major. Image ``j`` of prompt ``i`` has its own
    generator seeded ``seeds[i] + j``, so it does not depend on the batch it is drawn in.
    Returns PIL images (float arrays in [0, 1] with ``output_type="np"``)."""
    import torch

    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts need as many seeds, got {len(seeds)}")
    jobs = [(prompt, seed + j) for prompt, seed in zip(prompts, seeds) for j in range(n_per_prompt)]
    images: list = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start: start + batch_size]
        out = pipe([prompt for prompt, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   height=resolution, width=resolution, eta=eta, output_type=output_type,
                   generator=[torch.Generator(device=pipe.device).manual_seed(seed) for _, seed in chunk])
        images.extend(list(out.images))
    return images
