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
        # One place decides which repainter a configuration means: here, and in a Ray worker.
        from gen4gen.pooled_backends import pooled_repainter, repainter_spec

        config = self.settings.config
        if config.ray.enabled:  # the models live in the run's Ray workers, one per GPU
            return pooled_repainter(config, PROJECT_ROOT)
        return repainter_spec(config, PROJECT_ROOT).build()
