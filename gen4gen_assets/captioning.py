from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from gen4gen.concepts import load_registry
from gen4gen.stages import caption_composition
from resources import CaptionerResource, DvcResource, LineageResource, PipelineSettings

from .concepts import concept_images
from .metadata import stage_metadata
from .partitions import composition_partitions
from .recolouring import recoloured_images


@asset(group_name="gen4gen", partitions_def=composition_partitions, deps=[recoloured_images, concept_images],
       kinds={"python", "json"}, code_version="1", pool="gpu")
def captions(context: AssetExecutionContext, settings: PipelineSettings,
             captioner: CaptionerResource, lineage: LineageResource, dvc: DvcResource) -> MaterializeResult:
    """Image retelling: a detailed caption per image plus the three prompt strategies."""
    config = settings.config
    result = caption_composition(context.partition_key, load_registry(config.paths.registry), config, captioner)
    first = result.manifest["captions"][0] if result.manifest["captions"] else {}
    return MaterializeResult(metadata=stage_metadata(
        result, captioner.name,
        captions=MetadataValue.int(len(result.manifest["captions"])),
        tokens=MetadataValue.json(result.manifest["tokens"]),
        example=MetadataValue.json(first),
        path=MetadataValue.path(str(config.paths.captions(context.partition_key))),
        **lineage.record(context, result.lineage, params=config.caption.model_dump(), backend=captioner.name),
        **dvc.commit(context, result.lineage),  # DVC version (issue 4)
    ))
