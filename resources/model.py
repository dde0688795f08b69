"""What every model resource shares: ``.backend``, ``.backend_name`` and the backend's lifetime."""
from __future__ import annotations

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from .settings import PipelineSettings


class ModelResource(ConfigurableResource):
    """One model stage's backend, chosen by that stage's section of the pipeline configuration.

    ``backend`` is the object implementing the stage's protocol (:mod:`gen4gen.backends`), or
    None for a stage configured off (``backend = "none"``). It is built in
    ``setup_for_execution``, in the step process, so a missing model fails the step at once with a
    message naming the weights; outside a Dagster run (tests, benchmarks) it is built on first
    use. ``teardown_after_execution`` closes it, so the model's memory is freed when the step
    ends rather than whenever the garbage collector reaches the resource.
    """

    settings: PipelineSettings
    _backend = PrivateAttr(default=None)

    def build_backend(self):
        """The configured backend, or None when the stage runs without a model."""
        raise NotImplementedError

    @property
    def backend(self):
        if self._backend is None:
            self._backend = self.build_backend()
        return self._backend

    @property
    def backend_name(self) -> str:
        backend = self.backend
        return backend.name if backend is not None else "none"

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._backend = None
        config = self.settings.config
        if config.ray.enabled and context.dagster_run is not None:
            from gen4gen.pooled_backends import set_run

            # A backfill's runs share one set of Ray workers; any other run has its own. Placement
            # goes to build/: reports/ is the evaluation report's own output, replaced as a whole.
            run = context.dagster_run
            set_run(run.tags.get("dagster/backfill") or run.run_id, config.paths.build / "placement.json")
        backend = self.backend
        if backend is not None and context.log:
            context.log.info(f"{type(self).__name__}: {backend.identity()}")

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        self.close()
        from gen4gen.pooled_backends import leave_run

        leave_run()  # a step process of a UI launch: hand its run's workers back now, not at exit

    def close(self) -> None:
        """Close the backend and drop it; the next use of ``backend`` builds a new one."""
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
