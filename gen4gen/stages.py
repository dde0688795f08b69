"""One function per pipeline stage: read the upstream files, compute, write this stage's files.

No Dagster here: assets call these, tests and benchmarks call them directly. Each stage
writes its images first and its ``manifest.json`` last (all atomically), so a manifest
only ever names files that exist. Each also returns a lineage record per file it wrote,
naming the files it was made from, for the lineage store.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .concepts import ConceptRecord, concept_lookup, split_composition
from .config import PipelineConfig
from .io import (BadInput, atomic_write_bytes, atomic_write_text, derive_seed, encode_png, json_bytes, load_photo,
                 read_json, remove_stale_files, sha256_bytes, sha256_file, write_if_changed)
from .lineage import ArtifactRecord, artifact_id, relative_path

# The lineage of the exported images, as Parquet beside them (written by the mycanvas asset).
LINEAGE_EXPORT_FILES = ("lineage_artifacts.parquet", "lineage_edges.parquet")

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
    lineage: list[ArtifactRecord] = field(default_factory=list)


def _read_manifest(folder: Path, what: str, how: str) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise StageInputError(f"{what} is missing ({path} does not exist); {how}")
    return read_json(path)


def _write_json(path: Path, payload) -> str:
    data = json_bytes(payload)
    write_if_changed(path, data)
    return sha256_bytes(data)


def _listing(path: Path, sha: str, files: list[tuple[Path, str]]) -> ArtifactRecord:
    """A manifest or index file: its parents are the files it lists."""
    return ArtifactRecord(str(path), sha, [(str(f), h, "listed") for f, h in files])


def _write_png(path: Path, image, level: int, written: list[Path]) -> dict:
    data = encode_png(image, level)
    write_if_changed(path, data)
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

    def submit(self, path: Path, image) -> Future:
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
    entries, problems, written, notes, records = [], [], [], [], []
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
        source = [(photo.file, photo.sha256, "source_photo")]
        records += [ArtifactRecord(str(out_dir / cut["file"]), cut["sha256"], source),
                    ArtifactRecord(str(out_dir / mask["file"]), mask["sha256"], source)]
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
    sha = _write_json(out_dir / MANIFEST, manifest)
    records.append(_listing(out_dir / MANIFEST, sha, [(Path(r.path), r.sha256) for r in records]))
    return StageResult(manifest, written, problems, notes, time.perf_counter() - start, records)


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
    images, records = [], []
    out_dir = paths.layouts(composition)
    for index in range(config.layout.images_per_composition):
        picks = {}
        objects = []
        cutouts = []
        for key in members:
            photos = segmented[key]["photos"]
            choice = photos[int(np.random.default_rng(derive_seed(config.seed, composition, index, key))
                                .integers(len(photos)))]
            picks[key] = choice["stem"]
            cutouts.append((str(paths.segmented(key) / choice["cutout"]), choice["cutout_sha256"], "cutout"))
            objects.append(ObjectSpec(concept=key, class_name=lookup[key].class_name, aspect=choice["aspect"]))
        # One layout per call, so each image's photo choice sets its objects' aspects.
        layout = planner.plan(composition, objects, 1, config.seed, config.composition.canvas_size, scenes,
                              first_index=index)[0]
        record = layout.to_dict()
        record["photos"] = picks
        record["file"] = f"{index:03d}.json"
        records.append(ArtifactRecord(str(out_dir / record["file"]), _write_json(out_dir / record["file"], record), cutouts))
        images.append(record)
    document = {"composition": composition, "planner": planner.name, "images": images,
                "concept_versions": {k: segmented[k]["data_version"] for k in members}}
    remove_stale_files(out_dir, {r["file"] for r in images} | {MANIFEST})
    sha = _write_json(out_dir / MANIFEST, document)
    records.append(_listing(out_dir / MANIFEST, sha, [(Path(r.path), r.sha256) for r in records]))
    return StageResult(document, [Path(r.path) for r in records], [], [], time.perf_counter() - start, records)


# ------------------------------------------------------------------ composition
def compose_composition(composition: str, config: PipelineConfig) -> StageResult:
    """Paste the objects of every layout; write the composite, union mask and instance masks."""
    from .compose import compose, crop_cutout

    start = time.perf_counter()
    paths = config.paths
    layouts_dir = paths.layouts(composition)
    document = _read_manifest(layouts_dir, f"layouts of {composition!r}", "materialise layouts first")
    out_dir = paths.composed(composition)
    level = config.composition.png_compress_level
    canvas = config.composition.canvas_size
    cutouts: dict[tuple[str, str], object] = {}
    frame_fractions: dict[tuple[str, str], float] = {}
    cutout_parents: dict[tuple[str, str], tuple[str, str, str]] = {}
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
                cutout_parents[key] = (str(folder / entry["cutout"]), entry["cutout_sha256"], "cutout")
            parts.append(cutouts[key])
        boxes = [tuple(obj["box"]) for obj in layout["objects"]]
        rng = np.random.default_rng(derive_seed(config.seed, composition, layout["index"], "compose"))
        result = compose(parts, boxes, canvas, rng, config.composition)
        stem = f"{layout['index']:03d}"
        image = writer.submit(out_dir / f"{stem}.png", result.rgb)
        mask = writer.submit(out_dir / f"{stem}_mask.png", result.alpha)
        objects, instance_futures = [], []
        for k, (obj, inst) in enumerate(zip(layout["objects"], result.instances)):
            inst.stats["frame_fraction"] = frame_fractions[(obj["concept"], layout["photos"][obj["concept"]])]
            # Instance masks are binary: 1-bit PNGs are 8x smaller and faster to write.
            instance_file = f"{stem}_obj{k}.png"
            instance_futures.append(writer.submit(out_dir / instance_file, Image.fromarray(inst.visible_mask).convert("1")))
            objects.append({
                "concept": obj["concept"], "class_name": obj["class_name"], "size_ratio": obj["size_ratio"],
                "layout_box": list(inst.layout_box), "box": list(inst.box), "stats": inst.stats,
                "augmentation": {"flip": inst.augmentation.flip, "rotation": inst.augmentation.rotation,
                                 "shift": list(inst.augmentation.shift)},
                "source_photo": inst.source_photo, "cutout": f"{obj['concept']}/{layout['photos'][obj['concept']]}.png",
                "instance_mask": instance_file,
            })
        layout_file = layouts_dir / layout["file"]
        parents = [(str(layout_file), sha256_file(layout_file), "layout")] + [cutout_parents[(o["concept"], layout["photos"][o["concept"]])]
                                     for o in layout["objects"]]
        entries.append({"index": layout["index"], "image": image, "mask": mask, "scene": layout["scene"],
                        "background_prompt": layout["background_prompt"], "objects": objects,
                        "_files": [image, mask] + instance_futures, "_parents": parents})
    written = writer.result()
    records = []
    for entry in entries:
        files = [future.result() for future in entry.pop("_files")]
        parents = entry.pop("_parents")
        records += [ArtifactRecord(str(out_dir / f["file"]), f["sha256"], parents) for f in files]
        image, mask = files[0], files[1]
        entry.update(image=image["file"], image_sha256=image["sha256"], mask=mask["file"], mask_sha256=mask["sha256"])
    remove_stale_files(out_dir, {p.name for p in written} | {MANIFEST})
    manifest = {"composition": composition, "canvas_size": canvas, "images": entries}
    sha = _write_json(out_dir / MANIFEST, manifest)
    records.append(_listing(out_dir / MANIFEST, sha, [(Path(r.path), r.sha256) for r in records]))
    return StageResult(manifest, written, [], [], time.perf_counter() - start, records)


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
    backgrounds: dict[str, str] = {}
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
            parents = [(str(source_dir / entry["image"]), entry["image_sha256"], "composite"),
                       (str(source_dir / entry["mask"]), entry["mask_sha256"], "mask")]
            if info.get("background_photo"):
                parents.append((info["background_photo"], _background_sha256(info["background_photo"], backgrounds),
                                "background"))
            entries.append({"index": entry["index"], "image": writer.submit(out_dir / entry["image"], image),
                            "composed": entry["image"], "prompt": request.prompt, "seed": request.seed, **info,
                            "_parents": parents})
    written = writer.result()
    records = [ArtifactRecord(path, sha, asset_key="scene_bank") for path, sha in backgrounds.items()]
    for entry in entries:
        saved = entry["image"].result()
        records.append(ArtifactRecord(str(out_dir / saved["file"]), saved["sha256"], entry.pop("_parents")))
        entry.update(image=saved["file"], image_sha256=saved["sha256"])
    remove_stale_files(out_dir, {p.name for p in written} | {MANIFEST})
    manifest = {"composition": composition, "backend": repainter.name, "images": entries}
    sha = _write_json(out_dir / MANIFEST, manifest)
    records.append(_listing(out_dir / MANIFEST, sha, [(Path(r.path), r.sha256) for r in records
                                                      if r.asset_key is None]))
    return StageResult(manifest, written, [], [], time.perf_counter() - start, records)


def _background_sha256(source: str, cache: dict[str, str]) -> str:
    """Hash of a scene photo (file bytes, or decoded pixels for photos shipped in packages)."""
    if source not in cache:
        from .lineage import PACKAGED_PREFIX, packaged_photo_sha256

        cache[source] = packaged_photo_sha256(source) if source.startswith(PACKAGED_PREFIX) else sha256_file(source)
    return cache[source]


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
    layouts = {e["index"]: e for e in _read_manifest(paths.layouts(composition), f"layouts of {composition!r}",
                                                      "materialise layouts first")["images"]}
    out_dir = paths.captions(composition)
    captions, records = [], []
    for entry in composed["images"]:
        objects = [CaptionObject(o["concept"], o["class_name"], tokens.get(o["concept"], "<unknown>"), tuple(o["box"]))
                   for o in entry["objects"]]
        image_path = paths.recoloured(composition) / by_index[entry["index"]]["image"]
        detailed = captioner.describe(image_path, objects, entry["background_prompt"], canvas)
        caption = {
            "index": entry["index"],
            "image": by_index[entry["index"]]["image"],
            "file": f"{entry['index']:03d}.json",
            "detailed": detailed,
            "detailed_with_tokens": retell(objects, entry["background_prompt"], canvas, use_tokens=True),
            **prompt_strategies(objects, entry["background_prompt"], comp_token),
        }
        layout_file = paths.layouts(composition) / layouts[entry["index"]]["file"]
        parents = [(str(image_path), by_index[entry["index"]]["image_sha256"], "image"),
                   (str(layout_file), sha256_file(layout_file), "layout")]
        records.append(ArtifactRecord(str(out_dir / caption["file"]), _write_json(out_dir / caption["file"], caption), parents))
        captions.append(caption)
    document = {"composition": composition, "captioner": captioner.name, "composition_token": comp_token,
                "tokens": {token: lookup[key].name + f" ({lookup[key].class_name})" for key, token in tokens.items()},
                "concept_tokens": tokens, "captions": captions}
    remove_stale_files(out_dir, {c["file"] for c in captions} | {MANIFEST})
    sha = _write_json(out_dir / MANIFEST, document)
    records.append(_listing(out_dir / MANIFEST, sha, [(Path(r.path), r.sha256) for r in records]))
    return StageResult(document, [Path(r.path) for r in records], [], [], time.perf_counter() - start, records)


# ------------------------------------------------------------------ MyCanvas export
@dataclass
class BuiltImage:
    """One image as the export sees it: its composite entry, recoloured entry and captions."""

    composition: str
    index: int
    entry: dict  # composed manifest entry (objects with boxes and check statistics)
    recoloured: dict  # recoloured manifest entry
    caption: dict  # this image's captions
    concept_tokens: dict

    @property
    def image_id(self) -> str:
        return f"{self.composition}/{self.index:03d}"


def built_images(registry: dict, config: PipelineConfig, problems: list[dict] | None = None):
    """Every fully built image of the catalogue's compositions, in order.

    Compositions or images that are not (completely) built are skipped, with a problem
    record when ``problems`` is given.
    """
    paths = config.paths
    report = problems if problems is not None else []
    for comp in registry["compositions"]:
        key = comp["key"]
        try:
            composed = _read_manifest(paths.composed(key), f"composed images of {key!r}", "materialise composed_images")
            recoloured = _read_manifest(paths.recoloured(key), f"recoloured images of {key!r}", "materialise recoloured_images")
            captions = _read_manifest(paths.captions(key), f"captions of {key!r}", "materialise captions")
        except StageInputError as exc:
            report.append({"path": key, "reason": str(exc)})
            continue
        by_index = {e["index"]: e for e in recoloured["images"]}
        caption_by_index = {c["index"]: c for c in captions["captions"]}
        for entry in composed["images"]:
            index = entry["index"]
            if index not in by_index or index not in caption_by_index:
                report.append({"path": f"{key}/{index:03d}",
                               "reason": "image has no recoloured version or caption; rebuild the composition"})
                continue
            yield BuiltImage(key, index, entry, by_index[index], caption_by_index[index], captions["concept_tokens"])


def export_mycanvas(registry: dict, config: PipelineConfig, models=None) -> StageResult:
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
    accepted, rejected, problems, written, records = [], [], [], [], []
    keep = {"metadata.jsonl", "rejected.jsonl", "stats.json", *LINEAGE_EXPORT_FILES}
    # What the last export wrote: unchanged images are recognised without re-hashing them.
    metadata_path = out_dir / "metadata.jsonl"
    exported_before = {row["file_name"]: row["image_sha256"] for row in
                       (json.loads(line) for line in (metadata_path.read_text(encoding="utf-8").splitlines()
                                                      if metadata_path.is_file() else []) if line.strip())}
    # ---- screening hook (issue 7, gen4gen/screening.py): CLIP / detector screening and review overrides,
    # decided up front for every candidate; a no-op unless a CLIP backend, a detector or an overrides file is set.
    from .screening import screen_mycanvas
    screening = screen_mycanvas(registry, config, models, problems)
    # ---- end of screening hook
    from .versioning import stage_version

    data_versions: dict[str, str | None] = {}
    for built in built_images(registry, config, problems):
        key, index, entry = built.composition, built.index, built.entry
        if key not in data_versions:  # the DVC version of the recoloured images this row ships
            data_versions[key] = stage_version(config, "recoloured", key)
        outcome = check_image(entry["objects"], config.filter)
        source = paths.recoloured(key) / built.recoloured["image"]
        caption = built.caption
        image_id = built.image_id
        record = {
            "image_id": image_id, "composition": key, "scene": entry["scene"], "dvc_version": data_versions[key],
            "background_prompt": entry["background_prompt"],
            "captions": {k: caption[k] for k in ("detailed", "detailed_with_tokens", "global_composition_token",
                                                 "repeated_concept_tokens", "background_in_text")},
            # One struct per object (same fields in every row, as imagefolder's schema needs).
            "concepts": [{"concept": o["concept"], "class_name": o["class_name"],
                          "token": built.concept_tokens.get(o["concept"]), "box": o["box"],
                          "source_photo": Path(o["source_photo"]).name, "checks": o["stats"]}
                         for o in entry["objects"]],
        }
        outcome = screening.apply(image_id, record, outcome)  # screening hook (issue 7)
        digest = built.recoloured["image_sha256"]
        if not outcome.accepted:
            rejected.append({**record, "source_image": str(source), "source_sha256": digest,
                             "reasons": outcome.reasons, "reason_codes": outcome.codes})
            continue
        file_name = f"{key}_{index:03d}.png"
        target = out_dir / file_name
        unchanged = (exported_before.get(file_name) == digest and target.is_file()
                     and target.stat().st_size == source.stat().st_size)
        if not (unchanged or (target.is_file() and sha256_file(target) == digest)):
            atomic_write_bytes(target, source.read_bytes())
            written.append(target)
        keep.add(file_name)
        caption_file = paths.captions(key) / caption["file"]
        records.append(ArtifactRecord(str(target), digest, [(str(source), digest, "recoloured"),
                                                            (str(caption_file), sha256_file(caption_file), "caption")]))
        provenance = artifact_id(relative_path(target, paths.data), digest)
        accepted.append({"file_name": file_name, "text": caption["detailed"], "image_sha256": digest,
                         "provenance_id": provenance, **record})
    remove_stale_files(out_dir, keep)
    metadata_sha = _write_jsonl(out_dir / "metadata.jsonl", accepted, written)
    rejected_sha = _write_jsonl(out_dir / "rejected.jsonl", rejected, written)
    records.append(_listing(out_dir / "metadata.jsonl", metadata_sha, [(Path(r.path), r.sha256) for r in records]))
    records.append(ArtifactRecord(str(out_dir / "rejected.jsonl"), rejected_sha,
                                  [(r["source_image"], r["source_sha256"], "rejected") for r in rejected]))
    stats = {"accepted": len(accepted), "rejected": len(rejected), "problems": problems,
             "compositions": len(registry["compositions"]),
             "composition_keys": sorted(c["key"] for c in registry["compositions"]),
             "concepts": {k: {"token": config.caption.concept_token.format(index=c.token_index),
                              "class_name": c.class_name, "name": c.name} for k, c in lookup.items()}}
    records.append(ArtifactRecord(str(out_dir / "stats.json"), _write_json(out_dir / "stats.json", stats)))
    return StageResult(stats, written, problems, [], time.perf_counter() - start, records)


def _write_jsonl(path: Path, rows: list[dict], written: list[Path]) -> str:
    """Rewrite only when the content changed (unchanged files keep their bytes and mtime)."""
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        atomic_write_text(path, text)
        written.append(path)
    return sha256_bytes(text.encode("utf-8"))
