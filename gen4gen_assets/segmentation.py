from dagster import AssetExecutionContext, DataVersion, Failure, MaterializeResult, MetadataValue, asset

from gen4gen.concepts import concept_lookup, load_registry
from gen4gen.stages import segment_concept
from resources import DvcResource, LineageResource, PipelineSettings, SegmentationResource

from .concepts import concept_images
from .metadata import log_problems, stage_metadata
from .partitions import concept_partitions


@asset(group_name="gen4gen", partitions_def=concept_partitions, deps=[concept_images], kinds={"onnx", "image"},
       code_version="1", pool="gpu")
def segmented_foregrounds(context: AssetExecutionContext, settings: PipelineSettings,
                          segmentation: SegmentationResource, lineage: LineageResource,
                          dvc: DvcResource) -> MaterializeResult:
    """An RGBA cut-out and a mask per photo of one concept (IS-Net, iterative rounds)."""
    config = settings.config
    concept = concept_lookup(load_registry(config.paths.registry)).get(context.partition_key)
    if concept is None:
        raise Failure(f"concept {context.partition_key!r} is not in the catalogue; rematerialise concept_images")
    segmenter = segmentation.segmenter
    result = segment_concept(concept, segmenter, config.paths.segmented(concept.key), config)
    log_problems(context, result)
    if not result.manifest["photos"]:
        raise Failure(f"no photo of concept {concept.key!r} could be segmented",
                      metadata={"problems": MetadataValue.json(result.problems)})
    out_dir = config.paths.segmented(concept.key)
    lineage_metadata = lineage.record(context, result.lineage, params=config.segmentation.model_dump(),
                                      backend=segmenter.identity(), data_version=concept.data_version)
    return MaterializeResult(
        data_version=DataVersion(concept.data_version),
        metadata=stage_metadata(
            result, segmenter.identity(), [out_dir / e["cutout"] for e in result.manifest["photos"][:8]],
            preview_cache=config.paths.build / ".previews",
            photos=MetadataValue.int(len(result.manifest["photos"])),
            fallback=MetadataValue.bool(bool(segmenter.fallback_warning)),
            rounds_run=MetadataValue.json([e["rounds_run"] for e in result.manifest["photos"]]),
            folder=MetadataValue.path(str(out_dir)),
            **lineage_metadata,
            **dvc.commit(context, result.lineage),  # DVC version (issue 4)
        ),
    )
