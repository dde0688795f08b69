"""The code location: assets, checks, jobs and resources. Kept thin on purpose."""
from dagster import Definitions, define_asset_job

from resources import (CaptionerResource, LayoutPlannerResource, PipelineSettings, RepaintResource,
                       SegmentationResource)

from .captioning import captions
from .composition import composed_images
from .concepts import concept_images
from .layouts import layouts
from .mycanvas import mycanvas, mycanvas_files_match_metadata
from .recolouring import recoloured_images
from .report import evaluation_report
from .segmentation import segmented_foregrounds

# Jobs group assets that share a partitioning; `gen4gen materialize` runs them in order.
catalogue_job = define_asset_job("catalogue_concepts", selection=[concept_images])
segment_job = define_asset_job("segment_concepts", selection=[segmented_foregrounds])
compositions_job = define_asset_job("build_compositions", selection=[layouts, composed_images, recoloured_images, captions])
publish_job = define_asset_job("publish_dataset", selection=[mycanvas, evaluation_report])


def build_resources(config_file: str | None = None, data_dir: str | None = None) -> dict:
    settings = PipelineSettings(config_file=config_file, data_dir=data_dir)
    return {
        "settings": settings,
        "segmentation": SegmentationResource(settings=settings),
        "layout_planner": LayoutPlannerResource(settings=settings),
        "repaint": RepaintResource(settings=settings),
        "captioner": CaptionerResource(settings=settings),
    }


def build_definitions(config_file: str | None = None, data_dir: str | None = None) -> Definitions:
    return Definitions(
        assets=[concept_images, segmented_foregrounds, layouts, composed_images, recoloured_images, captions,
                mycanvas, evaluation_report],
        asset_checks=[mycanvas_files_match_metadata],
        jobs=[catalogue_job, segment_job, compositions_job, publish_job],
        resources=build_resources(config_file, data_dir),
    )


defs = build_definitions()
