"""The `settings` resource: which configuration a run uses, validated when the run starts, and
which paths a run may not choose for itself (README: "Security")."""
from __future__ import annotations

import os
from functools import cached_property

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from gen4gen.config import ConfigError, PipelineConfig, ProjectPaths, load_config

# Set to 1 in the code location's environment to let a run choose other paths (README: "Security").
ALLOW_RUN_PATHS_ENV = "GEN4GEN_ALLOW_RUN_PATHS"
# Fields that make a run read or write elsewhere on the machine: another configuration file can
# name any data folder, weights file or remote-code model.
RUN_PATH_FIELDS = ("config_file", "data_dir")


def run_paths_allowed() -> bool:
    return os.environ.get(ALLOW_RUN_PATHS_ENV, "").strip().lower() in ("1", "true", "yes")


class PipelineSettings(ConfigurableResource):
    """Points at the configuration; the values themselves live in ``PipelineConfig``.

    ``profile`` may be set in the Dagster launchpad to run the same graph with another set of
    model backends. ``config_file`` and ``data_dir`` are those the code location was built with
    (``build_definitions``); a run that sets others is refused unless the code location's
    environment has ``GEN4GEN_ALLOW_RUN_PATHS=1``, since the UI has no authentication.
    """

    config_file: str | None = None
    data_dir: str | None = None
    # A profile name ("embedded", "paper"); overrides GEN4GEN_PROFILE and the file's `profile`.
    profile: str | None = None

    # Values the code location was built with, for path fields the run's configuration left out:
    # Dagster resets a field missing from a run's partial configuration to the class default.
    _location_paths: dict = PrivateAttr(default_factory=dict)

    @cached_property
    def config(self) -> PipelineConfig:
        """The configuration; raises ``ConfigError`` (one line per problem) when it is invalid."""
        config_file, data_dir = (self._location_paths.get(name, getattr(self, name)) for name in RUN_PATH_FIELDS)
        overrides = {"data_dir": data_dir} if data_dir else {}
        if self.profile:
            overrides["profile"] = self.profile
        return load_config(config_file, **overrides)

    @property
    def paths(self) -> ProjectPaths:
        return self.config.paths

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self.check_paths_set_for_the_run(context)
        # Validated before any step works: a bad value fails the run at once with the same lines
        # as the command line prints, not after the stages before the one that reads it.
        self.config

    def check_paths_set_for_the_run(self, context: InitResourceContext) -> None:
        """Paths a run sets that differ from the code location's are refused unless the switch is on.

        Dagster hands this resource the run's configuration merged over the values it was built
        with; those built values are the defaults of its configuration schema.
        """
        built = code_location_values(context)
        if built is None:  # a copy nested in another resource: it always keeps the built values
            return
        given = run_settings_config(context)
        problems = []
        for name in RUN_PATH_FIELDS:
            if getattr(self, name) == built.get(name):
                continue
            if name not in given:
                self._location_paths[name] = built.get(name)
            elif not run_paths_allowed():
                problems.append(f"run configuration: resources.settings.config.{name}: refused ({given[name]!r}; the "
                                f"code location uses {built.get(name)!r}): a run may not choose its own paths "
                                f"unless {ALLOW_RUN_PATHS_ENV}=1 is set where the code location runs "
                                f"(README: \"Security\")")
        if problems:
            raise ConfigError(problems)


def run_settings_config(context: InitResourceContext) -> dict:
    """What the run's own configuration (launchpad, run request) sets for ``settings``."""
    run = getattr(context, "run", None)
    resources_config = ((run.run_config or {}) if run is not None else {}).get("resources") or {}
    return (resources_config.get("settings") or {}).get("config") or {}


def code_location_values(context: InitResourceContext) -> dict | None:
    """The values the resource was built with, or None when its definition has no such fields."""
    definition = getattr(context, "resource_def", None)
    if definition is None or definition.config_schema is None:
        return None
    field = definition.config_schema.as_field()
    fields = getattr(field.config_type, "fields", None) or {}
    if not all(name in fields for name in RUN_PATH_FIELDS):
        return None
    return dict(field.default_value) if field.default_provided and isinstance(field.default_value, dict) else {}
