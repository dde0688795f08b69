"""The one asset factory: every stage asset shares how a partition is built and made current.

A stage asset only says how to compute its files (``build``) and what to show in the UI
(``describe``). The factory does the rest, in this order, for every stage:

1. take the partition's writer lock (one writer per partition: a second run waits, then finds
   the partition current and does nothing) and finish what a killed writer left;
2. refuse a partition the catalogue did not propose, and one whose inputs are not current;
3. skip a partition that is current (same fingerprint, files intact) unless the run forces it;
4. build into a staging folder; run the stage's checks on it; write its lineage journal and,
   last, ``fingerprint.json``; make it current in one step;
5. commit it to DVC (only now: nothing unchecked is versioned), ingest its lineage, clear its
   failure record. A failure keeps the previous output, and is recorded for retries.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dagster import (AssetExecutionContext, Backoff, DataVersion, Failure, MaterializeResult, MetadataValue,
                     RetryPolicy, asset)

from gen4gen.concepts import load_registry
from gen4gen.fingerprints import FINGERPRINT_FILE, STAGES, code_version, desired_state, fingerprint_record
from gen4gen.incremental import (clear_failure, damaged_files, left_out_compositions, partition_status,
                                 record_failure)
from gen4gen.io import atomic_write_text, sha256_file
from gen4gen.locking import file_lock, run_lock
from gen4gen.pooled_backends import set_step
from gen4gen.staging import crash_point, recover, staged_folder
from gen4gen.stages import StageInputError, StageResult

from .metadata import log_problems, stage_metadata
from .pending import commit_pending_dvc, dvc_pending_path

# Run tag that rebuilds current partitions too (`gen4gen materialize --all`).
FORCE_TAG = "gen4gen/force"
# Transient errors (a busy GPU, a flaky endpoint) get retried within the run; deterministic
# input errors are raised with allow_retries=False and go to the next run's retry instead.
TRANSIENT_RETRIES = RetryPolicy(max_retries=1, delay=1, backoff=Backoff.EXPONENTIAL)


@dataclass
class StageRun:
    """What a stage's ``build`` function gets: where to write and what it works on."""

    context: AssetExecutionContext
    config: object
    registry: dict
    key: str | None
    out_dir: Path  # the staging folder: write here
    final_dir: Path  # where the output will live once current
    left_out: dict | None = None  # dataset stages: compositions not exported, with the reason

    @property
    def resources(self):
        return self.context.resources


def stage_asset(stage: str, *, build: Callable[[StageRun], StageResult], describe: Callable[[StageRun, StageResult], dict],
                backend_name: Callable[[StageRun, StageResult], str | dict], deps, kinds: set[str],
                partitions_def=None, pool: str | None = None, resources: tuple[str, ...] = (),
                check: Callable[[StageRun, StageResult], list[str]] | None = None,
                previews: Callable[[StageRun, StageResult], list[str]] | None = None, description: str = "",
                placement: Callable[[StageRun], dict | None] | None = None):
    """A Dagster asset for one stage of ``gen4gen.fingerprints.STAGES``.

    ``placement``: where the stage's model ran (Ray workers: nodes, GPUs, batch sizes, model
    load times), recorded in the step's metadata and in its lineage rows' ``backend``.
    """

    @asset(name=stage, group_name="gen4gen", partitions_def=partitions_def, deps=deps, kinds=kinds,
           code_version=code_version(stage), pool=pool, description=description,
           required_resource_keys={"settings", "lineage", "dvc", *resources}, retry_policy=TRANSIENT_RETRIES)
    def _stage_asset(context):
        return build_partition(context, stage, build, describe, backend_name, check, previews, placement)

    return _stage_asset


def model_placement(resource: str) -> Callable[[StageRun], dict | None]:
    """Where the stage's model ran, when it ran in Ray workers (a backend per run: this step's calls)."""

    def placement(run: StageRun) -> dict | None:
        backend = getattr(run.resources, resource).backend
        return backend.placement() if hasattr(backend, "placement") else None

    return placement


