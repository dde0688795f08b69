from dataclasses import replace

from dagster import AssetCheckResult, MetadataValue, asset_check

from gen4gen.concepts import load_registry
from gen4gen.io import sha256_files_cached
from gen4gen.report import read_jsonl
from gen4gen.screening import ScreeningModels, screening_summary
from gen4gen.stages import export_mycanvas
from resources import PipelineSettings

from .captioning import captions
from .concepts import concept_images
from .factory import stage_asset
from .recolouring import recoloured_images


def _export(run):
    """Export every composition whose whole chain is current; the others are listed as left out."""
    resources = run.resources
    left_out = run.left_out or {}
    registry = {**run.registry, "compositions": [c for c in run.registry["compositions"] if c["key"] not in left_out]}
    result = export_mycanvas(registry, run.config, models=ScreeningModels(resources.clip.backend,
                                                                          resources.detector.backend),
                             out_dir=run.out_dir, previous_dir=run.final_dir, left_out=left_out)
    rows = read_jsonl(run.out_dir / "metadata.jsonl")
    # The exported images' lineage travels with the dataset, to audit it without the database;
    # this step's own records are not ingested yet, so they are passed along (at their final paths).
    staging, final = str(run.out_dir), str(run.final_dir)
    pending = [replace(r, path=final + r.path[len(staging):]) if r.path.startswith(staging) else r
               for r in result.lineage]
    resources.lineage.export_parquet([r["provenance_id"] for r in rows], run.out_dir, pending=pending)
    return result


def export_problems(folder, paths) -> list[str]:
    """Rows naming files that are missing or hold other bytes, and images no row lists."""
    rows = read_jsonl(folder / "metadata.jsonl")
    listed = {r["file_name"] for r in rows}
    on_disk = {p.name for p in folder.glob("*.png")}
    digests = sha256_files_cached([folder / name for name in sorted(listed & on_disk)],
                                  paths.build / ".state" / "export_hashes.json")
    changed = [r["file_name"] for r in rows
               if r["file_name"] in on_disk and digests[str(folder / r["file_name"])] != r["image_sha256"]]
    return ([f"missing: {n}" for n in sorted(listed - on_disk)] + [f"unlisted: {n}" for n in sorted(on_disk - listed)]
            + [f"changed: {n}" for n in changed])


def _describe(run, result):
    out_dir = run.final_dir
    left_out = result.manifest.get("left_out", {})
    return {
        "accepted": MetadataValue.int(result.manifest["accepted"]),
        "rejected": MetadataValue.int(result.manifest["rejected"]),
        "left_out": MetadataValue.json(left_out),
        "folder": MetadataValue.path(str(out_dir)),
        "load_with": MetadataValue.text(f'datasets.load_dataset("imagefolder", data_dir="{out_dir}")'),
        "screening": MetadataValue.json(screening_summary(run.config)),
    }


mycanvas = stage_asset(
    "mycanvas", build=_export, describe=_describe,
    check=lambda run, result: export_problems(run.out_dir, run.config.paths),
    previews=lambda run, result: [r["file_name"] for r in read_jsonl(run.final_dir / "metadata.jsonl")[:8]],
    backend_name=lambda run, result: {"checks": "geometric", "clip": run.config.clip.backend,
                                      "detector": run.config.detector.backend},
    deps=[captions, recoloured_images, concept_images], kinds={"python", "huggingface"}, resources=("clip", "detector"),
    description="The filtered dataset in Hugging Face imagefolder layout; rejections kept with reasons.")


@asset_check(asset=mycanvas, blocking=True)
def mycanvas_files_match_metadata(settings: PipelineSettings) -> AssetCheckResult:
    """Every metadata row names an image on disk with the recorded bytes, and no image is unlisted."""
    paths = settings.config.paths
    folder = paths.mycanvas
    problems = export_problems(folder, paths) if (folder / "metadata.jsonl").is_file() else ["missing: metadata.jsonl"]
    return AssetCheckResult(passed=not problems, metadata={
        "problems": MetadataValue.json(problems[:100]),
        "images": MetadataValue.int(len(read_jsonl(folder / "metadata.jsonl")) if not problems else 0)})


__all__ = ["load_registry", "mycanvas", "mycanvas_files_match_metadata"]
