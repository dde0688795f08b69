from dagster import AllPartitionMapping, AssetDep, MetadataValue

from gen4gen.stages import compose_composition

from .factory import stage_asset
from .layouts import layouts
from .partitions import composition_partitions
from .segmentation import segmented_foregrounds


def _describe(run, result):
    return {"images": MetadataValue.int(len(result.manifest["images"])),
            "canvas_size": MetadataValue.int(result.manifest["canvas_size"]),
            "folder": MetadataValue.path(str(run.final_dir))}


composed_images = stage_asset(
    "composed_images", build=lambda run: compose_composition(run.key, run.config, out_dir=run.out_dir),
    describe=_describe, previews=lambda run, result: [e["image"] for e in result.manifest["images"]],
    partitions_def=composition_partitions, backend_name=lambda run, result: "copy_paste",
    deps=[layouts, AssetDep(segmented_foregrounds, partition_mapping=AllPartitionMapping())],
    kinds={"python", "image"},
    description="Objects pasted per layout on the canvas, with the union mask and one mask per object.")