def _lock_path(paths, stage: str, key: str | None) -> Path:
    return paths.build / ".state" / "locks" / stage / f"{key or '_'}.lock"


def _partition_lock(context, config, path: Path):
    """One writer per partition: ``flock`` on one machine; with one writer for a cluster (steps on
    several machines), a lock owned by the run, which the shared instance says is alive or not."""
    if not config.single_writer:
        return file_lock(path, timeout_s=None)
    instance = context.instance

    def running(run_id: str) -> bool:
        run = instance.get_run_by_id(run_id)
        return run is not None and not run.is_finished

    return run_lock(path.with_suffix(".run-lock"), context.run.run_id, running)


def build_partition(context, stage, build, describe, backend_name, check, previews=None,
                    placement=None) -> MaterializeResult:
    resources = context.resources
    config = resources.settings.config
    paths = config.paths
    key = context.partition_key if context.has_partition_key else None
    spec = STAGES[stage]
    final = spec.folder(paths, key)
    registry = load_registry(paths.registry)
    force = context.run.tags.get(FORCE_TAG) == "1"
    with _partition_lock(context, config, _lock_path(paths, stage, key)):
        for note in recover(final):
            context.log.warning(note)
        left_out = left_out_compositions(config, registry) if spec.partitioned_by is None else None
        state = desired_state(config, registry, current=(lambda s, k: k not in left_out) if left_out is not None
                              else None)
        desired = state.get(stage, key)
        if desired is None:
            raise Failure(f"{stage}[{key}]: partition key {key!r} was not proposed by the catalogue "
                          f"({paths.registry}); compositions are proposed from the concepts folder (or "
                          "`proposal.explicit`), not typed in", allow_retries=False)
        _require_inputs_current(paths, state, stage, key)
        pending_metadata = {}
        if config.single_writer and spec.partitioned_by is None:
            # The one writer commits every partition made current since, before the export names
            # their DVC versions (its own partition is committed below, once built).
            committed = commit_pending_dvc(config, context.log.info, exclude=(stage,))
            pending_metadata["dvc_partitions_committed"] = MetadataValue.md("\n".join(committed) or "none pending")
        reasons = partition_status(paths, stage, key, desired)
        if not reasons and not force:
            return _unchanged(context, stage, key, desired.digest)
        context.log.info(f"building {stage}[{key}]: {'; '.join(reasons) or 'forced (--all)'}")
        crash_point(f"build:{stage}")
        _quarantine_damaged(config, final, context)
        run = StageRun(context, config, registry, key, final, final, left_out)
        set_step(f"{stage}[{key}]" if key else stage)  # labels the batches its models serve (placement)
        try:
            with staged_folder(final) as staging:
                run.out_dir = staging
                result = build(run)
                _relocate(result, staging, final)
                problems = check(run, result) if check else []
                if problems:
                    raise Failure(f"{stage}[{key}]: checks failed, nothing was made current: " + "; ".join(problems),
                                  allow_retries=False)
                where = placement(run) if placement else None
                lineage_metadata = resources.lineage.record(
                    context, result.lineage, journal_file=staging / _journal_name(), params=desired.config,
                    backend={**desired.backend, "placement": where} if where else desired.backend,
                    data_version=desired.digest)
                files = _file_records(staging, final, result)
                atomic_write_text(staging / FINGERPRINT_FILE, _json(fingerprint_record(desired, files, context.run.run_id)))
                atomic_write_text(dvc_pending_path(paths, stage, key), desired.digest)
        except Exception as exc:
            if not context.retry_number < TRANSIENT_RETRIES.max_retries or _deterministic(exc):
                record_failure(paths, stage, key, desired.digest, _message(exc))
            if isinstance(exc, (StageInputError, ValueError)) and not isinstance(exc, Failure):
                raise Failure(f"{stage}[{key}]: {exc}", allow_retries=False) from exc
            raise
    if config.single_writer and spec.partitioned_by is not None:
        # One writer: the publish step commits this partition and ingests its journal.
        dvc_metadata = {"dvc": MetadataValue.text("deferred to the publish step ([regeneration] single_writer)")}
        ingest_metadata = {}
    else:
        dvc_metadata = dict(pending_metadata)
        dvc_metadata.update(resources.dvc.commit(context, result.lineage))
        # Skipped (DVC off or absent) or committed: nothing pending. Failed: `materialize` commits it later.
        if getattr(dvc_metadata.get("dvc"), "value", None) != "failed":
            dvc_pending_path(paths, stage, key).unlink(missing_ok=True)
        ingest_metadata = resources.lineage.ingest(context)
    clear_failure(paths, stage, key)
    log_problems(context, result)
    return MaterializeResult(data_version=DataVersion(desired.digest), metadata=stage_metadata(
        result, backend_name(run, result), [final / name for name in (previews(run, result) if previews else [])][:8],
        preview_cache=paths.build / ".previews",
        fingerprint=MetadataValue.text(desired.digest),
        rebuilt_because=MetadataValue.md("\n".join(f"- {r}" for r in reasons) or "- forced"),
        **({"placement": MetadataValue.json(where)} if where else {}),
        **describe(run, result), **lineage_metadata, **ingest_metadata, **dvc_metadata))


