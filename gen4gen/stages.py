"""One function per pipeline stage: read the upstream files, compute, write this stage's files.

No Dagster here: assets call these, tests and benchmarks call them directly. Each stage
writes its images first and its ``manifest.json`` last (all atomically), so a manifest
only ever names files that exist.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .concepts import ConceptRecord, concept_lookup, split_composition
from .config import PipelineConfig
from .io import (BadInput, atomic_write_bytes, atomic_write_json, atomic_write_png, atomic_write_text, derive_seed,
                 encode_png, load_photo, read_json, remove_stale_files, sha256_bytes, sha256_file)

MANIFEST = "manifest.json"


class StageInputError(RuntimeError):
    """An upstream artifact this stage needs is missing; the message says which and how to build it."""


@dataclass
class StageResult:
    manifest: dict
    written: list[Path] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _read_manifest(folder: Path, what: str, how: str) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise StageInputError(f"{what} is missing ({path} does not exist); {how}")
    return read_json(path)


def _write_png(path: Path, image, level: int, written: list[Path]) -> dict:
    data = encode_png(image, level)
    atomic_write_bytes(path, data)
    written.append(path)
    return {"file": path.name, "sha256": sha256_bytes(data)}


class PngWriter:
    """Encode and write PNGs on worker threads while the stage computes the next image.

    PNG compression releases the GIL, so on two cores this overlaps most of the encoding.
    ``result()`` waits for every write and re-raises the first failure.
    """

    def __init__(self, level: int, workers: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self.level = level
        self.written: list[Path] = []
        self._pool = ThreadPoolExecutor(workers)
        self._futures = []

    def submit(self, path: Path, image) -> "Future":
        future = self._pool.submit(_write_png, path, image, self.level, self.written)
        self._futures.append(future)
        return future

    def result(self) -> list[Path]:
        try:
            for future in self._futures:
                future.result()
        finally:
            self._pool.shutdown(wait=True)
        return self.written


# ------------------------------------------------------------------ segmentation
def segment_concept(concept: ConceptRecord, segmenter, out_dir: Path, config: PipelineConfig) -> StageResult:
    """An RGBA cut-out (cropped to the object) and a full-frame mask per photo of one concept."""
    from .segmentation import make_cutout, mask_bbox

    start = time.perf_counter()
    level = config.composition.png_compress_level
    entries, problems, written, notes = [], [], [], []
    if segmenter.fallback_warning:
        notes.append(segmenter.fallback_warning)
    for photo in concept.photos:
        try:
            loaded = load_photo(photo.file, config.input.min_photo_side, config.input.max_photo_megapixels,
                                config.input.downscale_long_side)
            result = segmenter.segment(loaded.rgb, loaded.alpha)
            box = mask_bbox(result.mask)
            if box is None:
                raise BadInput(photo.file, f"segmentation ({result.backend}) found no object in the photo")
        except BadInput as exc:
            problems.append({"path": exc.path, "reason": exc.reason})
            continue
        notes.extend(loaded.warnings + result.warnings)
        x0, y0, x1, y1 = box
        cutout = make_cutout(loaded.rgb, result.alpha)[y0:y1, x0:x1]
        cut = _write_png(out_dir / f"{photo.stem}.png", cutout, level, written)
        mask = _write_png(out_dir / f"{photo.stem}_mask.png", result.mask, level, written)
        height, width = result.mask.shape
        entries.append({
            "stem": photo.stem, "source_photo": photo.file, "source_sha256": photo.sha256,
            "cutout": cut["file"], "cutout_sha256": cut["sha256"], "mask": mask["file"], "mask_sha256": mask["sha256"],
            "backend": result.backend, "rounds_run": result.rounds_run, "bbox": list(box),
            "aspect": round((x1 - x0) / (y1 - y0), 5),
            "mask_fraction": round(float((result.mask > 0).sum()) / (width * height), 5),
        })
    remove_stale_files(out_dir, {f for e in entries for f in (e["cutout"], e["mask"])} | {MANIFEST})
    manifest = {"concept": concept.key, "class_name": concept.class_name, "data_version": concept.data_version,
                "segmenter": segmenter.identity(), "photos": entries, "problems": problems}
    atomic_write_json(out_dir / MANIFEST, manifest)
    return StageResult(manifest, written, problems, notes, time.perf_counter() - start)


# ------------------------------------------------------------------ layouts
def plan_composition(composition: str, registry: dict, config: PipelineConfig, planner, scenes) -> StageResult:
    """N layouts for one composition; each image also picks which photo of each concept to use."""
    from .layout import ObjectSpec

    start = time.perf_counter()
    paths = config.paths
    lookup = concept_lookup(registry)
    members = split_composition(composition)
    segmented = {}
    for key in members:
        if key not in lookup:
            raise StageInputError(f"composition {composition!r} names concept {key!r}, which is not in the catalogue; "
                                  "rematerialise concept_images")
        manifest = _read_manifest(paths.segmented(key), f"segmented foregrounds of concept {key!r}",
                                  f"materialise segmented_foregrounds for partition {key!r} first")
        if not manifest["photos"]:
            raise StageInputError(f"concept {key!r} has no usable segmented photo (see its manifest problems)")
        segmented[key] = manifest
    images = []
    for index in range(config.layout.images_per_composition):
        picks = {}
        objects = []
        for key in members:
            photos = segmented[key]["photos"]
            choice = photos[int(np.random.default_rng(derive_seed(config.seed, composition, index, key))
                                .integers(len(photos)))]
            picks[key] = choice["stem"]
            objects.append(ObjectSpec(concept=key, class_name=lookup[key].class_name, aspect=choice["aspect"]))
        # One layout per call, so each image's photo choice sets its objects' aspects.
        layout = planner.plan(composition, objects, 1, config.seed, config.composition.canvas_size, scenes,
                              first_index=index)[0]
        record = layout.to_dict()
        record["photos"] = picks
        images.append(record)
    document = {"composition": composition, "planner": planner.name, "images": images,
                "concept_versions": {k: segmented[k]["data_version"] for k in members}}
    path = paths.layouts(composition)
    atomic_write_json(path, document)
    return StageResult(document, [path], [], [], time.perf_counter() - start)


# ------------------------------------------------------------------ composition
def compose_composition(composition: str, config: PipelineConfig) -> StageResult:
    """Paste the objects of every layout; write the composite, union mask and instance masks."""
    from .compose import compose, crop_cutout

    start = time.perf_counter()
    paths = config.paths
    layouts_path = paths.layouts(composition)
    if not layouts_path.is_file():
        raise StageInputError(f"layouts for {composition!r} are missing ({layouts_path}); materialise layouts first")
    document = read_json(layouts_path)
    out_dir = paths.composed(composition)
    level = config.composition.png_compress_level
    canvas = config.composition.canvas_size
    cutouts: dict[tuple[str, str], object] = {}
    frame_fractions: dict[tuple[str, str], float] = {}
    writer = PngWriter(level)
    entries = []
    for layout in document["images"]:
        parts = []
        for obj in layout["objects"]:
            key = (obj["concept"], layout["photos"][obj["concept"]])
            if key not in cutouts:
                folder = paths.segmented(key[0])
                manifest = read_json(folder / MANIFEST)
                entry = next(e for e in manifest["photos"] if e["stem"] == key[1])
                rgba = np.asarray(Image.open(folder / entry["cutout"]).convert("RGBA"))
                cutouts[key] = crop_cutout(key[0], entry["source_photo"], rgba)
                frame_fractions[key] = entry["mask_fraction"]
            parts.append(cutouts[key])
        boxes = [tuple(obj["box"]) for obj in layout["objects"]]
        rng = np.random.default_rng(derive_seed(config.seed, composition, layout["index"], "compose"))
        result = compose(parts, boxes, canvas, rng, config.composition)
        stem = f"{layout['index']:03d}"
        image = writer.submit(out_dir / f"{stem}.png", result.rgb)
        mask = writer.submit(out_dir / f"{stem}_mask.png", result.alpha)
        objects = []
        for k, (obj, inst) in enumerate(zip(layout["objects"], result.instances)):
            inst.stats["frame_fraction"] = frame_fractions[(obj["concept"], layout["photos"][obj["concept"]])]
            # Instance masks are binary: 1-bit PNGs are 8x smaller and faster to write.
            instance_file = f"{stem}_obj{k}.png"
            writer.submit(out_dir / instance_file, Image.fromarray(inst.visible_mask).convert("1"))
            objects.append({
                "concept": obj["concept"], "class_name": obj["class_name"], "size_ratio": obj["size_ratio"],
                "layout_box": list(inst.layout_box), "box": list(inst.box), "stats": inst.stats,
                "augmentation": {"flip": inst.augmentation.flip, "rotation": inst.augmentation.rotation,
                                 "shift": list(inst.augmentation.shift)},
                "source_photo": inst.source_photo, "cutout": f"{obj['concept']}/{layout['photos'][obj['concept']]}.png",
                "instance_mask": instance_file,
            })
        entries.append({"index": layout["index"], "image": image, "mask": mask, "scene": layout["scene"],
                        "background_prompt": layout["background_prompt"], "objects": objects})
    written = writer.result()
    for entry in entries:
        image, mask = entry["image"].result(), entry["mask"].result()
        entry.update(image=image["file"], image_sha256=image["sha256"], mask=mask["file"])
    remove_stale_files(out_dir, {p.name for p in written} | {MANIFEST})
    manifest = {"composition": composition, "canvas_size": canvas, "images": entries}
    atomic_write_json(out_dir / MANIFEST, manifest)
    return StageResult(manifest, written, [], [], time.perf_counter() - start)


# ------------------------------------------------------------------ recolouring
def recolour_composition(composition: str, config: PipelineConfig, repainter) -> StageResult:
    """Fill each composite's background and harmonise it, in batches."""
    from .recolour import RepaintRequest

    start = time.perf_counter()
    paths = config.paths
    source_dir = paths.composed(composition)
    composed = _read_manifest(source_dir, f"composed images of {composition!r}", "materialise composed_images first")
    out_dir = paths.recoloured(composition)
    writer = PngWriter(config.composition.png_compress_level)
    entries = []
    settings = config.recolour
    images = composed["images"]
    for batch_start in range(0, len(images), settings.batch_size):
        batch = images[batch_start:batch_start + settings.batch_size]
        requests = []
        for entry in batch:
            requests.append(RepaintRequest(
                image=np.asarray(Image.open(source_dir / entry["image"]).convert("RGB")),
                mask=np.asarray(Image.open(source_dir / entry["mask"]).convert("L")),
                prompt=settings.prompt_template.format(background=entry["background_prompt"]),
                negative_prompt=settings.negative_prompt,
                seed=derive_seed(config.seed, composition, entry["index"], "repaint"),
                scene=entry["scene"],
                instance_masks=[np.asarray(Image.open(source_dir / o["instance_mask"])) > 0 for o in entry["objects"]],
            ))
        for entry, request, (image, info) in zip(batch, requests, repainter.repaint(requests)):
            entries.append({"index": entry["index"], "image": writer.submit(out_dir / entry["image"], image),
                            "composed": entry["image"], "prompt": request.prompt, "seed": request.seed, **info})
    written = writer.result()
    for entry in entries:
        saved = entry["image"].result()
        entry.update(image=saved["file"], image_sha256=saved["sha256"])
    remove_stale_files(out_dir, {p.name for p in written} | {MANIFEST})
    manifest = {"composition": composition, "backend": repainter.name, "images": entries}
    atomic_write_json(out_dir / MANIFEST, manifest)
    return StageResult(manifest, written, [], [], time.perf_counter() - start)


