from dagster import MetadataValue

from gen4gen.stages import recolour_composition

from .composition import composed_images
from .factory import model_placement, stage_asset
from .partitions import composition_partitions


def _describe(run, result):
    return {"images": MetadataValue.int(len(result.manifest["images"])),
            "harmonisation": MetadataValue.text(run.config.recolour.harmonisation),
            "folder": MetadataValue.path(str(run.final_dir))}


recoloured_images = stage_asset(
    "recoloured_images",
    build=lambda run: recolour_composition(run.key, run.config, run.resources.repaint.backend, out_dir=run.out_dir),
    describe=_describe, previews=lambda run, result: [e["image"] for e in result.manifest["images"]], partitions_def=composition_partitions,
    backend_name=lambda run, result: result.manifest["backend"],
    deps=[composed_images], kinds={"python", "image"}, pool="gpu", resources=("repaint",), placement=model_placement("repaint"),
    description="Background filled behind the objects, mask feathered, object colours harmonised.")
