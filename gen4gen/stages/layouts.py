"""The layouts stage."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..concepts import concept_lookup, split_composition
from ..config import PipelineConfig
from ..io import (derive_seed, remove_stale_files)
from ..lineage import ArtifactRecord
from .common import (MANIFEST, StageInputError, StageResult, listing, read_manifest, write_json)


def plan_composition(composition: str, registry: dict, config: PipelineConfig, planner, scenes,
                     out_dir: Path | None = None) -> StageResult:
    """N layouts for one composition; each image also picks which photo of each concept to use."""
    from ..layout import ObjectSpec

    start = time.perf_counter()
    paths = config.paths
    lookup = concept_lookup(registry)
    members = split_composition(composition)
    segmented = {}
    for key in members:
        if key not in lookup:
            raise StageInputError(f"composition {composition!r} names concept {key!r}, which is not in the catalogue; "
                                  "rematerialise concept_images")
        manifest = read_manifest(paths.segmented(key), f"segmented foregrounds of concept {key!r}",
                                  f"materialise segmented_foregrounds for partition {key!r} first")
        if not manifest["photos"]:
            raise StageInputError(f"concept {key!r} has no usable segmented photo (see its manifest problems)")
        segmented[key] = manifest
    images, records, dropped, warnings = [], [], [], []
    out_dir = out_dir or paths.layouts(composition)
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
        if getattr(layout, "dropped", None) or not layout.objects:
            # The layout, not an object: the composition keeps its key and captions whole.
            reason = getattr(layout, "dropped", None) or "; ".join(layout.notes) or "no object placed"
            dropped.append({"index": index, "reason": reason})
            warnings.append(f"{composition} image {index:03d} left out: {reason}")
            continue
        record = layout.to_dict()
        record["photos"] = picks
        record["file"] = f"{index:03d}.json"
        records.append(ArtifactRecord(str(out_dir / record["file"]), write_json(out_dir / record["file"], record), cutouts))
        images.append(record)
    document = {"composition": composition, "planner": planner.name, "images": images, "dropped": dropped,
                "concept_versions": {k: segmented[k]["data_version"] for k in members}}
    remove_stale_files(out_dir, {r["file"] for r in images} | {MANIFEST})
    sha = write_json(out_dir / MANIFEST, document)
    records.append(listing(out_dir / MANIFEST, sha, [(Path(r.path), r.sha256) for r in records]))
    return StageResult(document, [Path(r.path) for r in records], [], warnings, time.perf_counter() - start, records)
