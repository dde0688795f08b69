from dagster import MetadataValue

from gen4gen.stages import caption_composition

from .concepts import concept_images
from .factory import model_placement, stage_asset
from .partitions import composition_partitions
from .recolouring import recoloured_images


def _describe(run, result):
    captions = result.manifest["captions"]
    return {"captions": MetadataValue.int(len(captions)),
            "tokens": MetadataValue.json(result.manifest["tokens"]),
            "example": MetadataValue.json(captions[0] if captions else {}),
            "path": MetadataValue.path(str(run.final_dir))}


captions = stage_asset(
    "captions",
    build=lambda run: caption_composition(run.key, run.registry, run.config, run.resources.captioner.backend,
                                          out_dir=run.out_dir),
    describe=_describe, partitions_def=composition_partitions,
    backend_name=lambda run, result: result.manifest["captioner"],
    deps=[recoloured_images, concept_images], kinds={"python", "json"}, pool="gpu", resources=("captioner",),
    placement=model_placement("captioner"),
    description="Image retelling: a detailed caption per image plus the three prompt strategies.")
