from __future__ import annotations

from gen4gen.config import PROJECT_ROOT

from .model import ModelResource


class CaptionerResource(ModelResource):
    """Image retelling (a :class:`gen4gen.backends.Captioner`), chosen by ``caption.backend``.

    ``layout_retelling`` (embedded): a caption told from the layout's boxes. ``vlm`` (paper
    profile): an image-text-to-text model through transformers, loaded here once per process.
    ``vlm_api``: an OpenAI-compatible vision endpoint.
    """

    def build_backend(self):
        config = self.settings.config.caption
        if config.backend == "vlm" and self.settings.config.ray.enabled:  # in the composition's Ray workers
            from gen4gen.pooled_backends import pooled_captioner

            return pooled_captioner(self.settings.config, PROJECT_ROOT)
        if config.backend == "vlm":
            from gen4gen.models.vlm_caption import TransformersCaptioner

            return TransformersCaptioner(config, PROJECT_ROOT).load()
        if config.backend == "vlm_api":
            from gen4gen.models.vlm_caption import EndpointCaptioner

            return EndpointCaptioner(config)
        from gen4gen.captions import LayoutRetellingCaptioner

        return LayoutRetellingCaptioner()
