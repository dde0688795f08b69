"""The segmentation stage."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..concepts import ConceptRecord
from ..config import PipelineConfig
from ..io import (BadInput, load_photo, remove_stale_files)
from ..lineage import ArtifactRecord
from ..roots import concepts_root
from .common import (MANIFEST, StageResult, listing, write_json, write_png)


class ConceptSegmentationFailed(BadInput):
    """No photo of a concept could be segmented. Its manifest (no photos, every reason) is written
    before this is raised; ``result`` holds the stage result for logging."""

    def __init__(self, concept: ConceptRecord, result: StageResult, folder: Path):
        self.concept = concept.key
        self.problems = result.problems
        self.result = result
        reasons = "; ".join(f"{Path(p['path']).name}: {p['reason']}" for p in result.problems) or "it has no photos"
        super().__init__(folder, f"no photo of concept {concept.key!r} could be segmented ({reasons})")


def _segment(photo_file: Path, loaded, segmenter, first=None):
    """The segmentation of one photo (``first``: already computed); BadInput when it holds no object.

    A photo's own transparency is its mask, but a file whose transparency hides everything (a
    GIF whose transparent palette entry covers the picture, an RGBA export with an empty alpha)
    is segmented from its colours instead, with a note, before it is given up.
    """
    from ..segmentation import mask_bbox

    result = first if first is not None else segmenter.segment(loaded.rgb, loaded.alpha)
    if mask_bbox(result.mask) is not None:
        return result
    if loaded.alpha is None or result.backend != "existing_alpha":
        raise BadInput(photo_file, f"segmentation ({result.backend}) found no object in the photo")
    hidden = "its own transparency (alpha channel or transparent palette colour) leaves no pixel visible"
    retry = segmenter.segment(loaded.rgb, None)
    if mask_bbox(retry.mask) is None:
        raise BadInput(photo_file, f"{hidden}, and segmentation ({retry.backend}) found no object in its colours")
    retry.warnings.append(f"{photo_file}: {hidden}; segmented from its colours instead ({retry.backend})")
    return retry


def segment_concept(concept: ConceptRecord, segmenter, out_dir: Path, config: PipelineConfig) -> StageResult:
    """An RGBA cut-out (cropped to the object) and a full-frame mask per photo of one concept.

    A photo that cannot be used is listed once, with its reason, in the manifest's problems. When
    none can be used, the manifest is still written, then ConceptSegmentationFailed is raised. The
    manifest names each source photo relative to the concepts folder, as the catalogue does.
    Each cut-out is cleaned (fragments and ghosts dropped, edges decontaminated) and measured; a
    photo failing a cut-out check fails in every image using it, so the manifest's
    ``photo_findings`` reports it once, with the advice to choose another photo.
    """
    from ..realism_checks import photo_report

    start = time.perf_counter()
    level = config.composition.png_compress_level
    entries, problems, written, notes, records, photo_reports = [], [], [], [], [], []
    root = concepts_root(config.paths.concepts)
    if segmenter.fallback_warning:
        notes.append(segmenter.fallback_warning)

    def prepare(photo):
        # The catalogue is a file like any other: its names are checked again before use.
        photo_file = root.locate(photo.file)
        return photo_file, load_photo(photo_file, config.input.min_photo_side,
                                      config.input.max_photo_megapixels, config.input.downscale_long_side)

    # A pooled segmenter takes every photo at once, spread over its workers; others one at a time.
    ready, firsts = {}, {}
    if hasattr(segmenter, "segment_many"):
        for number, photo in enumerate(concept.photos):
            try:
                ready[number] = prepare(photo)
            except BadInput:
                pass  # reported in the loop below
        firsts = dict(zip(ready, segmenter.segment_many([(l.rgb, l.alpha) for _, l in ready.values()])))
    for number, photo in enumerate(concept.photos):
        loaded = None
        try:
            photo_file, loaded = ready.get(number) or prepare(photo)
            result = _segment(photo_file, loaded, segmenter, firsts.get(number))
        except BadInput as exc:
            notes.extend(loaded.warnings if loaded is not None else [])
            problems.append({"path": exc.path, "reason": exc.reason})
            continue
        notes.extend(loaded.warnings + result.warnings)
        try:
            cutout, full_mask, box, quality, findings = _finish_cutout(photo_file, loaded.rgb, result, concept,
                                                                       config)
        except BadInput as exc:
            problems.append({"path": exc.path, "reason": exc.reason})
            continue
        x0, y0, x1, y1 = box
        cut = write_png(out_dir / f"{photo.stem}.png", cutout, level, written)
        mask = write_png(out_dir / f"{photo.stem}_mask.png", full_mask, level, written)
        source = [(str(photo_file), photo.sha256, "source_photo")]
        records += [ArtifactRecord(str(out_dir / cut["file"]), cut["sha256"], source),
                    ArtifactRecord(str(out_dir / mask["file"]), mask["sha256"], source)]
        height, width = full_mask.shape
        entries.append({
            "stem": photo.stem, "source_photo": root.relative(photo_file), "source_sha256": photo.sha256,
            "cutout": cut["file"], "cutout_sha256": cut["sha256"], "mask": mask["file"], "mask_sha256": mask["sha256"],
            "backend": result.backend, "rounds_run": result.rounds_run, "bbox": list(box),
            "aspect": round((x1 - x0) / (y1 - y0), 5),
            "mask_fraction": round(float((full_mask > 0).sum()) / (width * height), 5),
            "quality": quality.to_dict(), "findings": [f.to_dict() for f in findings],
        })
        reported = photo_report(root.relative(photo_file), findings)
        photo_reports += reported
        notes += [r["message"] for r in reported]
    remove_stale_files(out_dir, {f for e in entries for f in (e["cutout"], e["mask"])} | {MANIFEST})
    manifest = {"concept": concept.key, "class_name": concept.class_name, "data_version": concept.data_version,
                "segmenter": segmenter.identity(), "photos": entries, "problems": problems,
                "photo_findings": photo_reports}
    sha = write_json(out_dir / MANIFEST, manifest)
    records.append(listing(out_dir / MANIFEST, sha, [(Path(r.path), r.sha256) for r in records]))
    result = StageResult(manifest, written, problems, notes, time.perf_counter() - start, records)
    if not entries:
        raise ConceptSegmentationFailed(concept, result, config.paths.concepts / concept.name)
    return result


def _finish_cutout(photo_file: Path, rgb: np.ndarray, result, concept: ConceptRecord, config: PipelineConfig):
    """(RGBA cut-out cropped to the object, full-frame mask, its box, CutoutQuality, cut-out findings).

    Cleaning keeps the object's body and what touches it; the mask loses what the alpha lost.
    Edges are decontaminated on the cropped cut-out, once per photo.
    """
    from ..compositing import decontaminate_edges
    from ..cutout_quality import clean_cutout, measure_cutout
    from ..realism_checks import RealismThresholds, cutout_findings
    from ..segmentation import make_cutout, mask_bbox

    seg = config.segmentation
    options = (seg.ghost_alpha, seg.attach_px, None, seg.min_part_fraction)
    if seg.clean_cutouts:
        alpha, quality = clean_cutout(result.alpha, *options)
        mask = np.where(alpha > 0, result.mask, 0).astype(np.uint8)
    else:
        alpha, mask, quality = result.alpha, result.mask, measure_cutout(result.alpha, *options)
    box = mask_bbox(mask)
    if box is None:
        raise BadInput(photo_file, f"segmentation ({result.backend}) left no object after cleaning its cut-out")
    x0, y0, x1, y1 = box
    crop_rgb, crop_alpha = rgb[y0:y1, x0:x1], alpha[y0:y1, x0:x1]
    if seg.decontaminate_edges:
        crop_rgb = decontaminate_edges(crop_rgb, np.ascontiguousarray(crop_alpha))
    thresholds = RealismThresholds.from_config(seg, config.filter)
    return (make_cutout(crop_rgb, crop_alpha), mask, box, quality,
            cutout_findings(quality, concept.class_name, thresholds))