# ------------------------------------------------------------------ captions
def caption_composition(composition: str, registry: dict, config: PipelineConfig, captioner) -> StageResult:
    """A detailed caption and the three prompt strategies per image, with the token map."""
    from .captions import CaptionObject, prompt_strategies, retell

    start = time.perf_counter()
    paths = config.paths
    composed = _read_manifest(paths.composed(composition), f"composed images of {composition!r}",
                              "materialise composed_images first")
    recoloured = _read_manifest(paths.recoloured(composition), f"recoloured images of {composition!r}",
                                "materialise recoloured_images first")
    lookup = concept_lookup(registry)
    comp_record = next((c for c in registry["compositions"] if c["key"] == composition), None)
    comp_token = config.caption.composition_token.format(index=comp_record["token_index"] if comp_record else 0)
    tokens = {key: config.caption.concept_token.format(index=lookup[key].token_index)
              for key in split_composition(composition) if key in lookup}
    canvas = composed["canvas_size"]
    by_index = {e["index"]: e for e in recoloured["images"]}
    captions = []
    for entry in composed["images"]:
        objects = [CaptionObject(o["concept"], o["class_name"], tokens.get(o["concept"], "<unknown>"), tuple(o["box"]))
                   for o in entry["objects"]]
        image_path = paths.recoloured(composition) / by_index[entry["index"]]["image"]
        detailed = captioner.describe(image_path, objects, entry["background_prompt"], canvas)
        captions.append({
            "index": entry["index"],
            "image": by_index[entry["index"]]["image"],
            "detailed": detailed,
            "detailed_with_tokens": retell(objects, entry["background_prompt"], canvas, use_tokens=True),
            **prompt_strategies(objects, entry["background_prompt"], comp_token),
        })
    document = {"composition": composition, "captioner": captioner.name, "composition_token": comp_token,
                "tokens": {token: lookup[key].name + f" ({lookup[key].class_name})" for key, token in tokens.items()},
                "concept_tokens": tokens, "captions": captions}
    path = paths.captions(composition)
    atomic_write_json(path, document)
    return StageResult(document, [path], [], [], time.perf_counter() - start)


