"""Per-file lineage in an embedded DuckDB database, safe under concurrent step processes.

How a step records lineage (``LineageStore.commit``):
1. the step writes its files (atomically);
2. it writes a *journal*: one JSON line per file (hash, parents with roles, run, parameters),
   atomically, into ``lineage/journal/``; a journal only ever names files that exist;
3. it takes an exclusive ``flock`` on ``lineage/lineage.lock`` (waiting, never failing, while
   another process holds it), ingests every journal present into DuckDB with
   insert-or-ignore, and deletes them.
DuckDB allows one writing process; the lock serialises writers across Dagster's step
processes. A step that dies after step 2 leaves its journal, which the next writer (or
``gen4gen lineage``) ingests; rows are keyed by content, so nothing is lost or duplicated.

Each artifact row stores the ids of all its ancestors (computed from its parents' lists at
ingestion), so auditing an image is two indexed lookups instead of a recursive walk.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .io import atomic_write_text, sha256_file

SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    id VARCHAR PRIMARY KEY,
    path VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    asset_key VARCHAR,
    partition_key VARCHAR,
    run_id VARCHAR,
    code_version VARCHAR,
    created_at TIMESTAMP,
    params JSON,
    backend JSON,
    data_version VARCHAR,
    ancestors VARCHAR[]
);
CREATE TABLE IF NOT EXISTS edges (
    child_id VARCHAR NOT NULL,
    parent_id VARCHAR NOT NULL,
    role VARCHAR NOT NULL,
    PRIMARY KEY (child_id, parent_id, role)
);
CREATE TABLE IF NOT EXISTS journals (name VARCHAR PRIMARY KEY, ingested_at TIMESTAMP);
-- The composite primary key cannot serve lookups by child alone; audits need this one.
CREATE INDEX IF NOT EXISTS edges_by_child ON edges (child_id);
"""

PACKAGED_PREFIX = "pkg:"


