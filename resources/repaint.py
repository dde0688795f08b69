from __future__ import annotations

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from gen4gen.config import PROJECT_ROOT

from .settings import PipelineSettings


class RepaintResource(ConfigurableResource):
    """Background repainting, chosen by ``recolour.backend``.

    ``scene_bank`` (embedded): scene-bank photo, feathering, LAB harmonisation. ``sdxl`` (paper
    profile): SDXL inpainting + refiner, loaded here once per process.

    ``repaint`` takes a batch of requests (image, mask, prompt, negative prompt, seed, scene),
    the shape both backends need.
    """

    settings: PipelineSettings
    _backend = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._backend = None
        if self.settings.config.recolour.backend != "scene_bank":
            backend = self.backend()  # load the models now: missing weights fail here, named
            if context.log:
                context.log.info(f"repaint: {backend.identity()}")

    def backend(self):
        if self._backend is None:
            from gen4gen.scenes import discover_scene_bank

            config = self.settings.config
            scenes = discover_scene_bank(config.paths.backgrounds, config.input.image_extensions)
            if config.recolour.backend == "sdxl":
                from gen4gen.models.sdxl_repaint import SdxlRepainter

                self._backend = SdxlRepainter(config.recolour, scenes, PROJECT_ROOT).load()
            else:
                from gen4gen.recolour import SceneBankRepainter

                self._backend = SceneBankRepainter(scenes, config.recolour)
        return self._backend

    def repaint(self, requests):
        return self.backend().repaint(requests)
