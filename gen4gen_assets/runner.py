"""Materialise the graph from the command line, partition by partition, in dependency order.

Uses the same Definitions (assets, resources) as the UI and records every run in the Dagster
instance, so the UI shows the history of what the command built. What to build comes from
``gen4gen.incremental.plan_updates``; failures are recorded per partition and retried by the
next call, up to ``[regeneration] max_attempts``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from .factory import force_tags
from .liveness import RunHeartbeat, clean_dead_runs, runs_in_progress
from .pending import commit_pending_dvc

# Warnings and errors on the console; the full event log is in the Dagster instance (UI).
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class RunSummary:
    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # held back (backoff, given up, another run)
    cleaned: list[str] = field(default_factory=list)  # dead runs and killed writers cleaned up
    seconds: float = 0.0
    steps: int = 0  # steps actually executed (asset steps and checks)


def _failure_message(result) -> str:
    """The user's error of the first failed step; else why the run failed (a resource that could not start)."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            # The user's exception is the cause of Dagster's step-execution wrapper.
            while error.cause is not None:
                error = error.cause
            return error.message.strip()
    for event in result.all_events:
        if event.is_failure or event.event_type_value in ("RESOURCE_INIT_FAILURE", "RUN_FAILURE"):
            error = getattr(event.event_specific_data, "error", None)
            while error is not None and error.cause is not None:
                error = error.cause
            return (error.message if error is not None else event.message or "run failed").strip()
    return "run failed"


def _run_job(defs, instance, summary: RunSummary, log, force: bool, job_name: str, label: str,
             partition_key: str | None = None) -> bool:
    """One Dagster run of ``job_name`` in this process (heartbeat for dead-run detection), counted in ``summary``."""
    began = time.perf_counter()
    with RunHeartbeat(instance) as heartbeat:
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, partition_key=partition_key, raise_on_error=False, run_config=QUIET_RUN_CONFIG,
            tags={**force_tags(force), **heartbeat.tags})
    summary.steps += sum(1 for event in result.all_events if event.is_step_success)
    if result.success:
        summary.succeeded.append(label)
        log(f"  ok    {label} ({time.perf_counter() - began:.1f} s)")
    else:
        summary.failed[label] = _failure_message(result)
        log(f"  FAIL  {label}: {summary.failed[label]}")
    return result.success


def materialize_all(defs, instance, log=print, incremental: bool = True, verify: bool = False,
                    honour_backoff: bool = False) -> RunSummary:
    """Catalogue, then the concept partitions, the composition partitions, then the dataset.

    ``incremental=False`` rebuilds every partition. A failing partition is recorded and the
    others go on; the dataset exports every composition whose chain is current. Ray workers
    (``[ray] enabled``) serve every run of this call and are stopped at its end; where they ran
    and what they served goes to ``build/placement.json``.
    """
    from gen4gen.pooled_backends import LOCAL_RAY_ENV, close_shared_pools

    placements: list[dict] = []
    previous = os.environ.get(LOCAL_RAY_ENV)
    os.environ[LOCAL_RAY_ENV] = "1"  # every step runs in this process: one local Ray serves them all
    try:
        return _materialize_all(defs, instance, log, incremental, verify, honour_backoff, placements)
    finally:
        if previous is None:
            os.environ.pop(LOCAL_RAY_ENV, None)
        placements += close_shared_pools()
        if placements:
            _write_placement(defs.resources["settings"].config, placements, log)


def _write_placement(config, placements: list[dict], log) -> None:
    import json

    from gen4gen.io import atomic_write_text

    path = config.paths.build / "placement.json"
    atomic_write_text(path, json.dumps({"pools": placements}, indent=1, sort_keys=True))
    for pool in placements:
        workers = pool["workers"]
        nodes = {w["hostname"] + ":" + w["node_id"][:8] for w in workers}
        log(f"Ray: {len(workers)} {pool['backend']} workers on {len(nodes)} node(s), "
            f"{sum(w['batches_served'] for w in workers)} batches; placement in {path}")