def relative_path(path: str | os.PathLike, data_dir: Path) -> str:
    """Paths inside the data folder are stored relative to it, so a moved dataset still audits."""
    text = str(path)
    if text.startswith(PACKAGED_PREFIX):
        return text
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(data_dir.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def artifact_id(path: str, sha256: str) -> str:
    """Content-addressed id: the same bytes at the same place are recorded once."""
    return hashlib.sha256(f"{path}\0{sha256}".encode("utf-8")).hexdigest()[:24]


@dataclass
class ArtifactRecord:
    """One written file and the files it was made from (``(path, sha256, role)``)."""

    path: str
    sha256: str
    parents: list[tuple[str, str, str]] = field(default_factory=list)
    params: dict | None = None
    asset_key: str | None = None  # overrides the step's asset (e.g. scene-bank photos)


def packaged_photo_sha256(name: str) -> str:
    """Photos shipped inside packages have no file of ours: hash their decoded pixels."""
    from .scenes import load_packaged_photo

    array = load_packaged_photo(name.removeprefix(PACKAGED_PREFIX))
    return hashlib.sha256(array.tobytes()).hexdigest()


class LineageStore:
    def __init__(self, data_dir: Path, lock_timeout: float = 600.0):
        self.data_dir = data_dir
        self.folder = data_dir / "lineage"
        self.db_path = self.folder / "lineage.duckdb"
        self.journal_dir = self.folder / "journal"
        self.lock_path = self.folder / "lineage.lock"
        self.lock_timeout = lock_timeout

    # ------------------------------------------------------------------ locking
    @contextmanager
    def _locked(self, exclusive: bool):
        """Serialise DuckDB access across processes; wait for the lock rather than fail."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as handle:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(handle, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"lineage database {self.db_path} stayed locked for "
                                           f"{self.lock_timeout:.0f} s; is a process stuck?") from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _connect(self, read_only: bool = False):
        import duckdb

        is_new = not self.db_path.exists()
        connection = duckdb.connect(str(self.db_path), read_only=read_only and not is_new)
        if is_new:  # callers hold the lock, so exactly one process creates the schema
            connection.execute(SCHEMA)
        return connection

    # ------------------------------------------------------------------ writing
    def write_journal(self, records: list[ArtifactRecord], *, asset_key: str, partition_key: str | None,
                      run_id: str, code_version: str | None, params: dict | None, backend: dict | str | None,
                      data_version: str | None = None) -> Path | None:
        """Step 2: the durable list of this step's files, written after the files themselves."""
        if not records:
            return None
        now = datetime.now(timezone.utc).isoformat()
        lines = []
        for record in records:
            path = relative_path(record.path, self.data_dir)
            lines.append(json.dumps({
                "id": artifact_id(path, record.sha256), "path": path, "sha256": record.sha256,
                "asset_key": record.asset_key or asset_key, "partition_key": partition_key, "run_id": run_id,
                "code_version": code_version, "created_at": now,
                "params": record.params if record.params is not None else params,
                "backend": backend, "data_version": data_version,
                "parents": [{"id": artifact_id(relative_path(p, self.data_dir), sha), "role": role}
                            for p, sha, role in record.parents],
            }, sort_keys=True, ensure_ascii=False))
        name = f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex}.jsonl"
        return atomic_write_text(self.journal_dir / name, "\n".join(lines) + "\n")

    def ingest_pending(self) -> int:
        """Step 3: move every journal into DuckDB (also those left by crashed steps)."""
        with self._locked(exclusive=True):
            return self._ingest_locked()

    def _ingest_locked(self) -> int:
        journals = sorted(self.journal_dir.glob("*.jsonl")) if self.journal_dir.is_dir() else []
        if not journals:
            return 0
        connection = self._connect()
        inserted = 0
        try:
            for journal in journals:
                done = connection.execute("SELECT 1 FROM journals WHERE name = ?", [journal.name]).fetchone()
                if not done:
                    rows = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines() if line]
                    connection.execute("BEGIN TRANSACTION")
                    try:
                        inserted += self._insert(connection, rows)
                        connection.execute("INSERT INTO journals VALUES (?, now())", [journal.name])
                        connection.execute("COMMIT")
                    except BaseException:
                        connection.execute("ROLLBACK")
                        raise
                journal.unlink()
        finally:
            connection.close()
        return inserted

    @staticmethod
    def _insert(connection, rows: list[dict]) -> int:
        parent_ids = sorted({p["id"] for row in rows for p in row["parents"]})
        known: dict[str, list[str]] = {}
        if parent_ids:
            for artifact, ancestors in connection.execute(
                    "SELECT id, ancestors FROM artifacts WHERE id IN (SELECT unnest(?::VARCHAR[]))", [parent_ids]).fetchall():
                known[artifact] = ancestors or []
        new_rows, edges = [], []
        for row in rows:  # parents written by this same step come earlier in its journal
            ancestors: dict[str, None] = {}
            for parent in row["parents"]:
                ancestors[parent["id"]] = None
                ancestors.update(dict.fromkeys(known.get(parent["id"], [])))
                edges.append((row["id"], parent["id"], parent["role"]))
            known.setdefault(row["id"], list(ancestors))
            new_rows.append((row["id"], row["path"], row["sha256"], row["asset_key"], row["partition_key"],
                             row["run_id"], row["code_version"], row["created_at"], json.dumps(row["params"]),
                             json.dumps(row["backend"]), row["data_version"], list(ancestors)))
        before = connection.execute("SELECT count(*) FROM artifacts").fetchone()[0]
        _insert_many(connection, "artifacts", new_rows)
        _insert_many(connection, "edges", edges)
        return connection.execute("SELECT count(*) FROM artifacts").fetchone()[0] - before

    def commit(self, records: list[ArtifactRecord], ingest: bool = True, **step) -> dict:
        """Journal, then (``ingest``) move the pending journals into DuckDB; returns counts.

        The journal is the durable part: every read ingests pending journals first, so a
        step may leave ingestion to a later step or reader (``ingest=False``) and pay only
        for one small file write.
        """
        journal = self.write_journal(records, **step)
        inserted = self.ingest_pending() if journal and ingest else None
        return {"files": len(records), "new_rows": inserted}

    def pending_journals(self) -> int:
        return sum(1 for _ in self.journal_dir.glob("*.jsonl")) if self.journal_dir.is_dir() else 0

    def set_data_versions(self, updates: dict[str, list[str]]) -> int:
        """Label rows with the version of the data they belong to (``{version: [artifact ids]}``)."""
        changed = 0
        with self._locked(exclusive=True):
            self._ingest_locked()
            connection = self._connect()
            try:
                for version, ids in updates.items():
                    for start in range(0, len(ids), 1000):
                        changed += connection.execute(
                            "UPDATE artifacts SET data_version = ? WHERE id IN (SELECT unnest(?::VARCHAR[]))",
                            [version, ids[start:start + 1000]]).fetchone()[0]
            finally:
                connection.close()
        return changed

    # ------------------------------------------------------------------ reading
    @contextmanager
    def reader(self):
        """A read connection, after ingesting any journal a crashed step left behind."""
        self.ingest_pending()
        with self._locked(exclusive=False):
            connection = self._connect(read_only=True)
            try:
                yield connection
            finally:
                connection.close()

    def resolve(self, connection, target: str) -> dict | None:
        """An artifact by id, or the newest artifact recorded at a path."""
        columns = "id, path, sha256, asset_key, partition_key, run_id, code_version, created_at, params, backend, data_version"
        row = connection.execute(f"SELECT {columns} FROM artifacts WHERE id = ?", [target]).fetchone()
        if row is None:
            path = relative_path(target, self.data_dir)
            row = connection.execute(f"SELECT {columns} FROM artifacts WHERE path = ? ORDER BY created_at DESC LIMIT 1",
                                     [path]).fetchone()
        return _row_dict(row) if row else None

    def ancestry(self, connection, artifact: str) -> tuple[dict[str, dict], list[tuple[str, str, str]]]:
        """Every ancestor's row and the edges between them (two indexed lookups)."""
        ancestors = connection.execute("SELECT ancestors FROM artifacts WHERE id = ?", [artifact]).fetchone()
        ids = [artifact] + list(ancestors[0] or []) if ancestors else [artifact]
        placeholders = ",".join("?" * len(ids))
        rows = connection.execute(
            "SELECT id, path, sha256, asset_key, partition_key, run_id, code_version, created_at, params, backend, "
            f"data_version FROM artifacts WHERE id IN ({placeholders})", ids).fetchall()
        edges = connection.execute(f"SELECT child_id, parent_id, role FROM edges WHERE child_id IN ({placeholders})",
                                   ids).fetchall()
        return {r[0]: _row_dict(r) for r in rows}, edges

    def descendants(self, connection, artifact: str) -> list[dict]:
        rows = connection.execute(
            "SELECT id, path, sha256, asset_key, partition_key, run_id, code_version, created_at, params, backend, "
            "data_version FROM artifacts WHERE list_contains(ancestors, ?) ORDER BY asset_key, path", [artifact]).fetchall()
        return [_row_dict(r) for r in rows]

    def tree(self, connection, artifact: str) -> dict:
        nodes, edges = self.ancestry(connection, artifact)
        children: dict[str, list[tuple[str, str]]] = {}
        for child, parent, role in edges:
            children.setdefault(child, []).append((parent, role))

        def build(node_id: str, role: str | None, seen: frozenset) -> dict:
            node = dict(nodes.get(node_id, {"id": node_id, "path": None, "missing_row": True}))
            node["role"] = role
            node["parents"] = [build(p, r, seen | {node_id}) for p, r in sorted(children.get(node_id, []), key=lambda x: (x[1], x[0]))
                               if p not in seen]
            return node

        return build(artifact, None, frozenset())

    def verify(self, nodes: dict[str, dict]) -> list[str]:
        """Re-hash every file in a chain; returns one message per missing or changed file."""
        problems = []
        for node in sorted(nodes.values(), key=lambda n: n["path"] or ""):
            path = node["path"]
            if path is None:
                continue
            if path.startswith(PACKAGED_PREFIX):
                actual = packaged_photo_sha256(path)
            else:
                file = Path(path) if Path(path).is_absolute() else self.data_dir / path
                if not file.is_file():
                    problems.append(f"missing: {file} ({node['asset_key']}, recorded sha256 {node['sha256'][:12]})")
                    continue
                actual = sha256_file(file)
            if actual != node["sha256"]:
                problems.append(f"changed: {path} ({node['asset_key']}): sha256 {actual[:12]} != recorded {node['sha256'][:12]}")
        return problems

    def export_parquet(self, artifact_ids: list[str], out_dir: Path) -> list[Path]:
        """The lineage of the given artifacts (with all ancestors) as Parquet, for offline audit."""
        written = []
        with self.reader() as connection:
            ids = set(artifact_ids)
            for (ancestors,) in connection.execute(
                    "SELECT ancestors FROM artifacts WHERE id IN (SELECT unnest(?::VARCHAR[]))", [sorted(ids)]).fetchall():
                ids.update(ancestors or [])
            id_list = sorted(ids)
            for name, query in (
                    ("lineage_artifacts.parquet", "SELECT * FROM artifacts WHERE id IN (SELECT unnest(?::VARCHAR[])) ORDER BY id"),
                    ("lineage_edges.parquet", "SELECT * FROM edges WHERE child_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY ALL")):
                target = out_dir / name
                temporary = out_dir / f".{name}.{uuid.uuid4().hex}.tmp"
                connection.execute(f"COPY ({query}) TO '{temporary}' (FORMAT parquet)", [id_list])
                os.replace(temporary, target)
                written.append(target)
        return written

    def counts(self) -> dict:
        with self.reader() as connection:
            artifacts = connection.execute("SELECT count(*) FROM artifacts").fetchone()[0]
            edges = connection.execute("SELECT count(*) FROM edges").fetchone()[0]
        return {"artifacts": artifacts, "edges": edges}


