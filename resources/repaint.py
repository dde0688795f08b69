from __future__ import annotations

from gen4gen.config import PROJECT_ROOT

from .model import ModelResource


class RepaintResource(ModelResource):
    """Background repainting (a :class:`gen4gen.backends.Repainter`), chosen by ``recolour.backend``.

    ``scene_bank`` (embedded): scene-bank photo, feathering, LAB harmonisation. ``sdxl`` (paper
    profile): SDXL inpainting + refiner, loaded here once per process.

    ``backend.repaint`` takes a batch of requests (image, mask, prompt, negative prompt, seed,
    scene), the shape both backends need.
    """

    def build_backend(self):
        from gen4gen.scenes import discover_scene_bank

        config = self.settings.config
        scenes = discover_scene_bank(config.paths.backgrounds, config.input.image_extensions)
        if config.recolour.backend == "sdxl":
            from gen4gen.models.sdxl_repaint import SdxlRepainter

            return SdxlRepainter(config.recolour, scenes, PROJECT_ROOT).load()
        from gen4gen.recolour import SceneBankRepainter

        return SceneBankRepainter(scenes, config.recolour)
