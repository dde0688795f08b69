from __future__ import annotations

import shlex
from pathlib import Path

from dagster import ConfigurableResource, MetadataValue

from gen4gen.lineage import ArtifactRecord, LineageStore, ingest, legacy_journal_file, open_reader, write_journal

from .settings import PipelineSettings

# Kept for callers that batch their own ingestion (bench/bench_stages.py): journals in the legacy
# folder that make such a caller ingest.
INGEST_EVERY = 16


class LineageResource(ConfigurableResource):
    """Per-file lineage: journals beside the data, indexed in ``<data>/lineage/lineage.duckdb``."""

    settings: PipelineSettings

    @property
    def store(self) -> LineageStore:
        return LineageStore(self.settings.paths.data)

    def record(self, context, records: list[ArtifactRecord], *, journal_file: Path | None = None,
               params: dict | None = None, backend: dict | str | None = None,
               data_version: str | None = None) -> dict:
        """Journal this step's files (paths as given: their final places); returns materialisation metadata.

        ``journal_file`` is where the journal goes, normally ``<partition folder>/lineage.journal.jsonl``;
        without it, a new file in the legacy folder ``<data>/lineage/journal/``. Nothing touches the
        database here: a step pays one small file write; :meth:`ingest` and every reader index it.
        """
        data_dir = self.settings.paths.data
        asset_key = context.asset_key
        written = write_journal(
            Path(journal_file) if journal_file is not None else legacy_journal_file(data_dir), records,
            asset_key=asset_key.to_user_string(),
            partition_key=context.partition_key if context.has_partition_key else None,
            run_id=context.run.run_id, code_version=context.assets_def.code_versions_by_key.get(asset_key),
            params=params, backend=backend, data_version=data_version, data_dir=data_dir)
        metadata = {"lineage_files": MetadataValue.int(len(records))}
        if written is not None:
            metadata["lineage_journal"] = MetadataValue.path(str(written))
        if records:
            metadata["audit_command"] = MetadataValue.text(f"gen4gen lineage {shlex.quote(records[0].path)}")
        return metadata

    def export_parquet(self, artifact_ids: list[str], out_dir: Path,
                       pending: list[ArtifactRecord] | None = None) -> list[Path]:
        """``lineage_artifacts.parquet`` and ``lineage_edges.parquet`` of these artifacts (row or content
        ids) and all their ancestors; ``pending``: this step's records, not journalled yet (final paths)."""
        with open_reader(self.settings.paths.data) as reader:
            return reader.export_parquet(artifact_ids, Path(out_dir), pending=pending)

    def ingest(self, context=None) -> dict:
        """Index every journal on disk not yet in the database; returns metadata (rows added, journals)."""
        result = ingest(self.settings.paths.data)
        if context is not None:
            context.log.info(f"lineage: {result.journals_ingested} journals ingested ({result.new_rows} new rows) "
                             f"of {result.journals_on_disk} on disk")
        return {"lineage_new_rows": MetadataValue.int(result.new_rows),
                "lineage_journals_ingested": MetadataValue.int(result.journals_ingested),
                "lineage_journals_on_disk": MetadataValue.int(result.journals_on_disk)}
