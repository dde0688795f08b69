from __future__ import annotations

import shlex

from dagster import ConfigurableResource, MetadataValue

from gen4gen.lineage import ArtifactRecord, LineageStore

from .settings import PipelineSettings

# Pending journals that make a step ingest them all into DuckDB (readers always do).
INGEST_EVERY = 16


class LineageResource(ConfigurableResource):
    """Per-file lineage in DuckDB (``<data>/lineage/lineage.duckdb``), safe across step processes."""

    settings: PipelineSettings

    @property
    def store(self) -> LineageStore:
        return LineageStore(self.settings.paths.data)

    def record(self, context, records: list[ArtifactRecord], params: dict | None = None,
               backend: dict | str | None = None, data_version: str | None = None) -> dict:
        """Journal this step's files; returns metadata for the materialisation.

        Ingestion into DuckDB is batched (every ``INGEST_EVERY`` journals, and by every reader)
        so a step pays a few milliseconds for its lineage, not a database round trip.
        """
        asset_key = context.asset_key
        code_version = context.assets_def.code_versions_by_key.get(asset_key)
        store = self.store
        counts = store.commit(
            records, ingest=store.pending_journals() + 1 >= INGEST_EVERY, asset_key=asset_key.to_user_string(),
            partition_key=context.partition_key if context.has_partition_key else None,
            run_id=context.run.run_id, code_version=code_version, params=params, backend=backend,
            data_version=data_version)
        metadata = {"lineage_files": MetadataValue.int(counts["files"])}
        if counts["new_rows"] is not None:
            metadata["lineage_new_rows"] = MetadataValue.int(counts["new_rows"])
        if records:
            metadata["audit_command"] = MetadataValue.text(f"gen4gen lineage {shlex.quote(records[0].path)}")
        return metadata
