from __future__ import annotations

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from gen4gen.config import PROJECT_ROOT

from .settings import PipelineSettings


class SegmentationResource(ConfigurableResource):
    """Foreground segmentation. Embedded default: IS-Net (ONNX), GrabCut when weights are absent."""

    settings: PipelineSettings
    _segmenter = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        from gen4gen.segmentation import Segmenter

        self._segmenter = Segmenter(self.settings.config.segmentation, PROJECT_ROOT)
        if self._segmenter.fallback_warning and context.log:
            context.log.warning(self._segmenter.fallback_warning)

    @property
    def segmenter(self):
        if self._segmenter is None:  # used outside a Dagster run (tests, benchmarks)
            from gen4gen.segmentation import Segmenter

            self._segmenter = Segmenter(self.settings.config.segmentation, PROJECT_ROOT)
        return self._segmenter
