"""The composition stage."""
from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import PipelineConfig
from ..io import (BadInput, derive_seed, read_json, remove_stale_files, sha256_file)
from ..lineage import ArtifactRecord
from ..roots import concepts_root
from .common import (MANIFEST, PngWriter, StageResult, listing, read_manifest, write_json)


def compose_composition(composition: str, config: PipelineConfig, out_dir: Path | None = None) -> StageResult:
    """Paste the objects of every layout; write the composite, union mask and instance masks.

    A layout with a ground (gen4gen.scenes.plan_ground) is composed in its scene: the objects
    stand on the floor with their shadows, and the manifest records, per object, its base, depth,
    scale and shadow. A layout without one (an LLM's) is composed on black for the repainter.
    """
    from ..compose import compose, crop_cutout
    from ..scenes import ground_scene

    start = time.perf_counter()
    paths = config.paths
    layouts_dir = paths.layouts(composition)
    document = read_manifest(layouts_dir, f"layouts of {composition!r}", "materialise layouts first")
    out_dir = out_dir or paths.composed(composition)
    level = config.composition.png_compress_level
    canvas = config.composition.canvas_size
    cutouts: dict[tuple[str, str], object] = {}
    frame_fractions: dict[tuple[str, str], float] = {}
    cutout_parents: dict[tuple[str, str], tuple[str, str, str]] = {}
    photo_findings: dict[tuple[str, str], list] = {}
    scene_parents: dict[str, str] = {}
    writer = PngWriter(level)
    photos = concepts_root(paths.concepts)
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
                cutouts[key] = crop_cutout(key[0], _source_photo(photos, folder / MANIFEST, entry), rgba)
                frame_fractions[key] = entry["mask_fraction"]
                photo_findings[key] = entry.get("findings", [])
                cutout_parents[key] = (str(folder / entry["cutout"]), entry["cutout_sha256"], "cutout")
            parts.append(cutouts[key])
        boxes = [tuple(obj["box"]) for obj in layout["objects"]]
        rng = np.random.default_rng(derive_seed(config.seed, composition, layout["index"], "compose"))
        recipe = layout.get("ground")
        scene = ground_scene(recipe, canvas) if recipe else None
        result = compose(parts, boxes, canvas, rng, config.composition, scene)
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
                "instance_mask": instance_file, "pasted_box": list(inst.pasted_box),
                "photo_findings": photo_findings[(obj["concept"], layout["photos"][obj["concept"]])],
                **(standing(obj, inst, scene, canvas) if scene is not None else {}),
            })
        layout_file = layouts_dir / layout["file"]
        parents = [(str(layout_file), sha256_file(layout_file), "layout")] + [cutout_parents[(o["concept"], layout["photos"][o["concept"]])]
                                     for o in layout["objects"]]
        if scene is not None:
            parents += [(photo, _scene_sha256(photo, scene_parents), "background")
                        for photo in (recipe["photo"], recipe.get("floor"), recipe.get("backdrop")) if photo]
        entries.append({"index": layout["index"], "image": image, "mask": mask, "scene": layout["scene"],
                        "background_prompt": layout["background_prompt"], "objects": objects,
                        **({"ground": {**scene.describe(), "recipe": recipe}} if scene is not None else {}),
                        "_files": [image, mask] + instance_futures, "_parents": parents})
    written = writer.result()
    records = [ArtifactRecord(path, sha, asset_key="scene_bank") for path, sha in scene_parents.items()]
    for entry in entries:
        files = [future.result() for future in entry.pop("_files")]
        parents = entry.pop("_parents")
        records += [ArtifactRecord(str(out_dir / f["file"]), f["sha256"], parents) for f in files]
        image, mask = files[0], files[1]
        entry.update(image=image["file"], image_sha256=image["sha256"], mask=mask["file"], mask_sha256=mask["sha256"])
    remove_stale_files(out_dir, {p.name for p in written} | {MANIFEST})
    manifest = {"composition": composition, "canvas_size": canvas, "images": entries}
    sha = write_json(out_dir / MANIFEST, manifest)
    records.append(listing(out_dir / MANIFEST, sha, [(Path(r.path), r.sha256) for r in records
                                                      if r.asset_key is None]))
    return StageResult(manifest, written, [], [], time.perf_counter() - start, records)


def standing(obj: dict, inst, scene, canvas: int) -> dict:
    """Where an object stands in its scene: its base on the floor, depth and scale, and its shadow."""
    from ..ground_plane import depth_scale
    from ..size_priors import real_world_size

    base = int(inst.shadow["base_y"]) if inst.shadow else int(inst.pasted_box[3])
    on_floor = scene.floor_top_y < base <= canvas
    factor = depth_scale(base, scene.horizon_y, canvas) if base > scene.horizon_y else None
    height_m = (obj.get("placement") or {}).get("height_m") or real_world_size(obj["class_name"])
    height_px = inst.height
    return {"ground": {"base_y": base, "on_floor": on_floor, "floor_top_y": scene.floor_top_y,
                       "horizon_y": scene.horizon_y, "depth": round(1 / factor, 6) if factor else None,
                       "depth_scale": round(factor, 6) if factor else None, "height_px": height_px,
                       "height_m": height_m, "scale": round(height_px / height_m, 4) if height_m else None},
            "placement": obj.get("placement"), "shadow": inst.shadow}


def _scene_sha256(source: str, cache: dict[str, str]) -> str:
    """Hash of a scene photo (file bytes, or decoded pixels for photos shipped in packages)."""
    if source not in cache:
        from ..lineage import PACKAGED_PREFIX

        cache[source] = _packaged_sha256(source) if source.startswith(PACKAGED_PREFIX) else sha256_file(source)
    return cache[source]


@lru_cache(maxsize=None)
def _packaged_sha256(source: str) -> str:
    """A packaged photo's hash, once per process (its pixels cannot change while it runs)."""
    from ..lineage import packaged_photo_sha256

    return packaged_photo_sha256(source)


def _source_photo(photos, manifest: Path, entry: dict) -> str:
    """A segmented manifest's source photo, relative to the concepts folder; absolute or ``..`` names refused."""
    try:
        return photos.relative(photos.locate(entry["source_photo"], written_before=False))
    except BadInput as exc:
        raise BadInput(manifest, f"source_photo {exc}; rebuild the segmented foregrounds") from None
