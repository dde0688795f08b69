"""Profiles, the weights preflight (fail fast, name what is missing) and the `gpu` concurrency pool."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from gen4gen.cli import main
from gen4gen.config import PROFILES, load_config
from gen4gen.models.preflight import check

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("GEN4GEN_CONFIG", "GEN4GEN_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    # Set (to "unset"), not deleted: `gen4gen --profile` writes it, and teardown must undo that.
    monkeypatch.setenv("GEN4GEN_PROFILE", "")
    monkeypatch.chdir(tmp_path)  # no ./gen4gen.toml
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    return monkeypatch


def test_profiles_switch_every_backend_and_user_values_win(clean_env, tmp_path):
    default = load_config()
    assert default.profile == "embedded"
    assert (default.segmentation.backend, default.layout.backend, default.recolour.backend,
            default.caption.backend) == ("isnet_onnx", "rule_based", "scene_bank", "layout_retelling")
    clean_env.setenv("GEN4GEN_PROFILE", "paper")
    paper = load_config()
    assert (paper.segmentation.backend, paper.layout.backend, paper.recolour.backend,
            paper.caption.backend) == ("isnet_torch", "llm", "sdxl", "vlm")
    assert paper.recolour.guidance_scale == 6.0 and paper.recolour.num_inference_steps == 60
    assert paper.recolour.strength == 0.9 and paper.recolour.refiner_denoising_start == 0.75
    # A single section overridden in the file; the rest of the profile stays.
    file = tmp_path / "g.toml"
    file.write_text('[recolour]\nbackend = "scene_bank"\n[caption]\nbackend = "vlm_api"\n[caption.endpoint]\n'
                    'model = "gpt-4o-mini"\n')
    mixed = load_config(file)
    assert (mixed.recolour.backend, mixed.caption.backend, mixed.segmentation.backend) == ("scene_bank", "vlm_api",
                                                                                        "isnet_torch")
    assert mixed.caption.endpoint.model == "gpt-4o-mini"
    # Precedence: explicit override > GEN4GEN_PROFILE > the file's `profile`.
    file.write_text('profile = "paper"\n')
    assert load_config(file, profile="embedded").recolour.backend == "scene_bank"
    clean_env.setenv("GEN4GEN_PROFILE", "embedded")
    assert load_config(file).profile == "embedded"
    clean_env.setenv("GEN4GEN_PROFILE", "")
    assert load_config(file).profile == "paper"
    with pytest.raises(ValueError, match="unknown profile 'gpu'.*embedded, paper"):
        load_config(profile="gpu")
    assert set(PROFILES) == {"embedded", "paper"}


def test_api_keys_in_the_configuration_stay_secret(clean_env, tmp_path):
    file = tmp_path / "g.toml"
    file.write_text('[layout.llm]\napi_key = "sk-in-config-123"\n')
    config = load_config(file)
    assert config.layout.llm.api_key.get_secret_value() == "sk-in-config-123"
    assert "sk-in-config-123" not in config.model_dump_json() and "sk-in-config-123" not in repr(config)
    import json

    dumped = json.dumps(config.layout.model_dump())  # what lineage records as parameters
    assert "sk-in-config-123" not in dumped and '"api_key": "**********"' in dumped


def test_preflight_lists_every_missing_model_and_how_to_get_it(clean_env):
    report = check(load_config(profile="paper"), PROJECT_ROOT)
    assert not report.ok and len(report.problems) == 6
    text = report.text()
    for needle in ["isnet-general-use.pth", "gen4gen convert-isnet", "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
                   "stabilityai/stable-diffusion-xl-refiner-1.0", "llava-hf/llava-1.5-7b-hf",
                   "hf download llava-hf/llava-1.5-7b-hf", "HF_HUB_OFFLINE=1", "recolour.sdxl_model",
                   # the metrics' models: CLIP ViT-L/14 (OpenAI weights, by open_clip tag) and OWL-ViT
                   "CLIP ViT-L-14/openai", "hf download timm/vit_large_patch14_clip_224.openai",
                   "google/owlvit-base-patch32", "detector.model"]:
        assert needle in text, needle
    # Online, an uncached Hub model is not an error: from_pretrained will download it.
    clean_env.setenv("HF_HUB_OFFLINE", "0")
    online = check(load_config(profile="paper"), PROJECT_ROOT)
    assert len(online.problems) == 1 and "isnet-general-use.pth" in online.problems[0]
    assert any("will be downloaded on first use" in line for line in online.lines)
    assert check(load_config(), PROJECT_ROOT).ok  # the embedded profile needs no model files


def test_preflight_accepts_local_model_folders(clean_env, tmp_path):
    for name in ("base", "refiner"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text("{}")
    (tmp_path / "vlm").mkdir()
    (tmp_path / "vlm" / "config.json").write_text("{}")
    (tmp_path / "isnet.pth").write_bytes(b"x")
    (tmp_path / "owl").mkdir()
    (tmp_path / "owl" / "config.json").write_text("{}")
    (tmp_path / "ViT-L-14.pt").write_bytes(b"x")
    config = load_config(profile="paper", segmentation={"isnet_checkpoint": str(tmp_path / "isnet.pth")},
                         recolour={"sdxl_model": str(tmp_path / "base"), "refiner_model": str(tmp_path / "refiner")},
                         caption={"vlm_model": str(tmp_path / "vlm")}, detector={"model": str(tmp_path / "owl")},
                         clip={"weights_path": str(tmp_path / "ViT-L-14.pt")})
    report = check(config, PROJECT_ROOT)
    assert report.ok, report.text()
    assert f"clip: CLIP ViT-L-14/openai: {tmp_path / 'ViT-L-14.pt'}" in report.lines
    # A CLIP checkpoint in the Hugging Face cache, where open_clip's tag says it is, is found too.
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    clean_env.setattr(constants, "HF_HUB_CACHE", str(cache))  # read when huggingface_hub was imported
    snapshot = cache / "models--timm--vit_large_patch14_clip_224.openai" / "snapshots" / "c0"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"x")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("c0")
    cached = check(config.model_copy(update={"clip": config.clip.model_copy(update={"weights_path": None})}),
                   PROJECT_ROOT)
    assert cached.ok, cached.text()
    assert any(line.startswith("clip: CLIP ViT-L-14/openai: ") and "snapshots/c0/open_clip_pytorch_model.bin" in line
               for line in cached.lines)


def test_materialize_under_the_paper_profile_fails_fast_before_any_run(clean_env, tmp_path, capsys):
    clean_env.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "data").mkdir()
    start = time.perf_counter()
    code = main(["--profile", "paper", "materialize", "--data-dir", str(tmp_path / "data")])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 3 and elapsed < 5  # exit 3: weights missing (2 is an invalid configuration)
    assert "missing model weights for profile 'paper'" in err and "nothing was run" in err
    assert err.count("\n  - ") == 6
    assert not (tmp_path / "dagster_home").exists()  # no Dagster instance, no run
    assert main(["--profile", "paper", "check-weights"]) == 3
    clean_env.setenv("GEN4GEN_PROFILE", "")
    assert main(["check-weights"]) == 0


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_writes_the_gpu_pool_limit_and_dagster_applies_it(clean_env, tmp_path, small_project):
    """`make` writes dagster.yaml with `concurrency: pools: default_limit` = GPU count; a run of
    a pool="gpu" asset then creates the `gpu` pool with that limit."""
    from dagster import DagsterInstance

    from gen4gen_assets.captioning import captions
    from gen4gen_assets.definitions import build_definitions
    from gen4gen_assets.recolouring import recoloured_images
    from gen4gen_assets.segmentation import segmented_foregrounds

    assert {a.op.pool for a in (segmented_foregrounds, recoloured_images, captions)} == {"gpu"}
    home = tmp_path / "home"
    subprocess.run(["make", "-s", f"DAGSTER_HOME={home}", "GPU_COUNT=3", f"{home}/dagster.yaml"], cwd=PROJECT_ROOT,
                   check=True, env={k: v for k, v in os.environ.items() if k != "MAKEFLAGS"})
    assert "default_limit: 3" in (home / "dagster.yaml").read_text()
    _, _, config_file = small_project
    defs = build_definitions(config_file=str(config_file))
    with DagsterInstance.from_config(str(home)) as instance:
        # The catalogue registers the partitions; one concept's segmentation is a pool="gpu" step.
        for job, partition in (("catalogue_concepts", None), ("segment_concepts", "green_cone")):
            result = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=partition,
                                                                  raise_on_error=False)
            assert result.success, job
        limits = {pool.name: pool.limit for pool in instance.event_log_storage.get_pool_limits()}
    assert limits.get("gpu") == 3
