"""Partitions made current but not yet committed to DVC, and their commit.

A step leaves a marker when it makes its partition current; its own DVC commit removes it. The
markers left are committed by the next `gen4gen materialize` (a run killed in between), or by the
publish step when only it writes (``[regeneration] single_writer``: a cluster).
"""
from __future__ import annotations

from pathlib import Path


def dvc_pending_path(paths, stage: str, key: str | None) -> Path:
    """Marks a partition made current but not yet committed to DVC."""
    return paths.build / ".state" / "dvc_pending" / f"{stage}__{key or '_'}"


def commit_pending_dvc(config, log, exclude: tuple[str, ...] = ()) -> list[str]:
    """Commit the partitions made current but not committed to DVC (a killed run's, or every
    step's when only the publish step writes), except the stages in ``exclude``.

    Their files are checked against the sha256 their ``fingerprint.json`` recorded, as a step's
    own commit checks its records: a file edited since is never committed.
    """
    folder = config.paths.build / ".state" / "dvc_pending"
    if not folder.is_dir():
        return []
    pending = sorted(p for p in folder.iterdir() if p.name.partition("__")[0] not in exclude)
    if not pending:
        return []
    from gen4gen.fingerprints import STAGES, read_fingerprint
    from gen4gen.lineage import ArtifactRecord
    from gen4gen.versioning import ASSET_STAGES, commit_stages

    refs, records = [], []
    for marker in pending:
        stage, _, key = marker.name.partition("__")
        key = None if key == "_" else key
        refs.append((ASSET_STAGES[stage], key))
        partition = STAGES[stage].folder(config.paths, key)
        recorded = (read_fingerprint(partition) or {}).get("files") or {}
        records += [ArtifactRecord(str(partition / name), entry[0]) for name, entry in recorded.items()]
    outcome = commit_stages(config, refs, records=records)
    if outcome.status in ("committed", "skipped"):
        for marker in pending:
            marker.unlink(missing_ok=True)
    note = f"DVC: {outcome.status} {len(refs)} partition(s) waiting for their commit"
    if outcome.status == "failed":
        note += f" ({outcome.reason})"
    log(note)
    return [note]
