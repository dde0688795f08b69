"""CLIP, the open-vocabulary detector and DINO: screening of MyCanvas and the evaluation report.

Each resource reads its section of the pipeline configuration (``[clip]``, ``[detector]``,
``[dino]``). ``backend`` is None when the section says ``backend = "none"``; otherwise the
model is loaded in ``setup_for_execution`` (so a missing model fails the step at once, with a
message naming the weights) and kept for the rest of the process.
"""
from __future__ import annotations

from typing import ClassVar

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from gen4gen.config import PROJECT_ROOT

from .settings import PipelineSettings


class _ModelResource(ConfigurableResource):
    settings: PipelineSettings
    _backend = PrivateAttr(default=None)
    _section: ClassVar[str] = ""  # configuration section and loader name

    def _load(self):
        from gen4gen.models import clip

        config = getattr(self.settings.config, self._section)
        return getattr(clip, f"load_{self._section}")(config, PROJECT_ROOT)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._backend = None
        if self.configured:
            self._backend = self._load()
            if context.log:
                context.log.info(f"{self._section}: {self._backend.identity()}")

    @property
    def configured(self) -> bool:
        return getattr(self.settings.config, self._section).backend != "none"

    @property
    def backend(self):
        """The loaded model, or None when this section's backend is "none"."""
        if self._backend is None and self.configured:  # used outside a Dagster run (tests, notebooks)
            self._backend = self._load()
        return self._backend


class ClipResource(_ModelResource):
    """CLIP embeddings (open_clip): caption-image scores, concept-crop similarity, CP-CLIP, TI-CLIP."""

    _section: ClassVar[str] = "clip"


class DetectorResource(_ModelResource):
    """Open-vocabulary detector (OWL-ViT / OWLv2): finds each concept by its class name."""

    _section: ClassVar[str] = "detector"


class DinoResource(_ModelResource):
    """DINO image embeddings for the optional DINO image similarity."""

    _section: ClassVar[str] = "dino"
