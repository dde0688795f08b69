from __future__ import annotations

from dagster import ConfigurableResource

from .settings import PipelineSettings


class LayoutPlannerResource(ConfigurableResource):
    """Object layouts. Embedded default: rule-based planner with real-world size priors."""

    settings: PipelineSettings

    @property
    def name(self) -> str:
        return self.settings.config.layout.backend

    def plan(self, composition, objects, n, seed, canvas_size, scenes, first_index=0):
        from gen4gen.layout import plan_layouts

        return plan_layouts(composition, objects, n, seed, canvas_size, self.settings.config.layout, scenes,
                            first_index)
