from __future__ import annotations

from functools import cached_property

from dagster import ConfigurableResource

from gen4gen.config import PipelineConfig, ProjectPaths, load_config


class PipelineSettings(ConfigurableResource):
    """Points at the configuration; the values themselves live in ``PipelineConfig``.

    ``config_file``, ``data_dir`` and ``profile`` may be set in the Dagster launchpad to run the
    same graph over another dataset, configuration or set of model backends.
    """

    config_file: str | None = None
    data_dir: str | None = None
    # A profile name ("embedded", "paper"); overrides GEN4GEN_PROFILE and the file's `profile`.
    profile: str | None = None

    @cached_property
    def config(self) -> PipelineConfig:
        overrides = {"data_dir": self.data_dir} if self.data_dir else {}
        if self.profile:
            overrides["profile"] = self.profile
        return load_config(self.config_file, **overrides)

    @property
    def paths(self) -> ProjectPaths:
        return self.config.paths
