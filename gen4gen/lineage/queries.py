"""Read-only questions to the lineage database: resolve, ancestry, descendants, verify, export."""
from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..io import sha256_file
from .database import LineageDatabaseDamaged, chunks, connect, db_path, locked, looks_damaged, placeholders
from .ingestion import closures_of, ingest, resolve_rows
from .journal import journal_lines
from .records import AGGREGATE_ROLES, PACKAGED_PREFIX, ArtifactRecord, packaged_photo_sha256, relative_path
from .tree import build_tree

COLUMNS = ("id", "path", "sha256", "asset_key", "partition_key", "run_id", "code_version", "created_at", "params",
           "backend", "data_version")
_SELECT = ", ".join(COLUMNS)


@contextmanager
def open_reader(data_dir: Path, *, ingest_first: bool = True, timeout_s: float = 600.0) -> Iterator["LineageReader"]:
    """A read-only view of the database, after ingesting any journal not in it yet."""
    if ingest_first:
        ingest(data_dir, timeout_s=timeout_s)
    with locked(data_dir, exclusive=False, timeout_s=timeout_s):
        connection = connect(data_dir, read_only=True)
        try:
            yield LineageReader(connection, Path(data_dir))
        finally:
            connection.close()


class LineageReader:
    """Queries over one open connection; paths are answered relative to ``data_dir``."""

    def __init__(self, connection, data_dir: Path):
        self.connection = connection
        self.data_dir = data_dir

    def _rows(self, sql: str, params: list) -> list[tuple]:
        import duckdb

        try:
            return self.connection.execute(sql, params).fetchall()
        except duckdb.Error as exc:
            if looks_damaged(exc):
                raise LineageDatabaseDamaged(db_path(self.data_dir), exc) from exc
            raise

    def rows_by_id(self, ids: list[str]) -> dict[str, dict]:
        found = {}
        for part in chunks(sorted(set(ids))):
            for row in self._rows(f"SELECT {_SELECT} FROM artifacts WHERE id IN {placeholders(len(part))}", part):
                found[row[0]] = row_dict(row)
        return found

    def resolve(self, target: str) -> dict | None:
        """An artifact by id, by content id, or by path: the most recently ingested row."""
        rows = self._rows(f"SELECT {_SELECT} FROM artifacts WHERE id = ?", [target])
        if not rows:
            rows = self._rows(f"SELECT {_SELECT} FROM artifacts WHERE content_id = ? ORDER BY seq DESC LIMIT 1",
                              [target])
        if not rows:
            path = relative_path(target, self.data_dir)
            rows = self._rows(f"SELECT {_SELECT} FROM artifacts WHERE path = ? ORDER BY seq DESC LIMIT 1", [path])
        return row_dict(rows[0]) if rows else None

    def ancestor_ids(self, artifact: str) -> list[str]:
        return [r[0] for r in self._rows("SELECT ancestor_id FROM closure WHERE descendant_id = ?", [artifact])]

    def ancestry(self, artifact: str) -> tuple[dict[str, dict], list[tuple[str, str, str]]]:
        """Every ancestor's row and the edges between them (two indexed lookups).

        Files an aggregate lists are included as leaves: their own ancestry is theirs to audit.
        """
        ids = [artifact] + self.ancestor_ids(artifact)
        edges = []
        for part in chunks(ids):
            edges += self._rows(f"SELECT child_id, parent_id, role FROM edges WHERE child_id IN "
                                f"{placeholders(len(part))}", part)
        wanted = set(ids) | {parent for _, parent, _ in edges}
        return self.rows_by_id(sorted(wanted)), sorted(edges)

    def tree(self, artifact: str) -> dict:
        nodes, edges = self.ancestry(artifact)
        return build_tree(artifact, nodes, edges, expand=set([artifact] + self.ancestor_ids(artifact)))

    def descendants(self, artifact: str) -> list[dict]:
        """Everything derived from an artifact, and the aggregates that list any of it."""
        derived = {r[0] for r in self._rows("SELECT descendant_id FROM closure WHERE ancestor_id = ?", [artifact])}
        listing, frontier = set(), sorted(derived | {artifact})
        for part in chunks(frontier):
            listing.update(r[0] for r in self._rows(
                f"SELECT child_id FROM edges WHERE parent_id IN {placeholders(len(part))} AND role IN "
                f"{placeholders(len(AGGREGATE_ROLES))}", [*part, *sorted(AGGREGATE_ROLES)]))
        for aggregate in sorted(listing - derived):
            derived.add(aggregate)
            derived.update(r[0] for r in self._rows("SELECT descendant_id FROM closure WHERE ancestor_id = ?",
                                                    [aggregate]))
        derived.discard(artifact)
        return sorted(self.rows_by_id(sorted(derived)).values(), key=lambda r: (r["asset_key"] or "", r["path"]))

    def verify(self, nodes: dict[str, dict]) -> list[str]:
        """Re-hash every file in a chain; returns one message per missing or changed file."""
        return verify_files(nodes, self.data_dir)

    def counts(self) -> dict:
        return {table: self._rows(f"SELECT count(*) FROM {table}", [])[0][0]
                for table in ("artifacts", "edges", "closure", "journals")}

    def export_parquet(self, artifact_ids: list[str], out_dir: Path,
                       pending: list[ArtifactRecord] | None = None) -> list[Path]:
        """The lineage of the given artifacts (row or content ids) with all ancestors, as Parquet.

        ``pending``: records not journalled yet (a step exporting its own files' lineage); they
        get the ids and ancestry their ingestion will give them. Paths reach no SQL: rows are
        selected with bound parameters and written by pyarrow.
        """
        import pyarrow
        import pyarrow.parquet

        virtual = self._pending_rows(pending or [])
        by_content = {row["content_id"]: row for row, _, _ in virtual}
        ids: set[str] = set()
        for target in artifact_ids:
            if target in by_content:
                row = by_content[target]
                ids.add(row["id"])
                ids.update(row["ancestors"])
                continue
            found = self.resolve(target)
            if found is not None:
                ids.add(found["id"])
                ids.update(self.ancestor_ids(found["id"]))
        virtual_ids = {row["id"] for row, _, _ in virtual} & ids
        stored_ids = sorted(ids - virtual_ids)
        artifacts = self.connection.sql(
            "SELECT a.*, list(c.ancestor_id ORDER BY c.ancestor_id) FILTER (WHERE c.ancestor_id IS NOT NULL) "
            "AS ancestors FROM artifacts a LEFT JOIN closure c ON c.descendant_id = a.id "
            "WHERE a.id IN (SELECT unnest($ids)) GROUP BY ALL ORDER BY a.id", params={"ids": stored_ids}).to_arrow_table()
        edges = self.connection.sql("SELECT * FROM edges WHERE child_id IN (SELECT unnest($ids)) ORDER BY ALL",
                                    params={"ids": stored_ids}).to_arrow_table()
        extra = [(row, row_edges) for row, row_edges, _ in virtual if row["id"] in virtual_ids]
        if extra:
            artifacts = pyarrow.concat_tables([artifacts, pyarrow.Table.from_pylist(
                [row for row, _ in extra], schema=artifacts.schema)]).sort_by("id")
            edges = pyarrow.concat_tables([edges, pyarrow.Table.from_pylist(
                [e for _, row_edges in extra for e in row_edges], schema=edges.schema)])
        written = []
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, table in (("lineage_artifacts.parquet", artifacts), ("lineage_edges.parquet", edges)):
            target = out_dir / name
            temporary = out_dir / f".{name}.{uuid.uuid4().hex}.tmp"
            try:
                pyarrow.parquet.write_table(table, str(temporary))
                os.replace(temporary, target)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
            written.append(target)
        return written

    def _pending_rows(self, records: list[ArtifactRecord]) -> list[tuple[dict, list[dict], None]]:
        """Rows (with ``ancestors``) and edges that ``records`` will have once journalled and ingested."""
        import json
        from datetime import datetime

        if not records:
            return []
        lines = journal_lines(records, asset_key=None, partition_key=None, run_id=None, code_version=None,
                              params=None, backend=None, data_dir=self.data_dir)
        rows = [json.loads(line) for line in lines.splitlines()]
        prepared = resolve_rows(self.connection, rows, self.data_dir)
        closures = closures_of(self.connection, prepared)
        result = []
        for row_id, key, path, row, parents in prepared:
            result.append(({"id": row_id, "content_id": key, "path": path, "sha256": row["sha256"],
                            "asset_key": row["asset_key"], "partition_key": None, "run_id": None,
                            "code_version": None, "created_at": datetime.fromisoformat(row["created_at"]),
                            "params": json.dumps(row["params"]), "backend": "null", "data_version": None, "seq": None,
                            "ancestors": sorted(closures[row_id])},
                           [{"child_id": row_id, "parent_id": parent, "role": role} for role, parent in parents],
                           None))
        return result


def verify_files(nodes: dict[str, dict], data_dir: Path) -> list[str]:
    problems = []
    for node in sorted(nodes.values(), key=lambda n: n["path"] or ""):
        path = node["path"]
        if path is None:
            continue
        if path.startswith(PACKAGED_PREFIX):
            actual = packaged_photo_sha256(path)
        else:
            file = Path(path) if Path(path).is_absolute() else data_dir / path
            if not file.is_file():
                problems.append(f"missing: {file} ({node['asset_key']}, recorded sha256 {node['sha256'][:12]})")
                continue
            actual = sha256_file(file)
        if actual != node["sha256"]:
            problems.append(f"changed: {path} ({node['asset_key']}): sha256 {actual[:12]} != recorded {node['sha256'][:12]}")
    return problems


def row_dict(row) -> dict:
    result = dict(zip(COLUMNS, row))
    for key in ("params", "backend"):
        if isinstance(result[key], str):
            result[key] = json.loads(result[key])
    if result["created_at"] is not None and not isinstance(result["created_at"], str):
        result["created_at"] = result["created_at"].isoformat()
    return result
