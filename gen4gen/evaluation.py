"""What the evaluation report measures: MyCanvas itself and an optional folder of generated images.

Builds the evaluation sets (:class:`gen4gen.metrics.EvalItem`) and each concept's reference
images, runs :func:`gen4gen.metrics.evaluate` with the configured backends, and says
precisely which metrics were not computed and why. No torch here: the backends are passed in.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from .concepts import concept_lookup
from .config import PipelineConfig, resolve_path
from .io import BadInput, load_photo, read_json
from .report import read_jsonl
from .roots import concepts_root, data_root, generated_root
from .metrics import ConceptReference, EvalItem, MetricParams, class_prompt, evaluate
from .score_cache import ScoreCache, score_cache_root

_HELD_OUT = {"held_out", "held-out", "heldout", "unseen", "test", "eval"}
_TRAIN = {"train", "training", "seen"}


def _on_white(rgb: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    if alpha is None:
        return Image.fromarray(rgb)
    a = alpha.astype(np.float32)[..., None] / 255.0
    return Image.fromarray((rgb.astype(np.float32) * a + 255.0 * (1 - a) + 0.5).astype(np.uint8))


def concept_references(registry: dict, config: PipelineConfig, concepts: Iterable[str],
                       problems: list[dict] | None = None) -> dict[str, ConceptReference]:
    """Each concept's reference images: its photos, or its segmented cut-outs, on white where transparent."""
    lookup = concept_lookup(registry)
    kind = config.evaluation.reference_images
    photos_root, build_root = concepts_root(config.paths.concepts), data_root(config.paths.data)
    out: dict[str, ConceptReference] = {}
    for key in sorted(set(concepts)):
        record = lookup.get(key)
        if record is None:
            if problems is not None:
                problems.append({"path": key, "reason": "concept is not in the catalogue; it has no reference images"})
            continue
        images: list[Image.Image] = []
        if kind == "photos":
            for photo in record.photos:
                try:
                    loaded = load_photo(photos_root.locate(photo.file), config.input.min_photo_side,
                                        config.input.max_photo_megapixels, config.input.downscale_long_side)
                except BadInput as exc:
                    if problems is not None:
                        problems.append({"path": exc.path, "reason": f"reference photo unusable: {exc.reason}"})
                    continue
                images.append(_on_white(loaded.rgb, loaded.alpha))
        else:
            folder = config.paths.segmented(key)
            manifest_path = folder / "manifest.json"
            entries = read_json(manifest_path)["photos"] if manifest_path.is_file() else []
            for entry in entries:
                try:
                    cutout = build_root.join(entry["cutout"], base=folder)
                except BadInput as exc:
                    if problems is not None:
                        problems.append({"path": str(manifest_path), "reason": f"cut-out {exc}"})
                    continue
                rgba = np.asarray(Image.open(cutout).convert("RGBA"))
                images.append(_on_white(rgba[..., :3], rgba[..., 3]))
        if images:
            out[key] = ConceptReference(record.class_name, images)
        elif problems is not None:
            problems.append({"path": key, "reason": f"concept has no usable reference images ({kind})"})
    return out


def mycanvas_items(mycanvas_dir: Path, config: PipelineConfig) -> list[EvalItem]:
    """Every accepted MyCanvas image; its prompt is a training caption with tokens replaced by class names."""
    items = []
    field = config.evaluation.mycanvas_prompt
    for row in read_jsonl(mycanvas_dir / "metadata.jsonl"):
        tokens = {c["token"]: c["class_name"] for c in row["concepts"] if c.get("token")}
        items.append(EvalItem(image_id=row["image_id"], concepts=[c["concept"] for c in row["concepts"]],
                              prompt=class_prompt(row["captions"][field], tokens), kind="train",
                              composition=row["composition"], path=mycanvas_dir / row["file_name"]))
    return items


def generated_prompts_file(config: PipelineConfig) -> Path | None:
    evaluation = config.evaluation
    if evaluation.prompts_file:
        return resolve_path(evaluation.prompts_file)
    if evaluation.generated_dir:
        return resolve_path(evaluation.generated_dir) / "prompts.jsonl"
    return None


