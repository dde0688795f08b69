from __future__ import annotations

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from gen4gen.config import PROJECT_ROOT

from .settings import PipelineSettings


class SegmentationResource(ConfigurableResource):
    """Foreground segmentation, chosen by ``segmentation.backend``.

    ``isnet_onnx`` (embedded): IS-Net on onnxruntime, GrabCut when the weights are absent.
    ``isnet_torch`` / ``birefnet`` (paper profile): PyTorch models loaded here, once per process;
    missing weights fail the step at once with a message naming them.
    """

    settings: PipelineSettings
    _segmenter = PrivateAttr(default=None)

    def _build(self):
        config = self.settings.config.segmentation
        if config.backend == "isnet_onnx":
            from gen4gen.segmentation import Segmenter

            return Segmenter(config, PROJECT_ROOT)
        from gen4gen.models.segmentation_torch import TorchSegmenter

        return TorchSegmenter(config, PROJECT_ROOT).load()

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._segmenter = self._build()
        if context.log:
            if self._segmenter.fallback_warning:
                context.log.warning(self._segmenter.fallback_warning)
            elif self._segmenter.backend_name != "isnet_onnx":
                context.log.info(f"segmentation: {self._segmenter.identity()}")

    @property
    def segmenter(self):
        if self._segmenter is None:  # used outside a Dagster run (tests, benchmarks)
            self._segmenter = self._build()
        return self._segmenter
