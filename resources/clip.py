"""CLIP, the open-vocabulary detector and DINO: screening of MyCanvas and the evaluation report.

Each resource reads its section of the pipeline configuration (``[clip]``, ``[detector]``,
``[dino]``). ``backend`` is None when the section says ``backend = "none"``; otherwise the
model is loaded in ``setup_for_execution`` (so a missing model fails the step at once, with a
message naming the weights) and kept for the rest of the process.
"""
from __future__ import annotations

from typing import ClassVar

from gen4gen.config import PROJECT_ROOT

from .model import ModelResource


class _ClipFamilyResource(ModelResource):
    _section: ClassVar[str] = ""  # configuration section and loader name

    def build_backend(self):
        from gen4gen.models import clip

        config = self.settings.config
        if config.ray.enabled and self.configured:  # the model lives in the run's Ray workers
            from gen4gen.pooled_backends import pooled_model

            return pooled_model(config, self._section, PROJECT_ROOT)
        return getattr(clip, f"load_{self._section}")(getattr(config, self._section), PROJECT_ROOT)

    @property
    def configured(self) -> bool:
        return getattr(self.settings.config, self._section).backend != "none"


class ClipResource(_ClipFamilyResource):
    """CLIP embeddings (a :class:`gen4gen.backends.ClipEmbedder`): caption-image scores,
    concept-crop similarity, CP-CLIP, TI-CLIP."""

    _section: ClassVar[str] = "clip"


class DetectorResource(_ClipFamilyResource):
    """Open-vocabulary detector (a :class:`gen4gen.backends.Detector`, OWL-ViT / OWLv2): finds
    each concept by its class name."""

    _section: ClassVar[str] = "detector"


class DinoResource(_ClipFamilyResource):
    """DINO image embeddings (a :class:`gen4gen.backends.ImageEmbedder`) for the optional DINO
    image similarity."""

    _section: ClassVar[str] = "dino"
