"""Journals: the durable record of one step's files, kept beside the outputs they describe.

A step writes its files, then one journal (atomically): a JSON line per file with its hash,
its parents (path, hash and role), the run and the parameters. The journal is never deleted:
the database is an index rebuilt from journals (``gen4gen lineage rebuild``), and a partition
that is rebuilt replaces its folder, journal included, while the database keeps the old rows.
"""
from __future__ import annotations

import errno
import json
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from ..io import atomic_write_text
from .records import ArtifactRecord, relative_path

JOURNAL_NAME = "lineage.journal.jsonl"
# Where journals went before they lived beside their outputs; still read, and written for
# callers that name no journal file.
LEGACY_JOURNAL_FOLDER = ("lineage", "journal")
JOURNAL_FORMAT = 2
# Partition folders sit at most this deep under the data folder (build/segmented/<concept>).
MAX_JOURNAL_DEPTH = 3


def legacy_journal_folder(data_dir: Path) -> Path:
    return data_dir.joinpath(*LEGACY_JOURNAL_FOLDER)


def legacy_journal_file(data_dir: Path) -> Path:
    """A fresh journal name in the legacy folder (nanoseconds only break ties within a stage)."""
    return legacy_journal_folder(data_dir) / f"{time.time_ns():020d}-{uuid.uuid4().hex}.jsonl"


def _stored_path(path: str | os.PathLike, data_dir: Path | None) -> str:
    if data_dir is not None:
        return relative_path(path, data_dir)
    text = str(path)
    # Without a data folder, absolute paths; the ingester makes them relative to its own.
    return text if text.startswith("pkg:") or os.path.isabs(text) else str(Path(text).resolve())


def journal_lines(records: list[ArtifactRecord], *, asset_key: str, partition_key: str | None, run_id: str,
                  code_version: str | None, params: dict | None, backend: dict | str | None,
                  data_version: str | None = None, data_dir: Path | None = None) -> str:
    now = datetime.now(timezone.utc).isoformat()
    lines = []
    for record in records:
        lines.append(json.dumps({
            "format": JOURNAL_FORMAT, "path": _stored_path(record.path, data_dir), "sha256": record.sha256,
            "asset_key": record.asset_key or asset_key, "partition_key": partition_key, "run_id": run_id,
            "code_version": code_version, "created_at": now,
            "params": record.params if record.params is not None else params,
            "backend": backend, "data_version": data_version,
            "parents": [{"path": _stored_path(p, data_dir), "sha256": sha, "role": role}
                        for p, sha, role in record.parents],
        }, sort_keys=True, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def write_journal(journal_file: Path, records: list[ArtifactRecord], *, asset_key: str, partition_key: str | None,
                  run_id: str, code_version: str | None, params: dict | None, backend: dict | str | None,
                  data_version: str | None = None, data_dir: Path | None = None) -> Path | None:
    """Write one step's journal atomically at ``journal_file``; ``None`` when there is nothing to record.

    ``data_dir`` makes paths relative to the data folder now; without it they are written
    absolute and made relative at ingestion. A failed write (a full disk) leaves no file and
    raises the system's error with the journal's path.
    """
    if not records:
        return None
    text = journal_lines(records, asset_key=asset_key, partition_key=partition_key, run_id=run_id,
                         code_version=code_version, params=params, backend=backend, data_version=data_version,
                         data_dir=data_dir)
    journal_file = Path(journal_file)
    try:
        return atomic_write_text(journal_file, text)
    except OSError as exc:
        if exc.filename is None:  # fsync and write name no file; the user needs to know which
            raise OSError(exc.errno or errno.EIO, exc.strerror or str(exc), str(journal_file)) from exc
        raise


def discover_journals(data_dir: Path) -> list[Path]:
    """Every journal under the data folder, sorted by path.

    Files named ``JOURNAL_NAME`` one to three folders deep, skipping any folder whose name starts
    with ``.`` (staging folders of steps still running), plus the legacy journal folder.
    """
    found: list[Path] = []
    level = [Path(data_dir)]
    for _ in range(MAX_JOURNAL_DEPTH):
        next_level = []
        for folder in level:
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                candidate = Path(entry.path) / JOURNAL_NAME
                if candidate.is_file():
                    found.append(candidate)
                next_level.append(Path(entry.path))
        level = next_level
    legacy = legacy_journal_folder(Path(data_dir))
    if legacy.is_dir():
        found += [p for p in legacy.glob("*.jsonl") if not p.name.startswith(".")]
    return sorted(found)


def parse_journal(data: bytes) -> list[dict]:
    """The rows of a journal's bytes (blank lines skipped)."""
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
