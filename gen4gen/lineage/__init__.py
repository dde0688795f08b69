"""Per-file lineage: journals kept beside the data, indexed in an embedded DuckDB database.

How a step records lineage:
1. it writes its files (atomically);
2. it writes a *journal* (:func:`write_journal`): one JSON line per file (hash, parents with
   roles, run, parameters), atomically, at ``<partition folder>/lineage.journal.jsonl``;
   a journal only ever names files that exist, and it is kept;
3. :func:`ingest` (under an exclusive file lock) adds every journal not yet in the database,
   parents before children. Readers ingest first, so nothing journalled is ever missed.

Modules: ``records`` (what is recorded, ids), ``journal`` (writing and finding journals),
``database`` (schema, opening, locking), ``ingestion`` (journals into the database, rebuild),
``queries`` (read-only questions), ``tree`` (the printed ancestry), ``store`` (the former
single-class interface).
"""
from .database import SCHEMA, LineageDatabaseDamaged
from .ingestion import IngestResult, RebuildResult, ingest, label_data_versions, rebuild
from .journal import JOURNAL_NAME, discover_journals, legacy_journal_file, write_journal
from .queries import LineageReader, open_reader
from .records import (AGGREGATE_ROLES, PACKAGED_PREFIX, STAGE_ORDER, ArtifactRecord, artifact_id, content_id,
                      packaged_photo_sha256, relative_path)
from .store import LineageStore
from .tree import build_tree, format_tree

__all__ = [
    "AGGREGATE_ROLES", "ArtifactRecord", "IngestResult", "JOURNAL_NAME", "LineageDatabaseDamaged", "LineageReader",
    "LineageStore", "PACKAGED_PREFIX", "RebuildResult", "SCHEMA", "STAGE_ORDER", "artifact_id", "build_tree",
    "content_id", "discover_journals", "format_tree", "ingest", "label_data_versions", "legacy_journal_file",
    "open_reader", "packaged_photo_sha256", "rebuild", "relative_path", "write_journal",
]
