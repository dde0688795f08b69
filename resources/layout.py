from __future__ import annotations

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from .settings import PipelineSettings


class LayoutPlannerResource(ConfigurableResource):
    """Object layouts, chosen by ``layout.backend``.

    ``rule_based`` (embedded): real-world size priors and seeded placement. ``llm`` (paper
    profile): an OpenAI-compatible chat endpoint, validated and retried, with the rule-based
    planner as the recorded fallback.
    """

    settings: PipelineSettings
    _planner = PrivateAttr(default=None)

    @property
    def name(self) -> str:
        return self.settings.config.layout.backend

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._planner = None
        planner = self.planner
        if planner is not None and context.log:
            context.log.info(f"layout planner: llm at {planner.client.describe()}")

    @property
    def planner(self):
        """The LLM planner, or None for the rule-based one."""
        config = self.settings.config.layout
        if self._planner is None and config.backend == "llm":
            from gen4gen.models.llm_layout import LlmLayoutPlanner

            self._planner = LlmLayoutPlanner(config)
        return self._planner

    def plan(self, composition, objects, n, seed, canvas_size, scenes, first_index=0):
        if self.planner is not None:
            return self.planner.plan(composition, objects, n, seed, canvas_size, scenes, first_index)
        from gen4gen.layout import plan_layouts

        return plan_layouts(composition, objects, n, seed, canvas_size, self.settings.config.layout, scenes,
                            first_index)