def _insert_many(connection, table: str, rows: list[tuple], chunk: int = 500) -> None:
    """Multi-row INSERT statements: one round trip per chunk (executemany is one per row)."""
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        row_sql = "(" + ", ".join("?" * len(part[0])) + ")"
        connection.execute(f"INSERT OR IGNORE INTO {table} VALUES " + ", ".join([row_sql] * len(part)),
                           [value for row in part for value in row])


def _row_dict(row) -> dict:
    keys = ("id", "path", "sha256", "asset_key", "partition_key", "run_id", "code_version", "created_at", "params",
            "backend", "data_version")
    result = dict(zip(keys, row))
    for key in ("params", "backend"):
        if isinstance(result[key], str):
            result[key] = json.loads(result[key])
    if result["created_at"] is not None and not isinstance(result["created_at"], str):
        result["created_at"] = result["created_at"].isoformat()
    return result


def format_tree(node: dict, indent: str = "", last: bool = True, top: bool = True,
                shown: set[str] | None = None) -> list[str]:
    """The ancestry tree as text, one artifact per line with its step's parameters.

    A subtree already printed (a cut-out used by both the layout and the composite) is
    printed once; later occurrences say so instead of repeating it.
    """
    shown = set() if shown is None else shown
    branch = "" if top else ("└─ " if last else "├─ ")
    role = f"[{node['role']}] " if node.get("role") else ""
    if node.get("missing_row"):
        return [f"{indent}{branch}{role}{node['id']} (no lineage row)"]
    partition = f"[{node['partition_key']}]" if node.get("partition_key") else ""
    repeated = node["id"] in shown and node["parents"]
    lines = [f"{indent}{branch}{role}{node['asset_key']}{partition} {node['path']}  sha256 {node['sha256'][:16]}  "
             f"run {str(node['run_id'])[:8]}  code {node['code_version']}  id {node['id']}"
             + ("  (ancestry shown above)" if repeated else "")]
    if repeated:
        return lines
    shown.add(node["id"])
    child_indent = indent + ("" if top else ("   " if last else "│  "))
    if node.get("params"):
        lines.append(f"{child_indent}    params: {json.dumps(node['params'], sort_keys=True)}")
    for i, parent in enumerate(node["parents"]):
        lines += format_tree(parent, child_indent, i == len(node["parents"]) - 1, top=False, shown=shown)
    return lines
