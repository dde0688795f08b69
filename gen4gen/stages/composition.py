"""The composition stage."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import PipelineConfig
from ..io import (BadInput, derive_seed, read_json, remove_stale_files, sha256_file)
from ..lineage import ArtifactRecord
from ..roots import concepts_root
from .common import (MANIFEST, PngWriter, StageResult, listing, read_manifest, write_json)


def compose_composition(composition: str, config: PipelineConfig, out_dir: Path | None = None) -> StageResult:
    """Paste the objects of every layout; write the composite, union mask and instance masks."""
    from ..compose import compose, crop_cutout

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
    sha = write_json(out_dir / MANIFEST, manifest)
    records.append(listing(out_dir / MANIFEST, sha, [(Path(r.path), r.sha256) for r in records]))
    return StageResult(manifest, written, [], [], time.perf_counter() - start, records)


def _source_photo(photos, manifest: Path, entry: dict) -> str:
    """A segmented manifest's source photo, relative to the concepts folder; absolute or ``..`` names refused."""
    try:
        return photos.relative(photos.locate(entry["source_photo"], written_before=False))
    except BadInput as exc:
        raise BadInput(manifest, f"source_photo {exc}; rebuild the segmented foregrounds") from None
