from __future__ import annotations

from dagster import ConfigurableResource

from .settings import PipelineSettings


class CaptionerResource(ConfigurableResource):
    """Image retelling. Embedded default: a caption told from the layout's boxes."""

    settings: PipelineSettings

    @property
    def name(self) -> str:
        return self.settings.config.caption.backend

    def describe(self, image, objects, background, canvas):
        from gen4gen.captions import LayoutRetellingCaptioner

        return LayoutRetellingCaptioner().describe(image, objects, background, canvas)
