"""The DVC version of each lineage row (``artifacts.data_version``)."""
from __future__ import annotations

from pathlib import Path

from ..config import PipelineConfig
from .command import repository_root
from .lockfiles import read_locks


def record_lineage_versions(data_dir: Path, updates: dict[str, list[str]]) -> int:
    """Write DVC versions into ``artifacts.data_version`` (``{version: [artifact ids]}``)."""
    from ..lineage import discover_journals, label_data_versions
    from ..lineage.database import db_path

    updates = {version: ids for version, ids in updates.items() if ids}
    if not updates:
        return 0
    # A data folder without lineage (a benchmark's) gets no lineage database from us.
    if not db_path(data_dir).exists() and not discover_journals(data_dir):
        return 0
    return label_data_versions(data_dir, updates)


def lineage_ids_in(records, out: Path, data_dir: Path) -> list[str]:
    """Ids of the lineage rows of ``records`` (ArtifactRecord) whose file lies in ``out``."""
    from ..lineage import artifact_id, relative_path

    prefix = relative_path(out, data_dir)
    ids = []
    for record in records:
        path = relative_path(record.path, data_dir)
        if path == prefix or path.startswith(prefix + "/"):
            ids.append(artifact_id(path, record.sha256))
    return ids


def relabel_lineage(config: PipelineConfig) -> int:
    """Label the lineage rows of the files in committed outs with their out's version.

    A row matches by path and content (the file on disk has the row's sha256). Paths that already
    have a row labelled with their out's current version are skipped, so only files whose commit
    had failed (or was never made) are re-hashed.
    """
    from ..io import sha256_file
    from ..lineage import artifact_id, open_reader, relative_path
    from ..lineage.database import db_path

    root = repository_root(config)
    data = config.paths.data
    if not db_path(data).exists():
        return 0
    with open_reader(data) as reader:
        rows = reader.connection.execute("SELECT path, sha256, data_version FROM artifacts").fetchall()
    by_path: dict[str, list[tuple[str, str | None]]] = {}
    for path, sha, version in rows:
        by_path.setdefault(path, []).append((sha, version))
    updates: dict[str, list[str]] = {}
    for entry in read_locks(root).values():
        for out_path, out in entry["outs"].items():
            prefix = relative_path(root / out_path, data)
            for path, known in by_path.items():
                if not (path == prefix or path.startswith(prefix + "/")) or any(v == out["md5"] for _, v in known):
                    continue
                file = data / path
                if file.is_file():
                    digest = sha256_file(file)
                    updates.setdefault(out["md5"], []).extend(
                        artifact_id(path, sha) for sha, _ in known if sha == digest)
    return record_lineage_versions(data, updates)
