"""When a trained model or its samples are current: fingerprints of the personalisation stages.

They work as the pipeline's (``gen4gen.fingerprints``): a partition (a training run) records the
fingerprint it was built with, and is stale when the configuration, the code, the base model or
its inputs differ. The model's inputs are its run's definition and its training set's digest
(so a concept added to a run's set makes that run stale, and no other); the samples' are the
model's fingerprint and the prompt slots. They stay out of `gen4gen materialize`'s plan: models
are trained only by `gen4gen personalise` (a GPU-hours decision), and `gen4gen plan` says which
are stale and why.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from .fingerprints import Fingerprint, flatten_config, describe_changes, read_fingerprint
from .personalisation import prompt_slots, training_set

STAGES = ("personalised_models", "generated_images")
# The code each stage's output depends on (a syntax-tree hash: comments and formatting do not count).
SOURCES = {"personalised_models": ("personalisation.py", "stages/personalisation.py", "stages/class_priors.py",
                                   "custom_diffusion.py"),
           "generated_images": ("personalisation.py", "stages/personalisation.py", "custom_diffusion.py")}
# Settings that do not change a byte (where it runs, how many images per call).
IGNORED = ("training.runs", "training.device", "sampling.batch_size")


def folder(paths, stage: str, run: str) -> Path:
    return paths.personalised(run) if stage == "personalised_models" else paths.generated(run)


def code_version(stage: str) -> str:
    import ast

    package = Path(__file__).parent
    digest = hashlib.sha256()
    for relative in SOURCES[stage]:
        digest.update(ast.dump(ast.parse((package / relative).read_text(encoding="utf-8"))).encode())
    return digest.hexdigest()[:12]


def _config(config, sections: tuple[str, ...]) -> dict:
    values, flat = config.model_dump(mode="json"), {}
    for section in sections:
        flatten_config(section, values[section], flat)
    return {k: v for k, v in sorted(flat.items()) if not any(k == i or k.startswith(i + ".") for i in IGNORED)}


def desired(config, registry: dict, run) -> dict[str, Fingerprint]:
    """Both stages' fingerprints for ``run`` (ValueError when its training set is empty)."""
    tset = training_set(config, registry, run)
    backend = {"backend": "custom_diffusion", "base_model": config.training.base_model}
    model = Fingerprint("personalised_models", run.name, code_version("personalised_models"),
                        _config(config, ("training",)), backend,
                        {"run": run.model_dump(mode="json"), "training_set": tset.digest,
                         "training_images": len(tset.examples)})
    slots, _ = prompt_slots(config, registry, run)
    samples = Fingerprint("generated_images", run.name, code_version("generated_images"),
                          {**_config(config, ("sampling",)), "training.resolution": config.training.resolution},
                          backend, {"personalised_models": model.digest,
                                    "slots": [[s.slot, s.background, s.seed] for s in slots]})
    return {"personalised_models": model, "generated_images": samples}


def _label(recorded: dict, name: str) -> str:
    if name == "training_set":
        before = recorded.get("fingerprint", {}).get("inputs", {}).get("training_images")
        return f"its training set changed (was {before} images)" if before is not None else "its training set changed"
    if name == "personalised_models":
        return "its model was retrained"
    if name == "slots":
        return "the prompts changed"
    if name == "run":
        return "the run's definition changed"
    return f"input {name} changed"


def status(config, stage: str, run: str, wanted: Fingerprint) -> list[str]:
    """Why the partition is not current (empty: current)."""
    from .incremental import damaged_files

    path = folder(config.paths, stage, run)
    record = read_fingerprint(path)
    if record is None:
        return ["never built"]
    if record.get("damaged"):
        return ["its fingerprint.json is damaged"]
    if record.get("digest") != wanted.digest:
        return [r for r in describe_changes(record, wanted, lambda name: _label(record, name))
                if not r.startswith("input training_images")]
    return [f"repair: {d}" for d in damaged_files(path, record)]


def plan_lines(config, registry: dict) -> list[str]:
    """`gen4gen plan`'s lines for the configured training runs: current, stale (and why), or impossible."""
    lines = []
    for run in config.training.runs:
        try:
            wanted = desired(config, registry, run)
        except ValueError as exc:
            lines.append(f"personalised_models[{run.name}]: cannot train: {exc}")
            continue
        for stage in STAGES:
            reasons = status(config, stage, run.name, wanted[stage])
            state = "current" if not reasons else "stale: " + "; ".join(reasons)
            hint = "" if not reasons else " (not rebuilt automatically: `gen4gen personalise`)"
            lines.append(f"{stage}[{run.name}]: {state}{hint}")
    return lines
