"""Materialise the whole graph from the command line, stage by stage, partition by partition.

Uses the same Definitions (assets, resources) as the UI and records every run in the Dagster
instance, so the UI shows the history of what the command built.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


# Warnings and errors on the console; the full event log is in the Dagster instance (UI).
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class RunSummary:
    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    steps: int = 0  # steps actually executed (asset steps and checks)


def _failure_message(result) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            # The user's exception is the cause of Dagster's step-execution wrapper.
            while error.cause is not None:
                error = error.cause
            return error.message.strip()
    return "run failed"


def materialize_all(defs, instance, log=print, concepts: list[str] | None = None,
                    compositions: list[str] | None = None, publish: bool = True,
                    incremental: bool = False) -> RunSummary:
    """Catalogue, then each concept partition, each composition partition, then the dataset.

    ``incremental``: only the partitions whose outputs are missing or were built from other
    inputs (``gen4gen.incremental.plan_updates``), and the dataset only if anything changed.
    A failing partition is reported and the others go on; the export includes what was built.
    """
    from gen4gen.concepts import load_registry
    from gen4gen.incremental import plan_updates
    from gen4gen_assets.partitions import composition_partitions

    summary = RunSummary()
    start = time.perf_counter()

    def run(job_name: str, label: str, partition_key: str | None = None) -> bool:
        job = defs.resolve_job_def(job_name)
        began = time.perf_counter()
        result = job.execute_in_process(instance=instance, partition_key=partition_key, raise_on_error=False,
                                        run_config=QUIET_RUN_CONFIG)
        summary.steps += sum(1 for event in result.all_events if event.is_step_success)
        if result.success:
            summary.succeeded.append(label)
            log(f"  ok    {label} ({time.perf_counter() - began:.1f} s)")
        else:
            summary.failed[label] = _failure_message(result)
            log(f"  FAIL  {label}: {summary.failed[label]}")
        return result.success

    log("cataloguing concepts")
    if not run("catalogue_concepts", "concept_images"):
        summary.seconds = time.perf_counter() - start
        return summary
    paths = defs.resources["settings"].paths
    registry = load_registry(paths.registry)
    plan = plan_updates(registry, paths) if incremental else None
    if concepts is None:
        concepts = plan.concepts if plan else [c["key"] for c in registry["concepts"]]
    if compositions is None:
        compositions = plan.compositions if plan else [c["key"] for c in registry["compositions"]]
    log(f"segmenting {len(concepts)} concepts")
    for key in concepts:
        run("segment_concepts", f"segmented_foregrounds[{key}]", key)
    known = set(instance.get_dynamic_partitions(composition_partitions.name))
    compositions = [c for c in compositions if c in known]
    log(f"building {len(compositions)} compositions")
    for key in compositions:
        run("build_compositions", f"compositions[{key}]", key)
    if publish and (plan is None or plan.publish):
        log("publishing the dataset")
        run("publish_dataset", "mycanvas + evaluation_report")
    elif publish:
        log("dataset is up to date")
    summary.seconds = time.perf_counter() - start
    return summary
