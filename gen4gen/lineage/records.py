"""What a step records about a file, and the ids lineage rows are keyed by."""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

PACKAGED_PREFIX = "pkg:"

# Parents with these roles are *listed* by an aggregate file (a manifest, metadata.jsonl, the
# rejections): the edge is kept, but the aggregate does not inherit their ancestry, so no row
# stands for a whole dataset's history and the database grows with the files, not with
# files x publishes.
AGGREGATE_ROLES = frozenset({"listed", "rejected"})

# The pipeline's assets, parents before children: journals of one ingestion are taken in this
# order (after their explicit references), never by the time their host wrote them.
STAGE_ORDER = ("scene_bank", "concept_images", "segmented_foregrounds", "layouts", "composed_images",
               "recoloured_images", "captions", "mycanvas", "evaluation_report")


def stage_rank(asset_key: str | None) -> int:
    """Position of an asset in the pipeline; assets the pipeline does not know come last."""
    try:
        return STAGE_ORDER.index(asset_key)
    except ValueError:
        return len(STAGE_ORDER)


def relative_path(path: str | os.PathLike, data_dir: Path) -> str:
    """Paths inside the data folder are stored relative to it, so a moved dataset still audits."""
    text = str(path)
    if text.startswith(PACKAGED_PREFIX):
        return text
    # Most paths are plain children of the data folder as given: no need to resolve each one.
    prefix = str(data_dir).rstrip("/") + "/"
    if text.startswith(prefix) and os.path.isabs(text):
        rest = text[len(prefix):]
        parts = rest.split("/")
        if rest and not any(part in ("", ".", "..") for part in parts) and not _links_below(data_dir, parts):
            return rest
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(_resolved(str(data_dir))).as_posix()
    except ValueError:
        return str(resolved)


@functools.lru_cache(maxsize=64)
def _resolved(data_dir: str) -> Path:
    return Path(data_dir).resolve()


def _links_below(data_dir: Path, parts: list[str]) -> bool:
    """Whether a folder on the way from the data folder to the file is a link (it may lead out)."""
    folder = str(data_dir)
    for part in parts[:-1]:
        folder = os.path.join(folder, part)
        if os.path.islink(folder):
            return True
    return os.path.islink(os.path.join(folder, parts[-1]))


def artifact_id(path: str, sha256: str, parents: list[tuple[str, str]] | None = None) -> str:
    """The lineage id of a file: its place, its bytes and what it was made from.

    ``parents`` are ``(role, parent id)`` pairs. Without parents this is the file's *content
    id* (place and bytes only), which is also the id of a source file. With them, the same
    bytes made from other inputs get another id, so a regenerated file that happens to be
    byte-identical still points at its new ancestry.
    """
    text = f"{path}\0{sha256}"
    if parents:
        text += "\0" + "\0".join(f"{role}={parent}" for role, parent in sorted(set(parents)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def content_id(path: str, sha256: str) -> str:
    """Place and bytes only: what a caller that knows no ancestry (an export row) can name."""
    return artifact_id(path, sha256)


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
    from ..scenes import load_packaged_photo

    array = load_packaged_photo(name.removeprefix(PACKAGED_PREFIX))
    return hashlib.sha256(array.tobytes()).hexdigest()
