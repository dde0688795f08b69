"""The recolouring stage."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import PipelineConfig
from ..io import (derive_seed, remove_stale_files, sha256_file)
from ..lineage import ArtifactRecord
from .common import (MANIFEST, PngWriter, StageResult, listing, read_manifest, write_json)


def recolour_composition(composition: str, config: PipelineConfig, repainter, out_dir: Path | None = None) -> StageResult:
    """Fill each composite's background and harmonise it, in batches."""
    from ..recolour import RepaintRequest

    start = time.perf_counter()
    paths = config.paths
    source_dir = paths.composed(composition)
    composed = read_manifest(source_dir, f"composed images of {composition!r}", "materialise composed_images first")
    out_dir = out_dir or paths.recoloured(composition)
    writer = PngWriter(config.composition.png_compress_level)
    entries = []
    backgrounds: dict[str, str] = {}
    settings = config.recolour
    images = composed["images"]
    # A pooled repainter takes enough requests per call to give each of its workers a batch.
    step = getattr(repainter, "requests_per_call", settings.batch_size)
    for batch_start in range(0, len(images), step):
        batch = images[batch_start:batch_start + step]
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
    sha = write_json(out_dir / MANIFEST, manifest)
    records.append(listing(out_dir / MANIFEST, sha, [(Path(r.path), r.sha256) for r in records
                                                      if r.asset_key is None]))
    return StageResult(manifest, written, [], [], time.perf_counter() - start, records)


def _background_sha256(source: str, cache: dict[str, str]) -> str:
    """Hash of a scene photo (file bytes, or decoded pixels for photos shipped in packages)."""
    if source not in cache:
        from ..lineage import PACKAGED_PREFIX, packaged_photo_sha256

        cache[source] = packaged_photo_sha256(source) if source.startswith(PACKAGED_PREFIX) else sha256_file(source)
    return cache[source]
