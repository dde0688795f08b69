from dagster import (AssetCheckResult, AssetExecutionContext, MaterializeResult, MetadataValue, asset,
                     asset_check)

from gen4gen.concepts import load_registry
from gen4gen.io import sha256_files_cached
from gen4gen.report import _read_jsonl
from gen4gen.stages import export_mycanvas
from gen4gen.screening import ScreeningModels, screening_summary
from resources import ClipResource, DetectorResource, DvcResource, LineageResource, PipelineSettings

from .captioning import captions
from .concepts import concept_images
from .metadata import log_problems, stage_metadata
from .recolouring import recoloured_images


@asset(group_name="gen4gen", deps=[captions, recoloured_images, concept_images], kinds={"python", "huggingface"},
       code_version="1")
def mycanvas(context: AssetExecutionContext, settings: PipelineSettings, lineage: LineageResource,
             clip: ClipResource, detector: DetectorResource, dvc: DvcResource) -> MaterializeResult:
    """The filtered dataset in Hugging Face imagefolder layout; rejections kept with reasons."""
    config = settings.config
    result = export_mycanvas(load_registry(config.paths.registry), config,
                             models=ScreeningModels(clip.backend, detector.backend))  # CLIP screening (issue 7)
    log_problems(context, result)
    out_dir = config.paths.mycanvas
    rows = _read_jsonl(out_dir / "metadata.jsonl")
    lineage_metadata = lineage.record(
        context, result.lineage,
        params={"filter": config.filter.model_dump(), "screening": config.screening.model_dump(mode="json")},
        backend={"checks": "geometric", "clip": config.clip.backend, "clip_model": config.clip.model,
                 "detector": config.detector.backend, "detector_model": config.detector.model})
    # The exported images' lineage travels with the dataset, to audit it without the database.
    lineage.store.export_parquet([r["provenance_id"] for r in rows], out_dir)
    return MaterializeResult(metadata=stage_metadata(
        result, "geometric_checks",
        [out_dir / r["file_name"] for r in rows[:config.report.metadata_thumbnails]],
        preview_cache=config.paths.build / ".previews",
        accepted=MetadataValue.int(result.manifest["accepted"]),
        rejected=MetadataValue.int(result.manifest["rejected"]),
        folder=MetadataValue.path(str(out_dir)),
        load_with=MetadataValue.text(f'datasets.load_dataset("imagefolder", data_dir="{out_dir}")'),
        screening=MetadataValue.json(screening_summary(config)),  # issue 7
        **lineage_metadata,
        **dvc.commit(context, result.lineage),  # DVC version of the dataset (issue 4)
    ))


@asset_check(asset=mycanvas, blocking=True)
def mycanvas_files_match_metadata(settings: PipelineSettings) -> AssetCheckResult:
    """Every metadata row names an image on disk with the recorded bytes, and no image is unlisted."""
    paths = settings.config.paths
    out_dir = paths.mycanvas
    rows = _read_jsonl(out_dir / "metadata.jsonl")
    listed = {r["file_name"] for r in rows}
    on_disk = {p.name for p in out_dir.glob("*.png")}
    # Files unchanged since the last check (size and mtime) are not hashed again.
    digests = sha256_files_cached([out_dir / name for name in sorted(listed & on_disk)],
                                  paths.build / ".mycanvas_hashes.json")
    mismatched = [r["file_name"] for r in rows
                  if r["file_name"] in on_disk and digests[str(out_dir / r["file_name"])] != r["image_sha256"]]
    missing, unlisted = sorted(listed - on_disk), sorted(on_disk - listed)
    return AssetCheckResult(
        passed=not (missing or unlisted or mismatched),
        metadata={"missing": MetadataValue.json(missing), "unlisted": MetadataValue.json(unlisted),
                  "changed": MetadataValue.json(mismatched), "images": MetadataValue.int(len(rows))},
    )
