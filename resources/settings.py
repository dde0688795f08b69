from __future__ import annotations

from functools import cached_property

from dagster import ConfigurableResource

from gen4gen.config import PipelineConfig, ProjectPaths, load_config


class PipelineSettings(ConfigurableResource):
    """Points at the configuration; the values themselves live in ``PipelineConfig``.

    ``config_file`` and ``data_dir`` may be set in the Dagster launchpad to run the same
    graph over another dataset or configuration.
    """

    config_file: str | None = None
    data_dir: str | None = None

    @cached_property
    def config(self) -> PipelineConfig:
        overrides = {"data_dir": self.data_dir} if self.data_dir else {}
        return load_config(self.config_file, **overrides)

    @property
    def paths(self) -> ProjectPaths:
        return self.config.paths
