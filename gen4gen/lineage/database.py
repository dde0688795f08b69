"""The DuckDB index of the journals: schema, opening (and recognising a damaged file), locking.

DuckDB allows one writing process; :func:`locked` serialises access across Dagster's step
processes (writers exclusive, readers shared) and waits rather than fails.
"""
from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from ..locking import file_lock

SCHEMA_VERSION = "2"

SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    id VARCHAR PRIMARY KEY,      -- place, bytes and parents' ids (records.artifact_id)
    content_id VARCHAR NOT NULL, -- place and bytes only
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
    seq BIGINT NOT NULL          -- ingestion order: the newest row of a path or content wins
);
CREATE TABLE IF NOT EXISTS edges (
    child_id VARCHAR NOT NULL,
    parent_id VARCHAR NOT NULL,
    role VARCHAR NOT NULL,
    PRIMARY KEY (child_id, parent_id, role)
);
-- Every ancestor of every artifact, except through edges of aggregate roles: an audit is one
-- indexed lookup here plus one on artifacts, at any database size.
CREATE TABLE IF NOT EXISTS closure (
    descendant_id VARCHAR NOT NULL,
    ancestor_id VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS journals (
    path VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    size BIGINT,
    mtime_ns BIGINT,
    seq BIGINT NOT NULL,
    rows INTEGER,
    ingested_at TIMESTAMP,
    PRIMARY KEY (path, sha256)
);
CREATE TABLE IF NOT EXISTS settings (key VARCHAR PRIMARY KEY, value VARCHAR);
-- The composite primary key cannot serve lookups by child alone; audits need this one.
CREATE INDEX IF NOT EXISTS edges_by_child ON edges (child_id);
CREATE INDEX IF NOT EXISTS edges_by_parent ON edges (parent_id);
CREATE INDEX IF NOT EXISTS artifacts_by_path ON artifacts (path);
CREATE INDEX IF NOT EXISTS artifacts_by_content ON artifacts (content_id);
CREATE INDEX IF NOT EXISTS closure_by_descendant ON closure (descendant_id);
CREATE INDEX IF NOT EXISTS closure_by_ancestor ON closure (ancestor_id);
"""

# Messages of DuckDB errors that mean the file itself is unreadable (truncated, overwritten).
_DAMAGE_SIGNS = ("not a valid duckdb database", "could not read enough bytes", "checksum", "corrupt",
                 "serialization error", "internal error", "invalid block", "failed to read")


class LineageDatabaseDamaged(RuntimeError):
    """The lineage database file cannot be read; the journals on disk can rebuild it."""

    def __init__(self, db_path: Path, cause: BaseException | None = None):
        self.db_path = Path(db_path)
        detail = f" ({str(cause).strip().splitlines()[0]})" if cause is not None and str(cause).strip() else ""
        super().__init__(f"the lineage database {self.db_path} is damaged{detail}; run `gen4gen lineage rebuild` "
                         "to move it aside and rebuild it from the journals kept beside the data")


def chunks(items: list, size: int = 500):
    """Slices of ``items``; IN lists of bound constants are answered from the index, up to a size."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def placeholders(count: int) -> str:
    """``(?, ?, ...)``: the values themselves are always bound, never pasted."""
    return "(" + ", ".join("?" * count) + ")"


def folder(data_dir: Path) -> Path:
    return Path(data_dir) / "lineage"


def db_path(data_dir: Path) -> Path:
    return folder(data_dir) / "lineage.duckdb"


def lock_path(data_dir: Path) -> Path:
    return folder(data_dir) / "lineage.lock"


def looks_damaged(exc: BaseException) -> bool:
    import duckdb

    text = str(exc).lower()
    if not isinstance(exc, duckdb.Error) or "no space left" in text or "could not set lock" in text:
        return False
    return any(sign in text for sign in _DAMAGE_SIGNS)


@contextmanager
def locked(data_dir: Path, *, exclusive: bool, timeout_s: float = 600.0) -> Iterator[None]:
    """Hold the lineage lock; waits up to ``timeout_s`` for a stuck holder, then says so."""
    with file_lock(lock_path(data_dir), exclusive=exclusive, timeout_s=timeout_s,
                   describe=lambda: f"lineage database {db_path(data_dir)} stayed locked for {timeout_s:.0f} s; "
                                    "is a process stuck?"):
        yield


def connect(data_dir: Path, *, read_only: bool = False):
    """Open (creating when absent) the database; callers hold :func:`locked`.

    A file DuckDB cannot read raises :class:`LineageDatabaseDamaged` instead of DuckDB's error.
    """
    import duckdb

    path = db_path(data_dir)
    is_new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        connection = duckdb.connect(str(path), read_only=read_only and not is_new)
    except duckdb.Error as exc:
        if looks_damaged(exc):
            raise LineageDatabaseDamaged(path, exc) from exc
        raise
    try:
        # Every result is fetched to the end: DuckDB refuses relational queries on a connection
        # that still holds an unfinished one.
        connection.execute("SET enable_progress_bar = false").fetchall()  # bulk inserts would draw bars
        if is_new:  # callers hold the lock, so exactly one process creates the schema
            connection.execute(SCHEMA).fetchall()
            connection.execute("INSERT INTO settings VALUES ('schema_version', ?)", [SCHEMA_VERSION]).fetchall()
        else:
            rows = connection.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchall()
            version = rows[0] if rows else None
            if version is None or version[0] != SCHEMA_VERSION:
                raise LineageDatabaseDamaged(path, RuntimeError(f"schema version {version and version[0]} is not "
                                                                f"{SCHEMA_VERSION}"))
    except duckdb.CatalogException as exc:  # an older layout without the settings table
        connection.close()
        raise LineageDatabaseDamaged(path, RuntimeError(f"an older lineage layout ({exc})")) from exc
    except duckdb.Error as exc:
        connection.close()
        if looks_damaged(exc):
            raise LineageDatabaseDamaged(path, exc) from exc
        raise
    except BaseException:
        connection.close()
        raise
    return connection


@contextmanager
def transaction(connection) -> Iterator[None]:
    """BEGIN ... COMMIT; on failure roll back without ever hiding the original error.

    DuckDB aborts the transaction itself on some errors (a full disk among them), after which
    ROLLBACK fails with "no transaction is active"; that second error is only noted.
    """
    connection.execute("BEGIN TRANSACTION")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException as exc:
        try:
            connection.execute("ROLLBACK")
        except Exception as rollback_error:  # noqa: BLE001 - the first error is the one to report
            exc.add_note(f"(rolling back afterwards failed too: {rollback_error})")
        raise


def move_aside(data_dir: Path) -> Path | None:
    """Rename the database (and its write-ahead log) to ``lineage.duckdb.damaged-<UTC time>``; never deletes."""
    path = db_path(data_dir)
    if not path.exists():
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    path.rename(target)
    wal = path.with_name(path.name + ".wal")
    if wal.exists():
        wal.rename(target.with_name(target.name + ".wal"))
    return target
