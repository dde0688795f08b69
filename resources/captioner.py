from __future__ import annotations

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from gen4gen.config import PROJECT_ROOT

from .settings import PipelineSettings


class CaptionerResource(ConfigurableResource):
    """Image retelling, chosen by ``caption.backend``.

    ``layout_retelling`` (embedded): a caption told from the layout's boxes. ``vlm`` (paper
    profile): an image-text-to-text model through transformers, loaded here once per process.
    ``vlm_api``: an OpenAI-compatible vision endpoint.
    """

    settings: PipelineSettings
    _backend = PrivateAttr(default=None)

    @property
    def name(self) -> str:
        return self.settings.config.caption.backend

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._backend = None
        if self.name != "layout_retelling":
            backend = self.backend()
            if context.log:
                context.log.info(f"captioner: {backend.identity()}")

    def backend(self):
        if self._backend is None:
            config = self.settings.config.caption
            if config.backend == "vlm":
                from gen4gen.models.vlm_caption import TransformersCaptioner

                self._backend = TransformersCaptioner(config, PROJECT_ROOT).load()
            elif config.backend == "vlm_api":
                from gen4gen.models.vlm_caption import EndpointCaptioner

                self._backend = EndpointCaptioner(config)
            else:
                from gen4gen.captions import LayoutRetellingCaptioner

                self._backend = LayoutRetellingCaptioner()
        return self._backend

    def describe(self, image, objects, background, canvas):
        return self.backend().describe(image, objects, background, canvas)
