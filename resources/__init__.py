"""Dagster resources: the pipeline settings and one resource per model stage.

Each model resource reads its parameters from the pipeline configuration (one source of
truth) and builds its backend in ``setup_for_execution``, once per step process.
"""
from .captioner import CaptionerResource
from .clip import ClipResource, DetectorResource, DinoResource
from .dvc import DvcResource
from .layout import LayoutPlannerResource
from .lineage import LineageResource
from .repaint import RepaintResource
from .segmentation import SegmentationResource
from .settings import PipelineSettings

__all__ = ["CaptionerResource", "ClipResource", "DetectorResource", "DinoResource", "DvcResource", "LayoutPlannerResource",
           "LineageResource", "PipelineSettings", "RepaintResource", "SegmentationResource"]