def _materialize_all(defs, instance, log, incremental, verify, honour_backoff, placements) -> RunSummary:
    from gen4gen.concepts import load_registry
    from gen4gen.incremental import plan_updates
    from gen4gen.pooled_backends import close_shared_pools

    summary = RunSummary()
    start = time.perf_counter()
    config = defs.resources["settings"].config
    summary.cleaned += clean_dead_runs(instance, log)
    summary.cleaned += commit_pending_dvc(config, log)
    force = not incremental

    def run(job_name: str, label: str, partition_key: str | None = None) -> bool:
        if partition_key is not None and runs_in_progress(instance, job_name, partition_key):
            summary.skipped[label] = "another run is building it"
            log(f"  skip  {label}: another run is building it")
            return False
        return _run_job(defs, instance, summary, log, force, job_name, label, partition_key)

    log("cataloguing concepts")
    if not run("catalogue_concepts", "concept_images"):
        summary.seconds = time.perf_counter() - start
        return summary
    registry = load_registry(config.paths.registry)
    plan = plan_updates(config, registry, verify=verify, honour_backoff=honour_backoff, force=force)
    for step in plan.steps:
        log(f"  plan  {step.line()}")
    for step in plan.held_back:
        summary.skipped[step.label] = "; ".join(step.reasons)
    log(f"segmenting {len(plan.concepts)} concepts")
    failed_concepts = set()
    for key in plan.concepts:
        if not run("segment_concepts", f"segmented_foregrounds[{key}]", key):
            failed_concepts.add(key)
    # Segmentation's Ray workers (if any) hold GPUs the composition steps' models need next.
    placements += close_shared_pools()
    held = {s.key for s in plan.held_back if s.stage == "segmented_foregrounds"} | failed_concepts
    compositions = [c for c in plan.compositions if not held.intersection(c.split("+"))]
    for key in sorted(set(plan.compositions) - set(compositions)):
        summary.skipped[f"compositions[{key}]"] = "a concept it uses failed or is held back"
    log(f"building {len(compositions)} compositions")
    for key in compositions:
        run("build_compositions", f"compositions[{key}]", key)
    # Re-plan: what failed above is left out of the export, which never waits for it.
    plan = plan_updates(config, load_registry(config.paths.registry), honour_backoff=True, force=force)
    if plan.publish:
        # The repainting workers hold the GPUs; screening's small models need a share of them.
        placements += close_shared_pools()
        log("publishing the dataset")
        run("publish_dataset", "mycanvas + evaluation_report")
    else:
        log("dataset is up to date")
    summary.seconds = time.perf_counter() - start
    return summary


def personalise_all(defs, instance, runs: list[str], force: bool = False, log=print) -> RunSummary:
    """Train and sample each named training run (``personalise`` job, one run per partition), then
    rebuild the report's comparison; the partitions are registered first. A current model or sample
    set is left as it is unless ``force``."""
    from gen4gen.pooled_backends import LOCAL_RAY_ENV, close_shared_pools

    summary = RunSummary()
    start = time.perf_counter()
    summary.cleaned += clean_dead_runs(instance, log)
    known = set(instance.get_dynamic_partitions("training_runs"))
    instance.add_dynamic_partitions("training_runs", [name for name in runs if name not in known])

    def run(job_name: str, label: str, partition_key: str | None = None) -> bool:
        return _run_job(defs, instance, summary, log, force, job_name, label, partition_key)

    previous = os.environ.get(LOCAL_RAY_ENV)
    os.environ[LOCAL_RAY_ENV] = "1"  # every step runs in this process: one local Ray serves them all
    try:
        for name in runs:
            log(f"training run {name}: model, then samples")
            run("personalise", f"personalised_models + generated_images[{name}]", name)
        close_shared_pools()  # the trainers' GPUs, for the scoring models
        log("comparing the models in the report")
        run("evaluation_report_only", "evaluation_report")
    finally:
        if previous is None:
            os.environ.pop(LOCAL_RAY_ENV, None)
        close_shared_pools()
    summary.seconds = time.perf_counter() - start
    return summary
