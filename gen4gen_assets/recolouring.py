from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from gen4gen.stages import recolour_composition
from resources import DvcResource, LineageResource, PipelineSettings, RepaintResource

from .composition import composed_images
from .metadata import stage_metadata
from .partitions import composition_partitions


@asset(group_name="gen4gen", partitions_def=composition_partitions, deps=[composed_images],
       kinds={"python", "image"}, code_version="1", pool="gpu")
def recoloured_images(context: AssetExecutionContext, settings: PipelineSettings,
                      repaint: RepaintResource, lineage: LineageResource, dvc: DvcResource) -> MaterializeResult:
    """Background filled behind the objects, mask feathered, object colours harmonised."""
    config = settings.config
    result = recolour_composition(context.partition_key, config, repaint.backend())
    out_dir = config.paths.recoloured(context.partition_key)
    images = result.manifest["images"]
    return MaterializeResult(metadata=stage_metadata(
        result, result.manifest["backend"],
        [out_dir / e["image"] for e in images[:8]], preview_cache=config.paths.build / ".previews",
        images=MetadataValue.int(len(images)),
        harmonisation=MetadataValue.text(config.recolour.harmonisation),
        folder=MetadataValue.path(str(out_dir)),
        **lineage.record(context, result.lineage, params={"recolour": config.recolour.model_dump(), "seed": config.seed},
                         backend=result.manifest["backend"]),
        **dvc.commit(context, result.lineage),  # DVC version (issue 4)
    ))
