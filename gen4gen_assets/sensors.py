"""Watch the concepts folder and bring the dataset up to date, one step at a time.

Level-triggered: every tick compares what is on disk with what was built
(``gen4gen.incremental.plan_updates``) and requests runs for exactly the missing or stale
partitions, in dependency order. Run keys carry the data versions, so a tick never requests
the same work twice.
"""
import hashlib

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from gen4gen.concepts import folder_fingerprint, load_registry, split_composition
from gen4gen.incremental import plan_updates
from resources import PipelineSettings

from .jobs import catalogue_job, compositions_job, publish_job, segment_job


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@sensor(
    jobs=[catalogue_job, segment_job, compositions_job, publish_job],
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="New, changed or removed concept folders: catalogue, then build only what changed.",
)
def concept_folder_sensor(context: SensorEvaluationContext, settings: PipelineSettings):
    paths = settings.paths
    fingerprint = folder_fingerprint(paths.concepts, paths.data, paths.class_map_file)
    registry = load_registry(paths.registry)
    if registry.get("fingerprint") != fingerprint:
        return SensorResult(run_requests=[RunRequest(job_name="catalogue_concepts", run_key=f"catalogue:{fingerprint}")],
                            cursor=fingerprint)
    plan = plan_updates(registry, paths)
    if plan.empty:
        return SkipReason("the dataset is up to date with the concepts folder")
    versions = {c["key"]: c.get("data_version") for c in registry["concepts"]}
    requests = [RunRequest(job_name="segment_concepts", partition_key=key, run_key=f"segment:{key}:{versions[key]}")
                for key in plan.concepts]
    waiting = set(plan.concepts)
    for key in plan.compositions:
        members = split_composition(key)
        if waiting.intersection(members):
            continue  # its concepts are still being segmented; a later tick requests it
        tag = _short("|".join(f"{m}={versions.get(m)}" for m in members))
        requests.append(RunRequest(job_name="build_compositions", partition_key=key, run_key=f"compose:{key}:{tag}"))
    if not plan.concepts and not plan.compositions and plan.publish:
        state = "|".join(sorted(c["key"] for c in registry["compositions"])) + fingerprint
        requests.append(RunRequest(job_name="publish_dataset", run_key=f"publish:{_short(state)}"))
    context.log.info(f"requesting {len(requests)} runs: " + ", ".join(r.run_key for r in requests))
    return SensorResult(run_requests=requests, cursor=fingerprint)
