"""The MyCanvas export stage."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


from ..concepts import concept_lookup
from ..config import PipelineConfig
from ..io import (sha256_bytes, atomic_write_bytes, atomic_write_text, remove_stale_files, sha256_file)
from ..lineage import ArtifactRecord, artifact_id, relative_path
from ..roots import data_root
from ..staging import crash_point, link_or_copy
from .common import (LINEAGE_EXPORT_FILES, StageInputError, StageResult, listing, read_manifest, write_json)


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
            composed = read_manifest(paths.composed(key), f"composed images of {key!r}", "materialise composed_images")
            recoloured = read_manifest(paths.recoloured(key), f"recoloured images of {key!r}", "materialise recoloured_images")
            captions = read_manifest(paths.captions(key), f"captions of {key!r}", "materialise captions")
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


def export_mycanvas(registry: dict, config: PipelineConfig, models=None, out_dir: Path | None = None,
                    previous_dir: Path | None = None, left_out: dict[str, str] | None = None) -> StageResult:
    """Filter every built image and export the accepted ones in Hugging Face imagefolder layout.

    ``metadata.jsonl`` lists the accepted images; ``rejected.jsonl`` keeps every rejected
    one with its reasons and scores (``source_image`` relative to the data folder). ``registry``
    lists the compositions to export (those whose whole chain is current); ``left_out`` names the
    others with the reason, for the stats.
    Writing into a staging folder, images unchanged since ``previous_dir``'s export are
    hard-linked from it rather than copied again.
    """
    from ..filtering import check_image

    start = time.perf_counter()
    paths = config.paths
    out_dir = out_dir or paths.mycanvas
    previous_dir = previous_dir or out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    lookup = concept_lookup(registry)
    data = data_root(paths.data)
    accepted, rejected, problems, written, records, rejected_parents = [], [], [], [], [], []
    keep = {"metadata.jsonl", "rejected.jsonl", "stats.json", *LINEAGE_EXPORT_FILES}
    # What the last export wrote: unchanged images are recognised without re-hashing them.
    metadata_path = previous_dir / "metadata.jsonl"
    exported_before = {row["file_name"]: row["image_sha256"] for row in
                       (json.loads(line) for line in (metadata_path.read_text(encoding="utf-8").splitlines()
                                                      if metadata_path.is_file() else []) if line.strip())}
    # An exported file is trusted by size and mtime when it was verified before, else hashed
    # again: an in-place edit changes its mtime, so a damaged file is never linked forward.
    from ..io import sha256_files_cached
    previous_digests = sha256_files_cached(
        [previous_dir / name for name in exported_before if (previous_dir / name).is_file()],
        paths.build / ".state" / "export_hashes.json")
    # ---- screening hook (gen4gen/screening.py): CLIP / detector screening and review overrides,
    # decided up front for every candidate; a no-op unless a CLIP backend, a detector or an overrides file is set.
    from ..screening import screen_mycanvas
    screening = screen_mycanvas(registry, config, models, problems)
    # ---- end of screening hook
    from ..versioning import stage_version

    data_versions: dict[str, str | None] = {}
    photo_uses: dict[str, list[list[dict]]] = {}  # source photo -> its cut-out findings in each image using it
    for built in built_images(registry, config, problems):
        key, index, entry = built.composition, built.index, built.entry
        for obj in entry["objects"]:
            photo_uses.setdefault(obj["source_photo"], []).append(obj.get("photo_findings", []))
        if key not in data_versions:  # the DVC version of the recoloured images this row ships
            data_versions[key] = stage_version(config, "recoloured", key)
        outcome = check_image(entry["objects"], config.filter, config.recolour.backend)
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
        outcome = screening.apply(image_id, record, outcome)  # screening hook
        record["warnings"] = outcome.warnings
        digest = built.recoloured["image_sha256"]
        if not outcome.accepted:
            rejected.append({**record, "source_image": data.relative(source), "source_sha256": digest,
                             "reasons": outcome.reasons, "reason_codes": outcome.codes})
            rejected_parents.append((str(source), digest, "rejected"))
            continue
        file_name = f"{key}_{index:03d}.png"
        target = out_dir / file_name
        previous = previous_dir / file_name
        unchanged = (exported_before.get(file_name) == digest and previous.is_file()
                     and previous.stat().st_size == source.stat().st_size and previous_digests.get(str(previous)) == digest)
        if previous != target and unchanged:
            link_or_copy(previous, target)
        elif not (unchanged or (target.is_file() and sha256_file(target) == digest)):
            atomic_write_bytes(target, source.read_bytes())
            written.append(target)
            crash_point("publish")  # some images of the new export written, the rest not
        keep.add(file_name)
        caption_file = paths.captions(key) / caption["file"]
        records.append(ArtifactRecord(str(target), digest, [(str(source), digest, "recoloured"),
                                                            (str(caption_file), sha256_file(caption_file), "caption")]))
        provenance = artifact_id(relative_path(previous_dir / file_name, paths.data), digest)
        accepted.append({"file_name": file_name, "text": caption["detailed"], "image_sha256": digest,
                         "provenance_id": provenance, **record})
    remove_stale_files(out_dir, keep)
    metadata_sha = _write_jsonl(out_dir / "metadata.jsonl", accepted, written)
    rejected_sha = _write_jsonl(out_dir / "rejected.jsonl", rejected, written)
    records.append(listing(out_dir / "metadata.jsonl", metadata_sha, [(Path(r.path), r.sha256) for r in records]))
    records.append(ArtifactRecord(str(out_dir / "rejected.jsonl"), rejected_sha, rejected_parents))
    stats = {"accepted": len(accepted), "rejected": len(rejected), "problems": problems,
             "photo_findings": _photo_findings(photo_uses),
             "dropped_layouts": _dropped_layouts(registry, config),
             "compositions": len(registry["compositions"]),
             "composition_keys": sorted(c["key"] for c in registry["compositions"]),
             "left_out": dict(sorted((left_out or {}).items())),
             "concepts": {k: {"token": config.caption.concept_token.format(index=c.token_index),
                              "class_name": c.class_name, "name": c.name} for k, c in lookup.items()}}
    records.append(ArtifactRecord(str(out_dir / "stats.json"), write_json(out_dir / "stats.json", stats)))
    return StageResult(stats, written, problems, [], time.perf_counter() - start, records)


def _photo_findings(uses: dict[str, list[list[dict]]]) -> list[dict]:
    """The photos that fail a cut-out check in every image using them, one record per photo and code."""
    from ..realism_checks import Finding, photo_findings

    return [{"photo": photo, **finding.to_dict()} for photo, found in sorted(uses.items())
            for finding in photo_findings(photo, [[Finding(**f) for f in use] for use in found])]


def _dropped_layouts(registry: dict, config: PipelineConfig) -> dict[str, list[dict]]:
    """Per composition, the layouts its planner dropped (index and reason), as its layouts manifest recorded them."""
    from ..io import read_json
    from .common import MANIFEST

    dropped = {}
    for comp in registry["compositions"]:
        path = config.paths.layouts(comp["key"]) / MANIFEST
        try:
            found = read_json(path).get("dropped", []) if path.is_file() else []
        except (OSError, ValueError, AttributeError):
            continue  # the layouts stage reports its own damaged manifest; the stats only lose this line
        if found:
            dropped[comp["key"]] = found
    return dict(sorted(dropped.items()))


def _write_jsonl(path: Path, rows: list[dict], written: list[Path]) -> str:
    """Rewrite only when the content changed (unchanged files keep their bytes and mtime)."""
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        atomic_write_text(path, text)
        written.append(path)
    return sha256_bytes(text.encode("utf-8"))