def generated_items(config: PipelineConfig, registry: dict, problems: list[dict], folder: Path | None = None,
                    prompts_path: Path | None = None, prefix: str = "generated") -> list[EvalItem]:
    """Images named by the prompts JSONL (see ``EvaluationConfig``), with class-name prompts.

    ``folder`` and ``prompts_path``: a trained model's samples (``generated_images``) instead of
    the configured ``generated_dir``; ``prefix`` starts their image ids.

    A line names its image(s) (``image`` or ``images``, relative to ``generated_dir``: absolute
    names, ``..`` and links leading out of that folder are refused with the line named), its
    ``prompt`` (concept tokens such as ``<new1>`` allowed), its ``concepts`` (catalogue keys or
    folder names) and optionally its ``kind`` (train / held_out) and ``tokens`` ({token: class}).
    """
    ours = folder is not None  # the platform's own samples: written by generated_images, inside the data folder
    folder = folder if ours else resolve_path(config.evaluation.generated_dir)
    root = generated_root(folder)
    prompts_path = prompts_path or generated_prompts_file(config)
    if not prompts_path.is_file():
        problems.append({"path": str(prompts_path), "reason": "prompts file of the generated images does not exist"})
        return []
    if not config.evaluation.prompts_file and not ours:  # one the configuration names is the user's choice
        try:
            root.check(prompts_path)
        except BadInput as exc:
            problems.append({"path": str(prompts_path), "reason": exc.reason})
            return []
    lookup = concept_lookup(registry)
    by_name = {record.name: key for key, record in lookup.items()}
    token_of = {config.caption.concept_token.format(index=r.token_index): r.class_name for r in lookup.values()}
    items = []
    for number, line in enumerate(prompts_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{prompts_path}:{number}"
        try:
            entry = json.loads(line)
            names = entry["concepts"]
            prompt = entry["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            problems.append({"path": where, "reason": f"not a JSON object with 'prompt' and 'concepts' ({exc})"})
            continue
        concepts = [n if n in lookup else by_name.get(n) for n in names]
        if None in concepts or not concepts:
            unknown = [n for n, c in zip(names, concepts) if c is None]
            problems.append({"path": where, "reason": f"unknown concept(s) {unknown or names}; known: {sorted(lookup)}"})
            continue
        kind = str(entry.get("kind", config.evaluation.default_prompt_kind)).lower()
        if kind in _HELD_OUT:
            kind = "held_out"
        elif kind in _TRAIN:
            kind = "train"
        else:
            problems.append({"path": where, "reason": f"kind {kind!r} is neither train nor held_out"})
            continue
        tokens = {**token_of, **entry.get("tokens", {})}
        images = entry.get("images") or ([entry["image"]] if entry.get("image") else [])
        if not images:
            problems.append({"path": where, "reason": "names no image ('image' or 'images')"})
            continue
        if not isinstance(images, list):
            problems.append({"path": where, "reason": "'images' is not a list of file names"})
            continue
        for name in images:
            try:
                path = root.join(name)
            except BadInput as exc:
                problems.append({"path": where, "reason": f"image {name!r} refused: {exc.reason}"})
                continue
            if not path.is_file():
                problems.append({"path": str(path), "reason": f"generated image named at {where} does not exist"})
                continue
            items.append(EvalItem(image_id=f"{prefix}/{name}", concepts=concepts, prompt=class_prompt(prompt, tokens),
                                  kind=kind, path=path))
    return items


def not_computed(config: PipelineConfig, clip, detector, dino) -> list[str]:
    """Plain statements of which metrics are not computed and why (a backend is None when not configured)."""
    notes = []
    if clip is None:
        notes.append('CP-CLIP, TI-CLIP, CLIP-T and CLIP-I: not computed because no CLIP backend is configured '
                     '(clip.backend = "none"); set [clip] backend = "open_clip" with a model and its weights')
        if dino is not None:
            notes.append("DINO image similarity: not computed because the evaluation runs only with a CLIP backend")
    elif detector is None:
        notes.append('CP-CLIP (with its detection rate and personalisation): not computed because no detector is '
                     'configured (detector.backend = "none"); set [detector] backend = "owlvit" or "owlv2"')
    if dino is None:
        notes.append('DINO image similarity: not computed because no DINO model is configured (dino.backend = "none")')
    if not config.evaluation.generated_dir and not config.training.runs:  # trained models have held-out prompts
        notes.append("Generated images: not evaluated because evaluation.generated_dir is not set, so TI-CLIP on "
                     "held-out prompts and the train/held-out gap are not computed (MyCanvas captions are "
                     "training prompts)")
    if not config.evaluation.evaluate_mycanvas:
        notes.append("MyCanvas metrics: not computed because evaluation.evaluate_mycanvas = false")
    return notes


def run_evaluation(config: PipelineConfig, registry: dict, mycanvas_dir: Path, clip=None, detector=None, dino=None,
                   log=None, score_cache: bool = True) -> dict:
    """The metrics over MyCanvas and the generated images, as far as the backends allow.

    Embeddings and detections come from the score cache where it has them
    (:mod:`gen4gen.score_cache`; ``score_cache=False`` computes every one).
    """
    start = time.perf_counter()
    cache = ScoreCache(score_cache_root(config), enabled=score_cache)
    notes = not_computed(config, clip, detector, dino)
    problems: list[dict] = []
    result = {"backends": {name: (b.identity() if b is not None and hasattr(b, "identity") else None)
                           for name, b in (("clip", clip), ("detector", detector), ("dino", dino))},
              "parameters": {"crop_padding": config.evaluation.crop_padding,
                             "missing_concept_score": config.evaluation.missing_concept_score,
                             "detector_threshold": config.detector.threshold if detector is not None else None,
                             "reference_images": config.evaluation.reference_images,
                             "mycanvas_prompt": config.evaluation.mycanvas_prompt},
              "sets": {}, "not_computed": notes, "problems": problems,
              "display": {"html_thumb": config.evaluation.html_thumb,
                          "html_max_images": config.evaluation.html_max_images},
              "cache": _cache_summary(cache, config)}
    if clip is None:
        result["seconds"] = round(time.perf_counter() - start, 3)
        return result
    clip, detector, dino = cache.clip(clip), cache.detector(detector), cache.embedder(dino)
    sets: dict[str, list[EvalItem]] = {}
    if config.evaluation.evaluate_mycanvas:
        sets["mycanvas"] = mycanvas_items(mycanvas_dir, config)
        if not sets["mycanvas"]:
            notes.append("MyCanvas metrics: not computed because the export has no accepted images")
            del sets["mycanvas"]
    if config.evaluation.generated_dir:
        sets["generated"] = generated_items(config, registry, problems)
        if not sets["generated"]:
            notes.append(f"Generated images: not evaluated because no usable image was found from "
                         f"{generated_prompts_file(config)} (see problems)")
            del sets["generated"]
        elif not any(item.kind == "held_out" for item in sets["generated"]):
            notes.append(f'TI-CLIP held-out and its gap (generated images): not computed because no prompt in '
                         f'{generated_prompts_file(config)} has kind "held_out"')
    sets.update(model_sets(config, registry, problems, notes, result))
    concepts = {c for items in sets.values() for item in items for c in item.concepts}
    references = concept_references(registry, config, concepts, problems)
    params = MetricParams(crop_padding=config.evaluation.crop_padding,
                          missing_score=config.evaluation.missing_concept_score)
    for name, items in sets.items():
        usable = [item for item in items if all(c in references for c in item.concepts)]
        if len(usable) < len(items):
            problems.append({"path": name, "reason": f"{len(items) - len(usable)} image(s) skipped: a concept has no "
                                                     "reference images"})
        if not usable:
            continue
        if log:
            log(f"evaluating {len(usable)} {name} images")
        result["sets"][name] = evaluate(usable, references, clip, detector, dino, params)
    result["cache"] = _cache_summary(cache, config)
    if log:
        log(f"score cache: {result['cache']['hits']} hits, {result['cache']['misses']} misses")
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def model_sets(config: PipelineConfig, registry: dict, problems: list[dict], notes: list[str], result: dict) -> dict:
    """``model:<run>``: the samples of every configured training run that has them (the paper's
    comparison, one row per model); ``result["models"]`` says what each was trained on and
    whether it is stale."""
    from .personalisation import PROMPTS_FILE
    from .personalisation_state import desired, status

    sets, models = {}, {}
    for run in config.training.runs:
        folder = config.paths.generated(run.name)
        if not (folder / PROMPTS_FILE).is_file():
            notes.append(f"model {run.name}: not evaluated because it has no samples yet (gen4gen personalise)")
            continue
        items = generated_items(config, registry, problems, folder, folder / PROMPTS_FILE, prefix=f"model:{run.name}")
        if not items:
            continue
        try:
            stale = status(config, "generated_images", run.name, desired(config, registry, run)["generated_images"])
        except ValueError as exc:
            stale = [str(exc)]
        sets[f"model:{run.name}"] = items
        models[run.name] = {"source": run.source, "strategy": run.strategy if run.source == "mycanvas" else None,
                            "concepts": sorted({c for item in items for c in item.concepts}), "stale": stale,
                            "folder": data_root(config.paths.data).relative(folder)}
    result["models"] = models
    return sets


def _cache_summary(cache: ScoreCache, config: PipelineConfig) -> dict:
    """The score cache's totals, its folder named relative to the data folder (which may move)."""
    summary = cache.summary()
    try:
        summary["folder"] = data_root(config.paths.data).relative(summary["folder"])
    except BadInput:
        pass  # a build folder mounted from elsewhere: its real path is the only name it has
    return summary