# ------------------------------------------------------------------ MyCanvas export
def export_mycanvas(registry: dict, config: PipelineConfig) -> StageResult:
    """Filter every built image and export the accepted ones in Hugging Face imagefolder layout.

    ``metadata.jsonl`` lists the accepted images; ``rejected.jsonl`` keeps every rejected
    one with its reasons and scores. Unchanged images are not rewritten.
    """
    from .filtering import check_image

    start = time.perf_counter()
    paths = config.paths
    out_dir = paths.mycanvas
    out_dir.mkdir(parents=True, exist_ok=True)
    lookup = concept_lookup(registry)
    accepted, rejected, problems, written = [], [], [], []
    keep = {"metadata.jsonl", "rejected.jsonl", "stats.json"}
    for comp in registry["compositions"]:
        key = comp["key"]
        try:
            composed = _read_manifest(paths.composed(key), f"composed images of {key!r}", "materialise composed_images")
            recoloured = _read_manifest(paths.recoloured(key), f"recoloured images of {key!r}", "materialise recoloured_images")
            captions_path = paths.captions(key)
            if not captions_path.is_file():
                raise StageInputError(f"captions of {key!r} are missing ({captions_path}); materialise captions")
            captions = read_json(captions_path)
        except StageInputError as exc:
            problems.append({"path": key, "reason": str(exc)})
            continue
        by_index = {e["index"]: e for e in recoloured["images"]}
        caption_by_index = {c["index"]: c for c in captions["captions"]}
        for entry in composed["images"]:
            index = entry["index"]
            if index not in by_index or index not in caption_by_index:
                problems.append({"path": f"{key}/{index:03d}", "reason": "image has no recoloured version or caption; rebuild the composition"})
                continue
            outcome = check_image(entry["objects"], config.filter)
            source = paths.recoloured(key) / by_index[index]["image"]
            caption = caption_by_index[index]
            image_id = f"{key}/{index:03d}"
            record = {
                "image_id": image_id, "composition": key, "scene": entry["scene"],
                "background_prompt": entry["background_prompt"],
                "captions": {k: caption[k] for k in ("detailed", "detailed_with_tokens", "global_composition_token",
                                                     "repeated_concept_tokens", "background_in_text")},
                # One struct per object (same fields in every row, as imagefolder's schema needs).
                "concepts": [{"concept": o["concept"], "class_name": o["class_name"],
                              "token": captions["concept_tokens"].get(o["concept"]), "box": o["box"],
                              "source_photo": Path(o["source_photo"]).name, "checks": o["stats"]}
                             for o in entry["objects"]],
            }
            if not outcome.accepted:
                rejected.append({**record, "source_image": str(source), "reasons": outcome.reasons,
                                 "reason_codes": outcome.codes})
                continue
            file_name = f"{key}_{index:03d}.png"
            target = out_dir / file_name
            digest = by_index[index]["image_sha256"]
            if not (target.is_file() and sha256_file(target) == digest):
                atomic_write_bytes(target, source.read_bytes())
                written.append(target)
            keep.add(file_name)
            accepted.append({"file_name": file_name, "text": caption["detailed"], "image_sha256": digest, **record})
    remove_stale_files(out_dir, keep)
    _write_jsonl(out_dir / "metadata.jsonl", accepted, written)
    _write_jsonl(out_dir / "rejected.jsonl", rejected, written)
    stats = {"accepted": len(accepted), "rejected": len(rejected), "problems": problems,
             "compositions": len(registry["compositions"]),
             "concepts": {k: {"token": config.caption.concept_token.format(index=c.token_index),
                              "class_name": c.class_name, "name": c.name} for k, c in lookup.items()}}
    atomic_write_json(out_dir / "stats.json", stats)
    return StageResult(stats, written, problems, [], time.perf_counter() - start)


def _write_jsonl(path: Path, rows: list[dict], written: list[Path]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        atomic_write_text(path, text)
        written.append(path)
