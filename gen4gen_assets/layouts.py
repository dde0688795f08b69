from dagster import AllPartitionMapping, AssetDep, AssetExecutionContext, MaterializeResult, MetadataValue, asset

from gen4gen.concepts import load_registry
from gen4gen.scenes import discover_scene_bank
from gen4gen.stages import plan_composition
from resources import DvcResource, LayoutPlannerResource, LineageResource, PipelineSettings

from .concepts import concept_images
from .metadata import stage_metadata
from .partitions import composition_partitions
from .segmentation import segmented_foregrounds


@asset(
    group_name="gen4gen",
    partitions_def=composition_partitions,
    # A composition reads only its own concepts' cut-outs; Dagster has no built-in mapping from
    # "cat+dog" to {"cat", "dog"}, so the dependency is declared on all concept partitions.
    deps=[concept_images, AssetDep(segmented_foregrounds, partition_mapping=AllPartitionMapping())],
    kinds={"python", "json"},
    code_version="1",
)
def layouts(context: AssetExecutionContext, settings: PipelineSettings,
            layout_planner: LayoutPlannerResource, lineage: LineageResource, dvc: DvcResource) -> MaterializeResult:
    """N layouts per composition: boxes at real-world scale, size ratios, scene, prompt, seed."""
    config = settings.config
    scenes = discover_scene_bank(config.paths.backgrounds, config.input.image_extensions)
    result = plan_composition(context.partition_key, load_registry(config.paths.registry), config,
                              layout_planner, scenes)
    images = result.manifest["images"]
    return MaterializeResult(metadata=stage_metadata(
        result, layout_planner.name,
        layouts=MetadataValue.int(len(images)),
        scenes=MetadataValue.json(sorted({i["scene"] for i in images})),
        first_layout=MetadataValue.json(images[0] if images else {}),
        path=MetadataValue.path(str(config.paths.layouts(context.partition_key))),
        **lineage.record(context, result.lineage, params={"layout": config.layout.model_dump(), "seed": config.seed},
                         backend=layout_planner.name),
        **dvc.commit(context, result.lineage),  # DVC version (issue 4)
    ))
