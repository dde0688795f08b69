"""Never version damage: find files edited since their step recorded them, and drop the DVC cache
objects such an edit reached.

The cache is hard-linked to the data (``cache.type hardlink``): a data file and its cache object
are one inode. gen4gen replaces files by rename (a new inode), which never touches the cache; but an
edit in place (a file opened ``r+b``; read-only permissions do not stop root) rewrites the cache
object too, which then holds the edited bytes under the old md5, in every version that names it.
:func:`quarantine_edited` removes such objects; the caller then restores the file by rename and
the next commit puts a correct object back (or ``gen4gen dvc pull`` fetches it from the remote).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..config import PipelineConfig
from .command import DvcUnavailable, available_dvc
from .lockfiles import cache_dir, cache_object, committed_md5s


def record_files(records, data_dir: Path, within: list[Path] | None = None) -> dict[Path, str]:
    """{file: sha256} of lineage records (``.path``, ``.sha256``) that name files in the data folder,
    only those inside one of ``within`` when given (packaged photos and outside files are left out)."""
    roots = [p.resolve() for p in within] if within is not None else None
    files: dict[Path, str] = {}
    for record in records:
        text = str(record.path)
        if text.startswith("pkg:"):
            continue
        path = Path(text) if Path(text).is_absolute() else data_dir / text
        resolved = path.resolve()
        if roots is not None and not any(resolved == r or resolved.is_relative_to(r) for r in roots):
            continue
        files[resolved] = record.sha256
    return files


def find_edited(records, data_dir: Path, within: list[Path] | None = None) -> list[Path]:
    """Files of ``records`` whose bytes on disk are no longer the recorded sha256 (or are gone)."""
    from ..io import sha256_file

    expected = record_files(records, data_dir, within)

    def differs(item: tuple[Path, str]) -> bool:
        path, sha = item
        try:
            return sha256_file(path) != sha
        except OSError:
            return True

    items = sorted(expected.items())
    if len(items) > 8:  # hashlib releases the GIL on large buffers: threads hash files in parallel
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            flags = list(pool.map(differs, items))
    else:
        flags = [differs(item) for item in items]
    return [path for (path, _), flag in zip(items, flags) if flag]


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def quarantine_edited(config: PipelineConfig, files: list[Path]) -> list[str]:
    """Remove every DVC cache object that an in-place edit of ``files`` reached; returns their paths.

    ``files`` are data files the caller found edited (their bytes no longer match the recorded
    sha256). Removed: objects that share a file's inode (hard or symbolic link into the cache), and
    the object of the md5 the workspace's dvc.lock records for a file when its content no longer
    hashes to its name (the file was already replaced by a new inode). Nothing is removed when DVC
    is not in use. Runs under gen4gen's DVC lock and DVC's repository lock, so no DVC command
    reads the cache meanwhile. Data files sharing the inode stay edited: restore them by rename.
    """
    if not files:
        return []
    try:
        dvc = available_dvc(config)
    except DvcUnavailable:  # DVC off or absent: no cache to protect
        return []
    with dvc.serialised(), dvc.repository_lock():
        return quarantine_locked(dvc.root, [Path(f) for f in files])


def quarantine_locked(root: Path, files: list[Path]) -> list[str]:
    """:func:`quarantine_edited` for a caller that already holds both locks."""
    cache = cache_dir(root)
    objects = cache / "files" / "md5"
    inodes: set[tuple[int, int]] = set()
    for file in files:
        try:
            stat = file.stat()  # follows a symlink into the cache to the object itself
        except OSError:
            continue
        if stat.st_nlink > 1 or file.is_symlink():
            inodes.add((stat.st_dev, stat.st_ino))
    doomed: set[Path] = set()
    if inodes and objects.is_dir():
        numbers = {ino for _, ino in inodes}
        for bucket in os.scandir(objects):
            if not bucket.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(bucket.path):
                # DirEntry.inode() needs no stat on Linux: one cheap pass over a large cache.
                if entry.inode() in numbers and entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    if (stat.st_dev, stat.st_ino) in inodes:
                        doomed.add(Path(entry.path))
    for md5 in set(committed_md5s(root, files, cache).values()):
        candidate = cache_object(cache, md5)
        if candidate in doomed or not candidate.is_file():
            continue
        try:
            if md5_file(candidate) != md5:
                doomed.add(candidate)
        except OSError:
            continue
    removed = []
    for path in sorted(doomed):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(str(path))
    return removed
