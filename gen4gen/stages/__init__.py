"""One function per pipeline stage: read the upstream files, compute, write this stage's files."""
from .captions import caption_composition
from .common import LINEAGE_EXPORT_FILES, MANIFEST, PngWriter, StageInputError, StageResult
from .composition import compose_composition
from .export import BuiltImage, built_images, export_mycanvas
from .layouts import plan_composition
from .recolouring import recolour_composition
from .segmentation import segment_concept

__all__ = ["LINEAGE_EXPORT_FILES", "MANIFEST", "BuiltImage", "PngWriter", "StageInputError", "StageResult",
           "built_images", "caption_composition", "compose_composition", "export_mycanvas", "plan_composition",
           "recolour_composition", "segment_concept"]
