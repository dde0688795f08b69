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