def build_run_partition(context, stage: str, build: Callable, describe: Callable[[StageResult, Path], dict]
                        ) -> MaterializeResult:
    """A partition of a personalisation stage (a training run): as ``build_partition`` (lock, staging,
    lineage journal, fingerprint, failure record) with fingerprints from
    ``gen4gen.personalisation_state``. Not versioned by DVC (model weights: see the README)."""
    from gen4gen import personalisation_state

    resources = context.resources
    config = resources.settings.config
    paths = config.paths
    key = context.partition_key
    run = next((r for r in config.training.runs if r.name == key), None)
    if run is None:
        raise Failure(f"{stage}[{key}]: no [[training.runs]] named {key!r} in the configuration; configured: "
                      f"{[r.name for r in config.training.runs]}", allow_retries=False)
    registry = load_registry(paths.registry)
    final = personalisation_state.folder(paths, stage, key)
    force = context.run.tags.get(FORCE_TAG) == "1"
    with _partition_lock(context, config, _lock_path(paths, stage, key)):
        for note in recover(final):
            context.log.warning(note)
        try:
            wanted = personalisation_state.desired(config, registry, run)
        except ValueError as exc:
            raise Failure(f"{stage}[{key}]: {exc}", allow_retries=False) from exc
        desired = wanted[stage]
        if stage == "generated_images":
            waiting = personalisation_state.status(config, "personalised_models", key, wanted["personalised_models"])
            if waiting:
                raise Failure(f"{stage}[{key}] waits for personalised_models[{key}], which is not current "
                              f"({waiting[0]}); train it first", allow_retries=False, metadata={"blocked": True})
        reasons = personalisation_state.status(config, stage, key, desired)
        if not reasons and not force:
            return _unchanged(context, stage, key, desired.digest)
        context.log.info(f"building {stage}[{key}]: {'; '.join(reasons) or 'forced'}")
        set_step(f"{stage}[{key}]")
        try:
            with staged_folder(final) as staging:
                result = build(config, registry, run, staging, context.log.info)
                _relocate(result, staging, final)
                lineage_metadata = resources.lineage.record(
                    context, result.lineage, journal_file=staging / _journal_name(), params=desired.config,
                    backend=desired.backend, data_version=desired.digest)
                files = _file_records(staging, final, result)
                atomic_write_text(staging / FINGERPRINT_FILE, _json(fingerprint_record(desired, files, context.run.run_id)))
        except Exception as exc:
            record_failure(paths, stage, key, desired.digest, _message(exc))
            if isinstance(exc, (StageInputError, ValueError)) and not isinstance(exc, Failure):
                raise Failure(f"{stage}[{key}]: {exc}", allow_retries=False) from exc
            raise
    ingest_metadata = {} if config.single_writer else resources.lineage.ingest(context)
    clear_failure(paths, stage, key)
    log_problems(context, result)
    return MaterializeResult(data_version=DataVersion(desired.digest), metadata={
        "fingerprint": MetadataValue.text(desired.digest),
        "rebuilt_because": MetadataValue.md("\n".join(f"- {r}" for r in reasons) or "- forced"),
        "seconds": MetadataValue.float(round(result.seconds, 2)),
        **describe(result, final), **lineage_metadata, **ingest_metadata})


