"""Background repainting as in the paper: SDXL inpainting, then the SDXL refiner.

Per image (the original script's defaults, all in ``[recolour]``): the objects are laid over a
scene-bank photo of the layout's scene (or noise), the object mask is feathered (box blur 5,
intensity rescaled from [127.5, 255]) and inverted into the inpainting mask, and
``diffusers/stable-diffusion-xl-1.0-inpainting-0.1`` repaints the background at 1024² with
"a realistic photo of {background prompt}", the negative prompt, guidance 6.0, 60 steps and
strength 0.9; ``stabilityai/stable-diffusion-xl-refiner-1.0``, sharing the base's
``text_encoder_2`` and VAE, then refines from ``denoising_start`` 0.75.

Every image has its own seeded CPU generator, so an image comes out the same whatever batch
it runs in. Requests run in batches of ``batch_size``; a CUDA out-of-memory error halves the
batch and retries. Pipelines are loaded once per process.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gen4gen.config import RecolourConfig
from gen4gen.recolour import RepaintRequest, SceneBankRepainter, feather_mask
from gen4gen.scenes import SceneSpec

from .common import (WeightSpec, dtype_name, load_source, log, map_in_batches, require, resolve_device,
                     resolve_dtype)

BACKEND_NAME = "sdxl"
_CACHE: dict[tuple, "SdxlPipelines"] = {}
_LOCK = threading.Lock()


def weight_specs(config: RecolourConfig) -> list[WeightSpec]:
    if config.backend != BACKEND_NAME:
        return []
    specs = [WeightSpec("recolour", "SDXL inpainting (base)", config.sdxl_model, required=("model_index.json",),
                        config_key="recolour.sdxl_model")]
    if config.refiner_model:
        specs.append(WeightSpec("recolour", "SDXL refiner", config.refiner_model, required=("model_index.json",),
                                config_key="recolour.refiner_model"))
    return specs


@dataclass
class SdxlPipelines:
    base: object  # StableDiffusionXLInpaintPipeline
    refiner: object | None  # StableDiffusionXLInpaintPipeline sharing text_encoder_2 and the VAE
    device: object
    dtype: object
    sources: dict
    notes: list


def _quiet_diffusers() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def _from_pretrained(cls, source: str, kwargs: dict, variant: str | None, notes: list, **components):
    """``from_pretrained`` with the configured weight variant, else the default files."""
    if variant:
        try:
            return cls.from_pretrained(source, variant=variant, **kwargs, **components)
        except (OSError, ValueError) as exc:
            if "variant" not in str(exc).lower():
                raise
            notes.append(f"{source}: no {variant!r} weight variant, loaded the default files")
    return cls.from_pretrained(source, **kwargs, **components)


def load_pipelines(config: RecolourConfig, project_root: Path) -> SdxlPipelines:
    """Base and refiner, loaded once per process for the same configuration."""
    located = require(weight_specs(config), project_root)
    device = resolve_device(config.device)
    dtype, note = resolve_dtype(config.dtype, device)
    key = (tuple(str(f.path or f.hub_id) for f in located), str(device), str(dtype), config.variant,
           config.channels_last, config.fuse_qkv, config.compile, config.compile_mode, config.fp8_linear)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        _quiet_diffusers()
        from diffusers import StableDiffusionXLInpaintPipeline

        notes = [note] if note else []
        source, kwargs = load_source(located[0])
        kwargs = dict(kwargs, dtype=dtype, add_watermarker=False)
        base = _from_pretrained(StableDiffusionXLInpaintPipeline, source, kwargs, config.variant or None, notes)
        refiner = None
        sources = {"base": located[0].hub_id or str(located[0].path)}
        if len(located) > 1:
            ref_source, ref_kwargs = load_source(located[1])
            ref_kwargs = dict(ref_kwargs, dtype=dtype, add_watermarker=False)
            # As the original script: the refiner reuses the base's second text encoder and VAE.
            refiner = _from_pretrained(StableDiffusionXLInpaintPipeline, ref_source, ref_kwargs,
                                       config.variant or None, notes, text_encoder_2=base.text_encoder_2,
                                       vae=base.vae)
            sources["refiner"] = located[1].hub_id or str(located[1].path)
        for pipe in (base, refiner):
            if pipe is not None:
                pipe.to(device)
                pipe.set_progress_bar_config(disable=True)
        apply_speed_options(config, base, refiner, notes)
        _CACHE[key] = SdxlPipelines(base, refiner, device, dtype, sources, notes)
        return _CACHE[key]


def apply_speed_options(config: RecolourConfig, base, refiner, notes: list) -> None:
    """The configured speed switches, applied to loaded pipelines (each one recorded in ``notes``)."""
    import torch

    unets = [base.unet] + ([refiner.unet] if refiner is not None else [])
    # The SDXL VAE overflows in float16 only; in bf16/fp32 the float32 round trip that
    # force_upcast asks for (weights re-cast at every encode) buys nothing.
    if base.vae.dtype != torch.float16 and base.vae.config.force_upcast:
        base.vae.register_to_config(force_upcast=False)
        notes.append(f"VAE runs in {dtype_name(base.vae.dtype)} (force_upcast is for float16)")
    # One image at a time through the VAE: same throughput, a fraction of the peak memory.
    base.vae.enable_slicing()
    if config.channels_last:
        for module in unets + [base.vae]:
            module.to(memory_format=torch.channels_last)
    if config.fuse_qkv:
        for module in unets:
            module.fuse_qkv_projections()
    if config.fp8_linear:
        from .fp8 import float8_linears

        swapped = [float8_linears(unet) for unet in unets]
        notes.append(f"float8 linear layers in the UNets' transformer blocks: {swapped}")
    if config.compile:
        import torch._inductor.config as inductor

        inductor.conv_1x1_as_mm = True  # 1x1 convolutions (resnet shortcuts) as matrix products
        base.unet = torch.compile(base.unet, mode=config.compile_mode)
        if refiner is not None:
            refiner.unet = torch.compile(refiner.unet, mode=config.compile_mode)
        notes.append(f"UNets compiled (torch.compile mode {config.compile_mode or 'default'})")


@contextmanager
def attention_kernels(choice: str, device):
    """Scaled-dot-product attention backends in the configured order of preference."""
    if choice == "auto" or getattr(device, "type", str(device)) != "cuda":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
             SDPBackend.MATH]
    try:
        kernels = sdpa_kernel(order, set_priority=True)
    except TypeError:  # PyTorch before 2.6 has no priority order: its own order then
        kernels = sdpa_kernel(order)
    with kernels:
        yield


@dataclass
class _Prepared:
    image: Image.Image  # init image at the working resolution
    mask: Image.Image  # inpainting mask: white = repaint
    prompt: str
    negative_prompt: str
    seed: int
    size: int  # the canvas size to return
    info: dict


class SdxlRepainter:
    """The paper profile's :class:`~gen4gen.backends.Repainter`: SDXL inpainting + refiner."""

    name = BACKEND_NAME

    def __init__(self, config: RecolourConfig, scenes: list[SceneSpec], project_root: Path,
                 pipelines: SdxlPipelines | None = None):
        self.config = config
        self.project_root = Path(project_root)
        self.scene_names = {s.name for s in scenes}
        self._backgrounds = SceneBankRepainter(scenes, config) if scenes else None
        self.pipelines = pipelines
        self.batch_size = max(1, config.batch_size)

    def load(self) -> "SdxlRepainter":
        if self.pipelines is None:
            self.pipelines = load_pipelines(self.config, self.project_root)
        return self

    def close(self) -> None:
        """Drop this repainter's hold on the pipelines (the per-process cache keeps them for the next step)."""
        self.pipelines = None

    def identity(self) -> dict:
        self.load()
        p = self.pipelines
        return {"backend": self.name, **p.sources, "device": str(p.device), "dtype": dtype_name(p.dtype),
                "notes": p.notes}

    # ------------------------------------------------------------ inputs
    def prepare(self, request: RepaintRequest) -> _Prepared:
        config = self.config
        size = request.image.shape[0]
        rng = np.random.default_rng(request.seed)
        if config.background_init == "scene_bank" and self._backgrounds is not None and request.scene in self.scene_names:
            background, source = self._backgrounds.background_for(request.scene, size, rng)
            info = {"background_init": "scene_bank", "background_photo": source}
        else:
            background = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            info = {"background_init": "noise", "background_photo": None}
        weight = feather_mask(request.mask, config.feather_radius, config.feather_low)[..., None]
        init = np.clip(request.image.astype(np.float32) * weight + background.astype(np.float32) * (1 - weight) + 0.5,
                       0, 255).astype(np.uint8)
        repaint = np.clip((1.0 - weight[..., 0]) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image, mask = Image.fromarray(init), Image.fromarray(repaint)
        res = config.resolution
        if size != res:
            image = image.resize((res, res), Image.Resampling.BICUBIC)
            mask = mask.resize((res, res), Image.Resampling.BILINEAR)
        return _Prepared(image, mask, request.prompt, request.negative_prompt, int(request.seed), size, info)

    # ------------------------------------------------------------ generation
    def generate(self, batch: list[_Prepared]) -> list[Image.Image]:
        """One batch through the base and the refiner; one generator per image."""
        import torch

        config = self.config
        pipes = self.pipelines
        generators = [torch.Generator(device="cpu").manual_seed(p.seed) for p in batch]
        common = dict(prompt=[p.prompt for p in batch], negative_prompt=[p.negative_prompt for p in batch],
                      mask_image=[p.mask for p in batch], height=config.resolution, width=config.resolution,
                      guidance_scale=config.guidance_scale, num_inference_steps=config.num_inference_steps,
                      strength=config.strength, generator=generators)
        latent = pipes.refiner is not None and config.refiner_handoff == "latent"
        with torch.inference_mode(), attention_kernels(config.attention_backend, pipes.device):
            images = pipes.base(image=[p.image for p in batch], output_type="latent" if latent else "pil",
                                **common).images
            if pipes.refiner is not None:
                extra = {}
                if not latent and pipes.refiner.unet.config.in_channels == 4:
                    # A 4-channel refiner never reads the masked image's latents, yet the pipeline
                    # would VAE-encode it: hand it zeros instead (the output is the same).
                    side = config.resolution // pipes.refiner.vae_scale_factor
                    extra["masked_image_latents"] = torch.zeros((len(batch), 4, side, side), device=pipes.device,
                                                                dtype=pipes.dtype)
                images = pipes.refiner(image=images, denoising_start=config.refiner_denoising_start, **common,
                                       **extra).images
        return images

    def repaint(self, requests: list[RepaintRequest]) -> list[tuple[np.ndarray, dict]]:
        self.load()
        prepared = [self.prepare(r) for r in requests]
        images, report = map_in_batches(prepared, self.generate, self.batch_size)
        if report.halvings:
            log.warning("SDXL repaint: batch size reduced to %d after out-of-memory errors", report.batch_size)
        self.batch_size = report.batch_size  # later calls start from the size that fitted
        config = self.config
        results = []
        for p, image in zip(prepared, images):
            if image.size != (p.size, p.size):
                image = image.resize((p.size, p.size), Image.Resampling.LANCZOS)
            info = {**p.info, "sdxl": {"steps": config.num_inference_steps, "guidance_scale": config.guidance_scale,
                                       "strength": config.strength, "resolution": config.resolution,
                                       "refiner": self.pipelines.refiner is not None,
                                       "denoising_start": config.refiner_denoising_start,
                                       "handoff": config.refiner_handoff,
                                       "batch_size": report.batch_size, "oom_halvings": report.halvings}}
            results.append((np.ascontiguousarray(np.asarray(image.convert("RGB"))), info))
        return results
