"""`gen4gen personalise`: train the configured Custom Diffusion runs, sample them, compare them in the report.

``--tiny`` runs the whole loop on a CPU in minutes with tiny random-weight models it builds (an
SD 1.x pipeline, CLIP, OWL-ViT and DINO, under ``<data>/.tiny_models``), so the mechanics and the
report's shape can be seen without a GPU or downloaded weights. Its numbers mean nothing.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..config import load_config
from ..config.loading import OVERLAY_ENV, config_file, read_toml
from .common import overrides

# The tiny loop's runs when the configuration names none: MyCanvas with one of the paper's
# strategies, and the paper's baseline (the concepts' photos alone).
TINY_RUNS = [{"name": "mycanvas-background", "source": "mycanvas", "strategy": "background_in_text"},
             {"name": "photos-baseline", "source": "photos"}]


def tiny_overlay(models: Path, with_runs: bool, configured: dict) -> dict:
    """Settings that point every model of the loop at a tiny one, and keep it to CPU minutes.

    The models, resolution and device are always the tiny ones; the run's size (steps, images per
    prompt, ...) is the tiny default only where ``configured`` (the user's file) does not set it.
    """
    from ..tiny_models import tiny_sd15
    from ..tiny_scoring_models import dino_dir, open_clip_dir, owlvit_dir

    overlay = {
        "training": {"base_model": str(tiny_sd15(models)), "resolution": 64, "max_train_steps": 40,
                     "learning_rate": 5e-4, "device": "cpu", "class_priors": "none"},
        "sampling": {"images_per_prompt": 2, "num_inference_steps": 4, "batch_size": 8},
        "clip": {"backend": "open_clip", "weights_path": str(open_clip_dir(models)), "device": "cpu", "dtype": "fp32"},
        "detector": {"backend": "owlvit", "model": str(owlvit_dir(models)), "threshold": 0.0, "device": "cpu"},
        "dino": {"backend": "transformers", "model": str(dino_dir(models)), "device": "cpu"},
    }
    if with_runs:
        overlay["training"]["runs"] = TINY_RUNS
    for section, key in (("training", "max_train_steps"), ("training", "learning_rate"),
                         ("sampling", "images_per_prompt"), ("sampling", "num_inference_steps")):
        if key in configured.get(section, {}):
            del overlay[section][key]
    return overlay


def toml_text(values: dict, prefix: str = "") -> str:
    """A TOML document for nested tables of strings, numbers and booleans, and arrays of such tables."""
    scalars = {k: v for k, v in values.items() if not isinstance(v, (dict, list))}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    lines += [f"{key} = {json.dumps(value)}" for key, value in scalars.items()]  # JSON strings are TOML strings
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            lines.append(toml_text(value, name))
        elif isinstance(value, list):
            lines += [f"[[{name}]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in row.items()) for row in value]
    return "\n".join(lines) + "\n"


def cmd_personalise(args) -> int:
    from gen4gen_assets.definitions import build_definitions
    from gen4gen_assets.runner import personalise_all

    from ..io import atomic_write_text
    from ..personalisation_state import plan_lines
    from .build import data_dir_ok, instance_for

    config = load_config(args.config, **overrides(args))
    if not data_dir_ok(config, args):
        return 2
    if args.tiny:
        models = config.paths.data / ".tiny_models"
        print(f"--tiny: building tiny random-weight models in {models} (their numbers mean nothing)")
        overlay = models / "personalise-tiny.toml"
        file = config_file(args.config)
        configured = read_toml(file) if file is not None else {}
        atomic_write_text(overlay, toml_text(tiny_overlay(models, not config.training.runs, configured)))
        os.environ[OVERLAY_ENV] = str(overlay)  # the resources load the configuration again
        config = load_config(args.config, **overrides(args))
    if not config.training.runs:
        print("no training runs configured: add [[training.runs]] entries (README: \"Personalisation\"), or try "
              "`gen4gen personalise --tiny`", file=sys.stderr)
        return 2
    if not (config.paths.mycanvas / "metadata.jsonl").is_file():
        print(f"no dataset in {config.paths.mycanvas}: run `gen4gen materialize` first", file=sys.stderr)
        return 1
    names = [run.name for run in config.training.runs]
    unknown = [name for name in args.run or [] if name not in names]
    if unknown:
        print(f"unknown training run(s) {unknown}; configured: {names}", file=sys.stderr)
        return 2
    defs = build_definitions(config_file=args.config, data_dir=args.data_dir)
    summary = personalise_all(defs, instance_for(config), args.run or names, force=args.force)
    from ..concepts import load_registry

    print(f"\n{len(summary.succeeded)} runs succeeded, {len(summary.failed)} failed, in {summary.seconds:.1f} s")
    for label, message in summary.failed.items():
        print(f"  failed: {label}: {message}")
    for line in plan_lines(config, load_registry(config.paths.registry)):
        print(f"  {line}")
    print(f"report:  {config.paths.reports / 'report.md'} (section \"Personalised models\")")
    return 1 if summary.failed else 0


def register(sub) -> None:
    personalise = sub.add_parser("personalise", help="train the configured Custom Diffusion runs, sample them, and "
                                                     "compare them in the report")
    personalise.add_argument("--data-dir")
    personalise.add_argument("--run", action="append", help="only this training run (repeatable)")
    personalise.add_argument("--force", action="store_true", help="retrain and resample even what is current")
    personalise.add_argument("--tiny", action="store_true",
                             help="the whole loop on the CPU with tiny random-weight models it builds (minutes)")
    personalise.set_defaults(func=cmd_personalise)