def _unchanged(context, stage: str, key: str | None, digest: str) -> MaterializeResult:
    context.log.info(f"{stage}[{key}] is current; nothing to do")
    return MaterializeResult(data_version=DataVersion(digest), metadata={
        "unchanged": MetadataValue.bool(True), "fingerprint": MetadataValue.text(digest)})


def _require_inputs_current(paths, state, stage: str, key: str | None) -> None:
    """A composition stage builds only on current inputs (else it would mix old and new data)."""
    if STAGES[stage].partitioned_by != "compositions":
        return
    order = [s for s in STAGES if STAGES[s].partitioned_by == "compositions"]
    inputs = [("segmented_foregrounds", m) for m in key.split("+")] + [(s, key) for s in order[:order.index(stage)]]
    for up_stage, up_key in inputs:
        reasons = partition_status(paths, up_stage, up_key, state.get(up_stage, up_key))
        if reasons:
            raise Failure(f"{stage}[{key}] waits for {up_stage}[{up_key}], which is not current "
                          f"({reasons[0]}); build it first", allow_retries=False, metadata={"blocked": True})


def _quarantine_damaged(config, final: Path, context) -> None:
    """Before replacing a partition whose files were edited in place, drop DVC cache objects that
    share their bytes, so no DVC version ever holds the edited content."""
    from gen4gen.fingerprints import read_fingerprint

    record = read_fingerprint(final)
    if not record or not record.get("files"):
        return
    damaged = [final / d.split(" ", 1)[0] for d in damaged_files(final, record) if " changed" in d]
    if not damaged:
        return
    context.log.warning(f"restoring {len(damaged)} damaged file(s) in {final}: "
                        + ", ".join(p.name for p in damaged[:10]))
    from gen4gen.versioning import DvcError, quarantine_edited

    try:
        quarantine_edited(config, damaged)
    except DvcError as exc:  # the rebuild goes on; the next DVC commit checks the bytes again
        context.log.warning(f"could not check the DVC cache for the damaged files: {exc}")


def _relocate(result: StageResult, staging: Path, final: Path) -> None:
    """Lineage records name files where they will live, not the staging folder (parents too: a
    file may be made from another of its partition)."""
    prefix = str(staging)

    def moved(path: str) -> str:
        return str(final) + path[len(prefix):] if path.startswith(prefix) else path

    for record in result.lineage:
        record.path = moved(record.path)
        record.parents = [(moved(path), sha, role) for path, sha, role in record.parents]


def _file_records(staging: Path, final: Path, result: StageResult) -> dict[str, list]:
    """Every file of the staged partition with its sha256, size and mtime (for repair checks)."""
    known = {os.path.relpath(r.path, final): r.sha256 for r in result.lineage if r.path.startswith(str(final))}
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        name = path.relative_to(staging).as_posix()
        if name in (FINGERPRINT_FILE, _journal_name()):
            continue
        stat = path.stat()
        files[name] = [known.get(name) or sha256_file(path), stat.st_size, stat.st_mtime_ns]
    return files


def _journal_name() -> str:
    from gen4gen.lineage import JOURNAL_NAME

    return JOURNAL_NAME


def _deterministic(exc: Exception) -> bool:
    return isinstance(exc, (StageInputError, ValueError)) or (isinstance(exc, Failure) and not exc.allow_retries)


def _message(exc: Exception) -> str:
    text = getattr(exc, "description", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, Failure) else text


def _json(payload) -> str:
    import json

    return json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False)


def force_tags(force: bool) -> dict:
    return {FORCE_TAG: "1"} if force else {}


__all__ = ["FORCE_TAG", "StageRun", "build_partition", "build_run_partition", "force_tags", "model_placement",
           "stage_asset"]
