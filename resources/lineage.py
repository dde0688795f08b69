from __future__ import annotations

import shlex

from dagster import ConfigurableResource, MetadataValue

from gen4gen.lineage import ArtifactRecord, LineageStore

from .settings import PipelineSettings


class LineageResource(ConfigurableResource):
    """Per-file lineage in DuckDB (``<data>/lineage/lineage.duckdb``), safe across step processes."""

    settings: PipelineSettings

    @property
    def store(self) -> LineageStore:
        return LineageStore(self.settings.paths.data)

    def record(self, context, records: list[ArtifactRecord], params: dict | None = None,
               backend: dict | str | None = None, data_version: str | None = None) -> dict:
        """Journal and ingest this step's files; returns metadata for the materialisation."""
        asset_key = context.asset_key
        code_version = context.assets_def.code_versions_by_key.get(asset_key)
        counts = self.store.commit(
            records, asset_key=asset_key.to_user_string(),
            partition_key=context.partition_key if context.has_partition_key else None,
            run_id=context.run.run_id, code_version=code_version, params=params, backend=backend,
            data_version=data_version)
        metadata = {"lineage_files": MetadataValue.int(counts["files"]),
                    "lineage_new_rows": MetadataValue.int(counts["new_rows"])}
        if records:
            metadata["audit_command"] = MetadataValue.text(f"gen4gen lineage {shlex.quote(records[0].path)}")
        return metadata
