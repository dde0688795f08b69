"""Stages of the personalisation loop: train one Custom Diffusion model, and sample it.

`personalised_models[run]` writes the Custom Diffusion weights and token embeddings (loadable by
plain diffusers), ``training_set.json`` (the manifest of the training images: the one lineage
record from the model to its images), the training log and the loss curve. `generated_images[run]`
writes the model's samples for the prompt slots (training-style and held-out) and a
``prompts.jsonl`` that `evaluation_report` reads. Each image has its own seeded generator.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..io import atomic_write_text, sha256_file
from ..lineage import ArtifactRecord
from ..personalisation import (PROMPTS_FILE, TRAINING_SET_FILE, prompt_slots, prompts_rows, training_set)
from .common import StageResult, write_json


def base_model_path(config, project_root: Path) -> Path:
    """The SD 1.x base model on disk (a local folder, or the Hugging Face cache), or MissingWeightsError."""
    from ..models.common import WeightSpec, require

    spec = WeightSpec("training", "SD 1.x base model (Custom Diffusion)", config.training.base_model,
                      required=("model_index.json",), config_key="training.base_model")
    (found,) = require([spec], project_root)
    return found.path


def training_device(config):
    from ..models.common import resolve_device

    return resolve_device(config.training.device)


def build_model(config, registry: dict, run, out_dir: Path, project_root: Path, log=print) -> StageResult:
    """Train ``run``'s model into ``out_dir``: weights, embeddings, manifest, log, loss curve.

    With ``[ray] enabled`` the training runs in a Ray worker holding one GPU of the cluster (the
    GPU pool of the other model stages), writing to ``out_dir`` on the shared data folder; the
    GPU is free again when the run's pools end.
    """
    if config.ray.enabled:
        from ..gpu_pool import BackendSpec
        from ..pooled_backends import shared_pool

        pool = shared_pool(BackendSpec("gen4gen.stages.personalisation:Trainer", (str(project_root),)), config.ray,
                           num_gpus=1.0, workers=1)
        seen = len(pool.calls)
        (result,) = pool.map("each:train", [[(config, registry, run, str(out_dir))]])[0]
        call = pool.calls[seen]
        result.manifest["placement"] = {k: call.get(k) for k in ("hostname", "node_id", "gpu_ids", "start", "end")}
        return result
    return train_here(config, registry, run, out_dir, project_root, log)


class Trainer:
    """A GPU worker's backend for the personalisation loop: trains one run on the worker's GPU."""

    name = "custom_diffusion_trainer"

    def __init__(self, project_root: str):
        self.project_root = Path(project_root)

    def identity(self) -> dict:
        return {"backend": self.name}

    def train(self, config, registry: dict, run, out_dir: str) -> StageResult:
        return train_here(config, registry, run, Path(out_dir), self.project_root)

    def close(self) -> None:
        """Nothing held between runs: each training loads its models and frees them."""


def train_here(config, registry: dict, run, out_dir: Path, project_root: Path, log=print) -> StageResult:
    """:func:`build_model` in this process."""
    from ..custom_diffusion import TrainingExample, TrainingParams, train_custom_diffusion
    from .class_priors import class_prior_examples

    started = time.perf_counter()
    paths = config.paths
    tset = training_set(config, registry, run)
    base = base_model_path(config, project_root)
    device = training_device(config)
    priors = class_prior_examples(config, tset, base, device, log)
    params = TrainingParams.from_config(config.training, base, with_prior_preservation=bool(priors))
    examples = [TrainingExample(_absolute(paths.data, e["path"]), e["prompt"]) for e in tset.examples]
    progress_every = max(1, params.max_train_steps // 10)

    def progress(step: int, loss: float, seconds: float) -> None:
        if step % progress_every == 0 or step == params.max_train_steps:
            log(f"{run.name}: step {step}/{params.max_train_steps}, loss {loss:.4f}, {seconds:.2f} s/step")

    result = train_custom_diffusion(examples, list(tset.tokens), list(tset.tokens.values()), params, out_dir,
                                    device=str(device), progress=progress, class_examples=priors)
    result.pipeline = None  # the samples stage loads the saved weights, as a user would
    manifest = {"run": run.name, "source": tset.source, "strategy": tset.strategy, "concepts": tset.concepts,
                "training_set_digest": tset.digest, "images": len(tset.examples), "tokens": tset.tokens,
                "base_model": config.training.base_model, "device": str(device),
                "learning_rate": result.learning_rate, "steps": len(result.losses),
                "first_loss": result.losses[0], "last_loss": result.losses[-1],
                "mean_loss_first_10pct": _mean(result.losses[:max(1, len(result.losses) // 10)]),
                "mean_loss_last_10pct": _mean(result.losses[-max(1, len(result.losses) // 10):]),
                "seconds_per_step": _mean(result.seconds_per_step), "class_prior_images": len(priors),
                "weights": result.weights_path.name, "embeddings": {t: p.name for t, p in result.embedding_paths.items()},
                "notes": tset.notes}
    manifest_path = out_dir / TRAINING_SET_FILE
    manifest_sha = write_json(manifest_path, {**manifest, "examples": tset.examples})
    # Lineage: the model's files come from the manifest, the manifest from every training image,
    # which the dataset's own lineage takes back to its concept photos (recorded once, here).
    records = [ArtifactRecord(str(manifest_path), manifest_sha,
                              [(_absolute(paths.data, e["path"]), e["sha256"], "training_image")
                               for e in tset.examples])]
    for path in [result.weights_path, *result.embedding_paths.values()]:
        records.append(ArtifactRecord(str(path), sha256_file(path), [(str(manifest_path), manifest_sha, "training_set")]))
    written = [manifest_path, result.weights_path, *result.embedding_paths.values(), result.log_path,
               result.loss_curve_path]
    return StageResult(manifest, written, [], tset.notes, time.perf_counter() - started, records)


def build_samples(config, registry: dict, run, model_dir: Path, out_dir: Path, project_root: Path,
                  log=print) -> StageResult:
    """Sample the trained model of ``run`` (in ``model_dir``) for every prompt slot into ``out_dir``."""
    from ..custom_diffusion import load_personalised_pipeline, sample_images

    started = time.perf_counter()
    sampling = config.sampling
    manifest_path = model_dir / TRAINING_SET_FILE
    trained = json.loads(manifest_path.read_text(encoding="utf-8"))
    tset = training_set(config, registry, run)
    slots, notes = prompt_slots(config, registry, run)
    rows = prompts_rows(slots, tset, config)
    device = training_device(config)
    pipe = load_personalised_pipeline(base_model_path(config, project_root), model_dir, list(trained["tokens"]),
                                      device=str(device))
    pipe.set_progress_bar_config(disable=True)
    per_slot = sampling.images_per_prompt
    prompts = [rows[i]["prompt"] for i in range(0, len(rows), per_slot)]
    seeds = [slot.seed for slot in slots]
    log(f"{run.name}: {len(rows)} images for {len(slots)} prompts")
    images = sample_images(pipe, prompts, seeds, n_per_prompt=per_slot, steps=sampling.num_inference_steps,
                           guidance=sampling.guidance_scale, resolution=config.training.resolution,
                           batch_size=sampling.batch_size)
    del pipe
    model_files = [model_dir / trained["weights"], *(model_dir / name for name in trained["embeddings"].values())]
    model_parents = [(str(path), sha256_file(path), "model") for path in model_files]
    records, written = [], []
    for row, image in zip(rows, images):
        path = out_dir / row["image"]
        _save_png(image, path)
        written.append(path)
        records.append(ArtifactRecord(str(path), sha256_file(path), model_parents, params={"prompt": row["prompt"],
                                                                                           "seed": row["seed"]}))
    prompts_path = out_dir / PROMPTS_FILE
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    atomic_write_text(prompts_path, text)
    written.append(prompts_path)
    records.append(ArtifactRecord(str(prompts_path), hashlib.sha256(text.encode()).hexdigest(), model_parents))
    manifest = {"run": run.name, "images": len(rows), "prompts": len(slots),
                "held_out_prompts": sum(1 for s in slots if s.kind == "held_out"),
                "training_set_digest": trained["training_set_digest"], "notes": notes}
    return StageResult(manifest, written, [], notes, time.perf_counter() - started, records)


def _save_png(image, path: Path) -> None:
    import io

    from ..io import atomic_write_bytes

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    atomic_write_bytes(path, buffer.getvalue())


def _absolute(data_dir: Path, path: str) -> str:
    return str(Path(path) if Path(path).is_absolute() else Path(data_dir) / path)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
