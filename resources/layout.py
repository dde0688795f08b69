from __future__ import annotations

from .model import ModelResource


class LayoutPlannerResource(ModelResource):
    """Object layouts (a :class:`gen4gen.backends.LayoutPlanner`), chosen by ``layout.backend``.

    ``rule_based`` (embedded): real-world size priors and seeded placement. ``llm`` (paper
    profile): an OpenAI-compatible chat endpoint, validated and retried, with the rule-based
    planner as the recorded fallback.
    """

    def build_backend(self):
        config = self.settings.config.layout
        if config.backend == "llm":
            from gen4gen.models.llm_layout import LlmLayoutPlanner

            return LlmLayoutPlanner(config)
        from gen4gen.layout import RuleBasedLayoutPlanner

        return RuleBasedLayoutPlanner(config)
