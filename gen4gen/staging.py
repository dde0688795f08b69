"""Atomic partitions: a stage writes into a staging folder, which becomes current in one step.

A directory rename cannot replace a non-empty directory, and shared filesystems have no
exchange-rename, so installing takes three renames, each atomic:

1. ``.NAME.staging-T`` (being written) → ``.NAME.ready-T`` — the new output is complete;
2. ``NAME`` → ``.NAME.old-T`` (when there is a current output);
3. ``.NAME.ready-T`` → ``NAME``.

A crash before 1 leaves the old output and a staging folder that the next run deletes; a crash
after 1 leaves a complete ready folder, which the next run installs (roll forward). Readers
see either the old complete folder or the new one; between 2 and 3 the folder is briefly
absent, which readers treat as "not built".
"""
from __future__ import annotations

import os
import shutil
import signal
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# Named moments where a test can have the process killed (``GEN4GEN_CRASH_AT=name``).
CRASH_ENV = "GEN4GEN_CRASH_AT"


def crash_point(name: str, *details: str) -> None:
    """Kill this process with SIGKILL when the test hook names this point (no cleanup runs).

    ``GEN4GEN_CRASH_AT=name`` stops at the first time the point is reached;
    ``name:detail`` only where the point is reached with that detail (e.g. a DVC stage's name).
    """
    wanted = os.environ.get(CRASH_ENV)
    if wanted and (wanted == name or wanted in (f"{name}:{d}" for d in details)):
        os.kill(os.getpid(), signal.SIGKILL)


def _sibling(final: Path, kind: str, token: str) -> Path:
    return final.parent / f".{final.name}.{kind}-{token}"


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``final``, on error it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    staging = _sibling(final, "staging", token)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    install(staging, final, token)


def install(staging: Path, final: Path, token: str) -> None:
    _fsync_dir(staging)
    ready = _sibling(final, "ready", token)
    os.rename(staging, ready)
    _fsync_dir(final.parent)
    crash_point("partition-staged")
    old = _sibling(final, "old", token)
    if final.exists():
        os.rename(final, old)
    os.rename(ready, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover(final: Path) -> list[str]:
    """Finish or undo what a killed writer left beside ``final``; returns what was done.

    Call it while holding the partition's writer lock (no writer is active).
    """
    parent = final.parent
    if not parent.is_dir():
        return []
    done = []
    prefix = f".{final.name}."
    leftovers = [p for p in parent.iterdir() if p.name.startswith(prefix)]
    ready = sorted((p for p in leftovers if p.name[len(prefix):].startswith("ready-")),
                   key=lambda p: p.stat().st_mtime_ns)
    if ready:
        newest = ready[-1]
        token = newest.name.rsplit("-", 1)[-1]
        if final.exists():
            os.rename(final, _sibling(final, "old", token))
        os.rename(newest, final)
        done.append(f"{final}: installed the complete output a killed run had staged")
    for path in leftovers:
        kind = path.name[len(prefix):].split("-", 1)[0]
        if path.exists() and kind in ("staging", "old", "ready"):
            shutil.rmtree(path, ignore_errors=True)
            if kind == "staging":
                done.append(f"{final}: removed an incomplete staging folder ({path.name})")
    old_install = [p for p in parent.iterdir() if p.name.startswith(prefix) and ".old-" in p.name]
    for path in old_install:
        shutil.rmtree(path, ignore_errors=True)
    return done


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link an unchanged file into a staging folder (no copy, same mtime); copy across devices."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
