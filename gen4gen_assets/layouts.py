from dagster import AllPartitionMapping, AssetDep, MetadataValue

from gen4gen.scenes import discover_scene_bank
from gen4gen.stages import plan_composition

from .concepts import concept_images
from .factory import stage_asset
from .partitions import composition_partitions
from .segmentation import segmented_foregrounds


def _plan(run):
    config = run.config
    scenes = discover_scene_bank(config.paths.backgrounds, config.input.image_extensions)
    return plan_composition(run.key, run.registry, config, run.resources.layout_planner.backend, scenes,
                            out_dir=run.out_dir)


def _describe(run, result):
    images = result.manifest["images"]
    return {"layouts": MetadataValue.int(len(images)),
            "scenes": MetadataValue.json(sorted({i["scene"] for i in images})),
            "first_layout": MetadataValue.json(images[0] if images else {}),
            "path": MetadataValue.path(str(run.final_dir))}


layouts = stage_asset(
    "layouts", build=_plan, describe=_describe, partitions_def=composition_partitions,
    backend_name=lambda run, result: result.manifest["planner"],
    # A composition reads only its own concepts' cut-outs; Dagster has no built-in mapping from
    # "cat+dog" to {"cat", "dog"}, so the dependency is declared on all concept partitions.
    deps=[concept_images, AssetDep(segmented_foregrounds, partition_mapping=AllPartitionMapping())],
    kinds={"python", "json"}, resources=("layout_planner",),
    description="N layouts per composition: boxes at real-world scale, size ratios, scene, prompt, seed.")
