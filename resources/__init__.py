"""Dagster resources: the pipeline settings and one resource per model stage.

Each model resource reads its parameters from the pipeline configuration (one source of
truth), builds its backend in ``setup_for_execution``, once per step process, and closes it
in ``teardown_after_execution``. Every one hands its backend out as ``.backend`` (the object
implementing the stage's protocol in :mod:`gen4gen.backends`) and names it as ``.backend_name``.
"""
from .captioner import CaptionerResource
from .clip import ClipResource, DetectorResource, DinoResource
from .dvc import DvcResource
from .layout import LayoutPlannerResource
from .lineage import LineageResource
from .model import ModelResource
from .repaint import RepaintResource
from .segmentation import SegmentationResource
from .settings import PipelineSettings

__all__ = ["CaptionerResource", "ClipResource", "DetectorResource", "DinoResource", "DvcResource", "LayoutPlannerResource",
           "LineageResource", "ModelResource", "PipelineSettings", "RepaintResource", "SegmentationResource"]
