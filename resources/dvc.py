from __future__ import annotations

from dagster import ConfigurableResource, Failure, MetadataValue

from .settings import PipelineSettings


class DvcResource(ConfigurableResource):
    """Commits each materialised stage to the DVC cache (``gen4gen/versioning/``; README: DVC).

    DVC runs as a subprocess from its own environment; calls are serialised across step
    processes and a repository locked by another DVC process is waited for. When DVC is off or
    not installed, the step still succeeds and its metadata says DVC was skipped and why.

    Nothing here runs on its own: the asset calls :meth:`commit` once its checks have passed, so
    a stage whose checks fail is never versioned.
    """

    settings: PipelineSettings

    def commit(self, context, records=None) -> dict:
        """Commit this step's stage; returns metadata for the materialisation.

        ``records`` (the step's ``ArtifactRecord`` list) are checked against the files first (a
        file whose bytes changed since is never committed: the commit fails, saying which), then
        get the stage's DVC version in their lineage rows (``data_version``). Without them, the
        files of the stage's output are hashed as they are now and nothing is checked.
        """
        from gen4gen.versioning import (ASSET_STAGES, commit_stages, lineage_ids_in, stage_out, stage_target,
                                        unavailable_reason)

        config = self.settings.config
        kind = ASSET_STAGES[context.asset_key.to_user_string()]
        key = context.partition_key if context.has_partition_key else None
        out = stage_out(config, kind, key)
        checked = records is not None
        if records is None:
            records = _records_of(out) if unavailable_reason(config) is None else []
        ids = lineage_ids_in(records, out, config.paths.data)
        outcome = commit_stages(config, [(kind, key)], lineage_ids={stage_target(kind, key): ids},
                                records=records if checked else None)
        if outcome.status == "committed":
            context.log.info(f"DVC: committed {', '.join(outcome.stages)} as {outcome.version} "
                             f"({outcome.seconds:.1f} s, {outcome.lock_wait_s:.1f} s waiting for locks)")
        elif outcome.status == "skipped":
            context.log.info(outcome.message())
        else:
            context.log.warning(outcome.message())
        if outcome.push_error:
            context.log.warning(f"DVC push: {outcome.push_error}")
        metadata = {key_: _value(value) for key_, value in outcome.metadata().items()}
        if outcome.status == "failed" and config.dvc.on_error == "fail":
            raise Failure(description=outcome.message(), metadata=metadata)
        return metadata


def _records_of(out):
    from gen4gen.io import sha256_file
    from gen4gen.lineage import ArtifactRecord

    files = [out] if out.is_file() else sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else []
    return [ArtifactRecord(str(p), sha256_file(p)) for p in files]


def _value(value):
    if isinstance(value, bool):
        return MetadataValue.bool(value)
    if isinstance(value, int):
        return MetadataValue.int(value)
    if isinstance(value, float):
        return MetadataValue.float(value)
    if isinstance(value, (dict, list)):
        return MetadataValue.json(value)
    return MetadataValue.text(str(value))
