"""SDXL inpainting + refiner through the project's repaint backend, with tiny random-weight models
saved and loaded the way the real checkpoints are (``from_pretrained`` of a diffusers folder)."""
from __future__ import annotations

import numpy as np
import pytest

from gen4gen.config import PROJECT_ROOT, RecolourConfig
from gen4gen.models.common import MissingWeightsError, map_in_batches
from gen4gen.recolour import RepaintRequest
from gen4gen.scenes import BUILTIN_SCENES

from . import paper_models


@pytest.fixture(scope="module")
def sdxl_config(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "paper_models"
    return RecolourConfig(backend="sdxl", sdxl_model=str(paper_models.sdxl_inpaint(root)),
                          refiner_model=str(paper_models.sdxl_refiner(root)), variant="", resolution=64,
                          num_inference_steps=4, device="cpu", dtype="fp32", batch_size=4)


def _requests(n: int, size: int = 64) -> list[RepaintRequest]:
    out = []
    for i in range(n):
        image = np.zeros((size, size, 3), np.uint8)
        mask = np.zeros((size, size), np.uint8)
        mask[size // 4: 3 * size // 4, size // 4 + i: size // 2 + i] = 255
        image[mask > 0] = (200, 40 + 30 * i, 40)
        out.append(RepaintRequest(image=image, mask=mask, prompt=f"a realistic photo of scene {i}",
                                  negative_prompt="lowres, blurry", seed=1000 + i,
                                  scene=["lawn", "brick_wall", "unknown_place", "gravel_path"][i % 4]))
    return out


def _repainter(config, **changes):
    from gen4gen.models.sdxl_repaint import SdxlRepainter

    return SdxlRepainter(config.model_copy(update=changes), list(BUILTIN_SCENES), PROJECT_ROOT).load()


def test_models_load_like_the_original_script(sdxl_config):
    repainter = _repainter(sdxl_config)
    pipes = repainter.pipelines
    assert type(pipes.base).__name__ == type(pipes.refiner).__name__ == "StableDiffusionXLInpaintPipeline"
    assert pipes.base.unet.config.in_channels == 9 and pipes.refiner.unet.config.in_channels == 4
    # The refiner shares the base's second text encoder and VAE, and has no first text encoder.
    assert pipes.refiner.text_encoder_2 is pipes.base.text_encoder_2 and pipes.refiner.vae is pipes.base.vae
    assert pipes.refiner.text_encoder is None and pipes.refiner.config.requires_aesthetics_score
    assert _repainter(sdxl_config).pipelines is pipes  # loaded once per process
    assert repainter.identity()["refiner"] == sdxl_config.refiner_model


def test_shapes_seeds_and_batching(sdxl_config):
    requests = _requests(4)
    batched = _repainter(sdxl_config, batch_size=4).repaint(requests)
    assert len(batched) == 4
    for (image, info), request in zip(batched, requests):
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert info["sdxl"]["steps"] == 4 and info["sdxl"]["refiner"] is True and info["sdxl"]["oom_halvings"] == []
    assert batched[0][1]["background_init"] == "scene_bank" and batched[0][1]["background_photo"] == "pkg:skimage_grass"
    assert batched[2][1]["background_init"] == "noise"  # a scene the bank does not have
    # Same seed, same image; batch 1 gives each image exactly what batch 4 gave it.
    single = _repainter(sdxl_config, batch_size=1).repaint(requests)
    for (a, _), (b, _) in zip(batched, single):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    again = _repainter(sdxl_config, batch_size=4).repaint(requests)
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(batched, again))
    # A different seed gives a different picture.
    other = _requests(1)
    other[0].seed = 7
    assert not np.array_equal(_repainter(sdxl_config).repaint(other)[0][0], batched[0][0])


def test_other_canvas_sizes_are_resized_to_sdxl_and_back(sdxl_config):
    (image, info), = _repainter(sdxl_config).repaint(_requests(1, size=80))
    assert image.shape == (80, 80, 3) and info["sdxl"]["resolution"] == 64


def test_out_of_memory_halves_the_batch_and_keeps_the_results(sdxl_config, monkeypatch):
    import torch

    repainter = _repainter(sdxl_config, batch_size=4)
    requests = _requests(4)
    expected = [image for image, _ in _repainter(sdxl_config, batch_size=1).repaint(requests)]
    real = repainter.generate
    calls = []

    def generate(batch):
        calls.append(len(batch))
        if len(batch) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(batch)

    monkeypatch.setattr(repainter, "generate", generate)
    results = repainter.repaint(requests)
    assert calls == [4, 2, 1, 1, 1, 1]
    assert [info["sdxl"]["oom_halvings"] for _, info in results][0] == [4, 2]
    assert repainter.batch_size == 1 and results[0][1]["sdxl"]["batch_size"] == 1
    for (image, _), want in zip(results, expected):
        assert np.abs(image.astype(int) - want.astype(int)).max() <= 1


def test_backoff_helper():
    seen = []

    def fn(batch):
        seen.append(list(batch))
        if len(batch) > 3:
            raise RuntimeError("CUDA error: out of memory")
        return [x * 10 for x in batch]

    results, report = map_in_batches(list(range(10)), fn, 8)
    assert results == [x * 10 for x in range(10)] and report.halvings == [8, 4] and report.batch_size == 2
    with pytest.raises(ValueError):  # other errors are not swallowed
        map_in_batches([1, 2], lambda batch: (_ for _ in ()).throw(ValueError("bad input")), 2)
    with pytest.raises(RuntimeError, match="out of memory"):  # nothing smaller than one item to try
        map_in_batches([1], lambda batch: (_ for _ in ()).throw(RuntimeError("out of memory")), 1)


def test_missing_weights_name_every_model(tmp_path, monkeypatch):
    from gen4gen.models.sdxl_repaint import load_pipelines

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    config = RecolourConfig(backend="sdxl", sdxl_model=str(tmp_path / "nowhere"),
                            refiner_model="stabilityai/stable-diffusion-xl-refiner-1.0", device="cpu")
    with pytest.raises(MissingWeightsError) as error:
        load_pipelines(config, PROJECT_ROOT)
    text = str(error.value)
    assert "SDXL inpainting (base)" in text and "nowhere does not exist" in text
    assert "SDXL refiner" in text and "hf download stabilityai/stable-diffusion-xl-refiner-1.0" in text


def test_latent_handoff_to_the_refiner(sdxl_config):
    (image, info), = _repainter(sdxl_config, refiner_handoff="latent").repaint(_requests(1))
    assert image.shape == (64, 64, 3) and info["sdxl"]["handoff"] == "latent"


def test_gpu_benchmark_script_runs_tiny_on_the_cpu(tmp_path, monkeypatch):
    """bench/bench_sdxl_repaint.py --tiny: the GPU benchmark's logic, on tiny models."""
    import json
    import runpy
    import sys

    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["bench_sdxl_repaint.py", "--tiny", "--variants", "BD", "--batches", "1",
                                      "--out", str(out)])
    with pytest.raises(SystemExit) as exit_code:
        runpy.run_path(str(PROJECT_ROOT / "bench" / "bench_sdxl_repaint.py"), run_name="__main__")
    assert exit_code.value.code == 0
    results = json.loads(out.read_text())["results"]
    assert [r["status"] for r in results] == ["ok", "ok"] and all(r["s_per_image"] > 0 for r in results)


