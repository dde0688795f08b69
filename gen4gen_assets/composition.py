from dagster import AllPartitionMapping, AssetDep, AssetExecutionContext, MaterializeResult, MetadataValue, asset

from gen4gen.stages import compose_composition
from resources import DvcResource, LineageResource, PipelineSettings

from .layouts import layouts
from .metadata import stage_metadata
from .partitions import composition_partitions
from .segmentation import segmented_foregrounds


@asset(group_name="gen4gen", partitions_def=composition_partitions,
       deps=[layouts, AssetDep(segmented_foregrounds, partition_mapping=AllPartitionMapping())],
       kinds={"python", "image"}, code_version="1")
def composed_images(context: AssetExecutionContext, settings: PipelineSettings,
                    lineage: LineageResource, dvc: DvcResource) -> MaterializeResult:
    """Objects pasted per layout on the canvas, with the union mask and one mask per object."""
    config = settings.config
    result = compose_composition(context.partition_key, config)
    out_dir = config.paths.composed(context.partition_key)
    images = result.manifest["images"]
    return MaterializeResult(metadata=stage_metadata(
        result, "copy_paste",
        [out_dir / e["image"] for e in images[:8]], preview_cache=config.paths.build / ".previews",
        images=MetadataValue.int(len(images)),
        canvas_size=MetadataValue.int(result.manifest["canvas_size"]),
        folder=MetadataValue.path(str(out_dir)),
        **lineage.record(context, result.lineage,
                         params={"composition": config.composition.model_dump(), "seed": config.seed},
                         backend="copy_paste"),
        **dvc.commit(context, result.lineage),  # DVC version (issue 4)
    ))
