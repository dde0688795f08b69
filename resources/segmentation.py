from __future__ import annotations

from dagster import InitResourceContext

from gen4gen.config import PROJECT_ROOT

from .model import ModelResource


class SegmentationResource(ModelResource):
    """Foreground segmentation (a :class:`gen4gen.backends.Segmenter`), chosen by ``segmentation.backend``.

    ``isnet_onnx`` (embedded): IS-Net on onnxruntime, GrabCut when the weights are absent; the
    onnxruntime session is shared by the resources of one process and freed at teardown.
    ``isnet_torch`` / ``birefnet`` (paper profile): PyTorch models loaded here, once per process;
    missing weights fail the step at once with a message naming them.
    """

    def build_backend(self):
        config = self.settings.config.segmentation
        if self.settings.config.ray.enabled and config.backend != "isnet_onnx":  # GPU models: in Ray workers
            from gen4gen.pooled_backends import pooled_segmenter

            return pooled_segmenter(self.settings.config, PROJECT_ROOT)
        if config.backend == "isnet_onnx":
            from gen4gen.segmentation import IsNetOnnxSegmenter

            return IsNetOnnxSegmenter(config, PROJECT_ROOT)
        from gen4gen.models.segmentation_torch import TorchSegmenter

        return TorchSegmenter(config, PROJECT_ROOT).load()

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._backend = None
        backend = self.backend
        if context.log:
            if backend.fallback_warning:
                context.log.warning(backend.fallback_warning)
            elif backend.name != "isnet_onnx":
                context.log.info(f"segmentation: {backend.identity()}")