# ------------------------------------------------------------------ speed options
def test_float8_linear_agrees_with_the_full_precision_layer():
    import torch

    from gen4gen.models.fp8 import E4M3, Float8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96)
    x = torch.randn(2, 50, 64) * torch.logspace(-2, 2, 50)[None, :, None]  # rows of very different scales
    fp8 = Float8Linear(linear)
    want = linear(x)
    got = fp8(x)
    assert got.shape == want.shape == (2, 50, 96) and got.dtype == x.dtype
    # Per-row scaling: every row is as precise as e4m3 allows, however small its values.
    row_error = (got - want).norm(dim=-1) / want.norm(dim=-1)
    assert row_error.max() < 0.1 and row_error.mean() < 0.05
    assert fp8.weight_fp8.dtype == E4M3 and fp8.weight_scale.shape == (1, 96)
    # Scales are powers of two, so a dtype cast of the model cannot round them.
    assert torch.equal(torch.exp2(torch.log2(fp8.weight_scale).round()), fp8.weight_scale)
    weight, scale = fp8.weight_fp8.clone(), fp8.weight_scale.clone()
    fp8.to(torch.bfloat16)
    assert fp8.weight_fp8.dtype == E4M3 and fp8.weight_scale.dtype == torch.float32
    assert torch.equal(fp8.weight_fp8.view(torch.uint8), weight.view(torch.uint8)) and torch.equal(fp8.weight_scale, scale)
    assert fp8(x.bfloat16()).dtype == torch.bfloat16


def test_float8_swap_covers_the_transformer_linears_only(sdxl_config):
    import torch
    from diffusers import UNet2DConditionModel

    from gen4gen.models.fp8 import Float8Linear, float8_linears

    unet = UNet2DConditionModel.from_pretrained(sdxl_config.sdxl_model, subfolder="unet")
    swapped = float8_linears(unet)
    modules = dict(unet.named_modules())
    fp8_names = [n for n, m in modules.items() if isinstance(m, Float8Linear)]
    # 4 transformer models (down, mid, 2 up; proj_in and proj_out each) holding 8 blocks of 2
    # layers, each block with 8 image-side linears (q, k, v, out; cross q, out; GEGLU in, out).
    assert swapped == len(fp8_names) == 4 * 2 + 8 * 8
    assert all(".attentions." in n for n in fp8_names)
    assert type(modules["time_embedding.linear_1"]) is torch.nn.Linear  # outside the transformers
    assert type(modules["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"]) is torch.nn.Linear


def test_repaint_with_float8_linears_and_cudnn_attention_option(sdxl_config):
    config = sdxl_config.model_copy(update={"fp8_linear": True, "attention_backend": "cudnn"})
    first = _repainter(config).repaint(_requests(2))
    again = _repainter(config).repaint(_requests(2))
    assert [image.shape for image, _ in first] == [(64, 64, 3)] * 2
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, again))
    notes = _repainter(config).identity()["notes"]
    assert any(note.startswith("float8 linear layers") for note in notes)
    assert any("force_upcast" in note for note in notes)  # the VAE stays in the model's dtype


def test_refiner_skips_the_unused_masked_image_encode(sdxl_config, monkeypatch):
    repainter = _repainter(sdxl_config, batch_size=2)
    vae = repainter.pipelines.base.vae
    encodes = []
    real_encode = vae.encode
    monkeypatch.setattr(vae, "encode", lambda *a, **k: encodes.append(1) or real_encode(*a, **k))
    requests = _requests(2)
    ours = repainter.repaint(requests)
    # base: the init image and the masked image; refiner: the init image only.
    assert len(encodes) == 2 * 2 + 2
    refiner = repainter.pipelines.refiner
    real_call = type(refiner).__call__
    monkeypatch.setattr(type(refiner), "__call__", lambda self, *a, masked_image_latents=None, **k:
                        real_call(self, *a, **k))
    encodes.clear()
    plain = repainter.repaint(requests)
    assert len(encodes) == 2 * 2 + 2 * 2
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(ours, plain))  # the same pictures
