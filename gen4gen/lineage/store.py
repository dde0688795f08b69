"""``LineageStore``: the former single-class interface, kept for callers not yet moved.

New code calls the parts directly: :func:`~gen4gen.lineage.journal.write_journal`,
:func:`~gen4gen.lineage.ingest.ingest`, :func:`~gen4gen.lineage.queries.open_reader`.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from . import database, journal
from .ingestion import ingest, label_data_versions
from .queries import LineageReader, open_reader, verify_files
from .records import ArtifactRecord


class LineageStore:
    def __init__(self, data_dir: Path, lock_timeout: float = 600.0):
        self.data_dir = Path(data_dir)
        self.folder = database.folder(self.data_dir)
        self.db_path = database.db_path(self.data_dir)
        self.journal_dir = journal.legacy_journal_folder(self.data_dir)
        self.lock_path = database.lock_path(self.data_dir)
        self.lock_timeout = lock_timeout

    def write_journal(self, records: list[ArtifactRecord], *, journal_file: Path | None = None, **step) -> Path | None:
        """A journal at ``journal_file``, or (without one) in the legacy journal folder."""
        target = journal_file or journal.legacy_journal_file(self.data_dir)
        return journal.write_journal(target, records, data_dir=self.data_dir, **step)

    def ingest_pending(self) -> int:
        return ingest(self.data_dir, timeout_s=self.lock_timeout).new_rows

    def commit(self, records: list[ArtifactRecord], ingest: bool = True, **step) -> dict:
        """Journal, then (``ingest``) ingest every journal not yet in the database; returns counts."""
        written = self.write_journal(records, **step)
        inserted = self.ingest_pending() if written and ingest else None
        return {"files": len(records), "new_rows": inserted, "journal": written}

    def pending_journals(self) -> int:
        """Journals in the legacy folder (journals beside outputs are kept, so not counted)."""
        return sum(1 for _ in self.journal_dir.glob("*.jsonl")) if self.journal_dir.is_dir() else 0

    def set_data_versions(self, updates: dict[str, list[str]]) -> int:
        return label_data_versions(self.data_dir, updates, timeout_s=self.lock_timeout)

    @contextmanager
    def reader(self):
        """A raw read connection, after ingestion; pass it to the query methods below."""
        with open_reader(self.data_dir, timeout_s=self.lock_timeout) as reader:
            yield reader.connection

    def _reader(self, connection) -> LineageReader:
        return LineageReader(connection, self.data_dir)

    def resolve(self, connection, target: str) -> dict | None:
        return self._reader(connection).resolve(target)

    def ancestry(self, connection, artifact: str):
        return self._reader(connection).ancestry(artifact)

    def descendants(self, connection, artifact: str) -> list[dict]:
        return self._reader(connection).descendants(artifact)

    def tree(self, connection, artifact: str) -> dict:
        return self._reader(connection).tree(artifact)

    def verify(self, nodes: dict[str, dict]) -> list[str]:
        return verify_files(nodes, self.data_dir)

    def export_parquet(self, artifact_ids: list[str], out_dir: Path) -> list[Path]:
        with open_reader(self.data_dir, timeout_s=self.lock_timeout) as reader:
            return reader.export_parquet(artifact_ids, out_dir)

    def counts(self) -> dict:
        with open_reader(self.data_dir, timeout_s=self.lock_timeout) as reader:
            return reader.counts()
