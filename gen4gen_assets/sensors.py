"""Watch the concepts folder and the configuration, and bring the dataset up to date.

Level-triggered: every tick plans as `gen4gen materialize` does (``plan_updates``, honouring the
retry backoff) and requests runs for exactly the missing, stale, damaged or retryable
partitions, in dependency order, skipping partitions a live run is already building. Run keys
carry the partition's fingerprint and its failure count, so a tick never requests the same work
twice, and a failed partition is requested again once its backoff has passed.
"""
import hashlib
import os

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from gen4gen.concepts import folder_fingerprint, load_registry
from gen4gen.fingerprints import desired_state
from gen4gen.incremental import plan_updates, read_failure
from resources import PipelineSettings

from .jobs import catalogue_job, compositions_job, publish_job, segment_job
from .liveness import runs_in_progress


# Seconds between the sensor's ticks; GEN4GEN_SENSOR_INTERVAL_S (read when the code location loads) overrides it.
SENSOR_INTERVAL_S = int(os.environ.get("GEN4GEN_SENSOR_INTERVAL_S", "30"))


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@sensor(
    jobs=[catalogue_job, segment_job, compositions_job, publish_job],
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="New, changed or removed concept folders, or changed settings: build only what changed.",
)
def concept_folder_sensor(context: SensorEvaluationContext, settings: PipelineSettings):
    config = settings.config
    paths = config.paths
    fingerprint = folder_fingerprint(paths.concepts, paths.data, paths.class_map_file)
    registry = load_registry(paths.registry)
    if registry.get("fingerprint") != fingerprint:
        return SensorResult(run_requests=[RunRequest(job_name="catalogue_concepts", run_key=f"catalogue:{fingerprint}")],
                            cursor=fingerprint)
    plan = plan_updates(config, registry, honour_backoff=True)
    if plan.empty:
        held = "; ".join(s.line() for s in plan.held_back)
        return SkipReason("the dataset is up to date" + (f" (held back: {held})" if held else ""))
    state = desired_state(config, registry)

    def run_key(stage_name: str, key: str, stages: tuple[str, ...]) -> str:
        parts = []
        for stage in stages:
            desired = state.get(stage, key)
            failure = read_failure(paths, stage, key) or {}
            parts.append(f"{desired.digest if desired else '-'}:{failure.get('attempts', 0)}")
        return f"{stage_name}:{key}:{_short('|'.join(parts))}"

    requests = []
    waiting = set()
    for key in plan.concepts:
        if runs_in_progress(context.instance, "segment_concepts", key):
            waiting.add(key)
            continue
        requests.append(RunRequest(job_name="segment_concepts", partition_key=key,
                                   run_key=run_key("segment", key, ("segmented_foregrounds",))))
        waiting.add(key)
    held = {s.key for s in plan.held_back if s.stage == "segmented_foregrounds"}
    for key in plan.compositions:
        if waiting.union(held).intersection(key.split("+")):
            continue  # its concepts are being segmented (or failing); a later tick requests it
        if runs_in_progress(context.instance, "build_compositions", key):
            continue
        requests.append(RunRequest(job_name="build_compositions", partition_key=key, run_key=run_key(
            "compose", key, ("layouts", "composed_images", "recoloured_images", "captions"))))
    if not plan.concepts and not plan.compositions and plan.publish:
        dataset = desired_state(config, registry)
        requests.append(RunRequest(job_name="publish_dataset",
                                   run_key=f"publish:{_short(dataset.get('mycanvas').digest + fingerprint)}"))
    if not requests:
        return SkipReason("the partitions to build are being built by other runs")
    context.log.info(f"requesting {len(requests)} runs: " + ", ".join(r.run_key for r in requests))
    return SensorResult(run_requests=requests, cursor=fingerprint)
