from __future__ import annotations

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from .settings import PipelineSettings


class RepaintResource(ConfigurableResource):
    """Background repainting. Embedded default: scene-bank photo, feathering, LAB harmonisation.

    ``repaint`` takes a batch of requests (image, mask, prompt, negative prompt, seed, scene),
    the shape an SDXL inpainting backend needs as well.
    """

    settings: PipelineSettings
    _backend = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._backend = None

    def backend(self):
        if self._backend is None:
            from gen4gen.recolour import SceneBankRepainter
            from gen4gen.scenes import discover_scene_bank

            config = self.settings.config
            scenes = discover_scene_bank(config.paths.backgrounds, config.input.image_extensions)
            self._backend = SceneBankRepainter(scenes, config.recolour)
        return self._backend

    def repaint(self, requests):
        return self.backend().repaint(requests)
