from dagster import (AssetCheckResult, AssetExecutionContext, MaterializeResult, MetadataValue, asset,
                     asset_check)

from gen4gen.concepts import load_registry
from gen4gen.io import sha256_file
from gen4gen.report import _read_jsonl
from gen4gen.stages import export_mycanvas
from resources import PipelineSettings

from .captioning import captions
from .concepts import concept_images
from .metadata import log_problems, stage_metadata
from .recolouring import recoloured_images


@asset(group_name="gen4gen", deps=[captions, recoloured_images, concept_images], kinds={"python", "huggingface"})
def mycanvas(context: AssetExecutionContext, settings: PipelineSettings) -> MaterializeResult:
    """The filtered dataset in Hugging Face imagefolder layout; rejections kept with reasons."""
    config = settings.config
    result = export_mycanvas(load_registry(config.paths.registry), config)
    log_problems(context, result)
    out_dir = config.paths.mycanvas
    rows = _read_jsonl(out_dir / "metadata.jsonl")
    return MaterializeResult(metadata=stage_metadata(
        result, "geometric_checks",
        [out_dir / r["file_name"] for r in rows[:config.report.metadata_thumbnails]],
        accepted=MetadataValue.int(result.manifest["accepted"]),
        rejected=MetadataValue.int(result.manifest["rejected"]),
        folder=MetadataValue.path(str(out_dir)),
        load_with=MetadataValue.text(f'datasets.load_dataset("imagefolder", data_dir="{out_dir}")'),
    ))


@asset_check(asset=mycanvas, blocking=True)
def mycanvas_files_match_metadata(settings: PipelineSettings) -> AssetCheckResult:
    """Every metadata row names an image on disk with the recorded bytes, and no image is unlisted."""
    out_dir = settings.config.paths.mycanvas
    rows = _read_jsonl(out_dir / "metadata.jsonl")
    listed = {r["file_name"] for r in rows}
    on_disk = {p.name for p in out_dir.glob("*.png")}
    mismatched = [r["file_name"] for r in rows
                  if r["file_name"] in on_disk and sha256_file(out_dir / r["file_name"]) != r["image_sha256"]]
    missing, unlisted = sorted(listed - on_disk), sorted(on_disk - listed)
    return AssetCheckResult(
        passed=not (missing or unlisted or mismatched),
        metadata={"missing": MetadataValue.json(missing), "unlisted": MetadataValue.json(unlisted),
                  "changed": MetadataValue.json(mismatched), "images": MetadataValue.int(len(rows))},
    )
