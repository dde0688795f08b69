from dagster import MetadataValue

from gen4gen.concepts import concept_lookup
from gen4gen.stages import StageInputError, segment_concept

from .concepts import concept_images
from .factory import model_placement, stage_asset
from .partitions import concept_partitions


def _segment(run):
    concept = concept_lookup(run.registry).get(run.key)
    if concept is None:
        raise StageInputError(f"concept {run.key!r} is not in the catalogue; rematerialise concept_images")
    return segment_concept(concept, run.resources.segmentation.backend, run.out_dir, run.config)


def _describe(run, result):
    photos = result.manifest["photos"]
    return {
        "photos": MetadataValue.int(len(photos)),
        "fallback": MetadataValue.bool(bool(run.resources.segmentation.backend.fallback_warning)),
        "rounds_run": MetadataValue.json([e["rounds_run"] for e in photos]),
        "folder": MetadataValue.path(str(run.final_dir)),
    }


segmented_foregrounds = stage_asset(
    "segmented_foregrounds", build=_segment, describe=_describe, partitions_def=concept_partitions,
    backend_name=lambda run, result: run.resources.segmentation.backend.identity(),
    previews=lambda run, result: [e["cutout"] for e in result.manifest["photos"]],
    deps=[concept_images], kinds={"onnx", "image"}, pool="gpu", resources=("segmentation",),
    placement=model_placement("segmentation"),
    description="An RGBA cut-out and a mask per photo of one concept (IS-Net, iterative rounds).")
