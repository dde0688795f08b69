"""Materialise the whole graph from the command line, stage by stage, partition by partition.

Uses the same Definitions (assets, resources) as the UI and records every run in the Dagster
instance, so the UI shows the history of what the command built.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


# Warnings and errors on the console; the full event log is in the Dagster instance (UI).
_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class RunSummary:
    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


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
                    compositions: list[str] | None = None, publish: bool = True) -> RunSummary:
    """Catalogue, then each concept partition, each composition partition, then the dataset.

    A failing partition is reported and the others go on; the export includes what was built.
    """
    from gen4gen_assets.partitions import composition_partitions, concept_partitions

    summary = RunSummary()
    start = time.perf_counter()

    def run(job_name: str, label: str, partition_key: str | None = None) -> bool:
        job = defs.resolve_job_def(job_name)
        began = time.perf_counter()
        result = job.execute_in_process(instance=instance, partition_key=partition_key, raise_on_error=False,
                                        run_config=_QUIET)
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
    concept_keys = concepts if concepts is not None else instance.get_dynamic_partitions(concept_partitions.name)
    log(f"segmenting {len(concept_keys)} concepts")
    for key in concept_keys:
        run("segment_concepts", f"segmented_foregrounds[{key}]", key)
    if compositions is None:
        from gen4gen.concepts import load_registry

        registry = load_registry(defs.resources["settings"].paths.registry)
        compositions = [c["key"] for c in registry["compositions"]]
    known = set(instance.get_dynamic_partitions(composition_partitions.name))
    compositions = [c for c in compositions if c in known]
    log(f"building {len(compositions)} compositions")
    for key in compositions:
        run("build_compositions", f"compositions[{key}]", key)
    if publish:
        log("publishing the dataset")
        run("publish_dataset", "mycanvas + evaluation_report")
    summary.seconds = time.perf_counter() - start
    return summary
