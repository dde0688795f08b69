"""The code location: assets, checks, jobs and resources. Kept thin on purpose."""
from dagster import Definitions

from resources import (CaptionerResource, ClipResource, DetectorResource, DinoResource, DvcResource,
                       LayoutPlannerResource,
                       LineageResource, PipelineSettings, RepaintResource, SegmentationResource)

from .captioning import captions
from .composition import composed_images
from .concepts import concept_images
from .layouts import layouts
from .mycanvas import mycanvas, mycanvas_files_match_metadata
from .recolouring import recoloured_images
from .report import evaluation_report
from .jobs import catalogue_job, compositions_job, personalise_job, publish_job, report_job, segment_job
from .personalisation import generated_images, personalised_models
from .segmentation import segmented_foregrounds
from .sensors import concept_folder_sensor


def build_resources(config_file: str | None = None, data_dir: str | None = None) -> dict:
    settings = PipelineSettings(config_file=config_file, data_dir=data_dir)
    return {
        "settings": settings,
        "segmentation": SegmentationResource(settings=settings),
        "layout_planner": LayoutPlannerResource(settings=settings),
        "repaint": RepaintResource(settings=settings),
        "captioner": CaptionerResource(settings=settings),
        "lineage": LineageResource(settings=settings),
        # CLIP screening and evaluation metrics: None backends unless configured.
        "clip": ClipResource(settings=settings),
        "detector": DetectorResource(settings=settings),
        "dino": DinoResource(settings=settings),
        # DVC versioning: commits each materialised stage; skipped when DVC is off or absent.
        "dvc": DvcResource(settings=settings),
    }


def build_definitions(config_file: str | None = None, data_dir: str | None = None) -> Definitions:
    return Definitions(
        assets=[concept_images, segmented_foregrounds, layouts, composed_images, recoloured_images, captions,
                mycanvas, evaluation_report, personalised_models, generated_images],
        asset_checks=[mycanvas_files_match_metadata],
        jobs=[catalogue_job, segment_job, compositions_job, publish_job, personalise_job, report_job],
        sensors=[concept_folder_sensor],
        resources=build_resources(config_file, data_dir),
    )


defs = build_definitions()
