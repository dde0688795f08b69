"""The platform's cross-process locks (lineage, DVC, partitions).

``flock`` locks (:func:`file_lock`) are released by the system when their holder dies, so a
killed process never leaves a lock behind. They hold on one machine (and on filesystems that
forward ``flock``). Across machines, a partition's lock is :func:`run_lock`: owned by a Dagster run.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


class LockTimeout(TimeoutError):
    """The lock stayed taken longer than the caller was prepared to wait."""


@contextmanager
def file_lock(path: str | os.PathLike, *, exclusive: bool = True, timeout_s: float | None = 600.0,
              poll_s: float = 0.02, describe: Callable[[], str] | None = None,
              waited: Callable[[float], None] | None = None) -> Iterator[None]:
    """Hold ``flock`` on ``path`` (created if needed) for the ``with`` block.

    Waits up to ``timeout_s`` (``None``: for ever, ``0``: not at all), then raises
    :class:`LockTimeout` whose message is ``describe()`` when given. ``waited`` receives the
    seconds spent waiting.
    """
    lock_path = Path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        began = time.monotonic()
        while True:
            try:
                fcntl.flock(handle, mode)
                break
            except BlockingIOError:
                if timeout_s is not None and time.monotonic() - began >= timeout_s:
                    raise LockTimeout(describe() if describe else
                                      f"{lock_path} stayed locked for {timeout_s:.0f} s") from None
                time.sleep(poll_s)
        if waited is not None:
            waited(time.monotonic() - began)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def try_lock(path: str | os.PathLike):
    """``file_lock`` that does not wait: a context manager, or ``None`` when the lock is taken."""
    lock = file_lock(path, timeout_s=0)
    try:
        lock.__enter__()
    except LockTimeout:
        return None
    return _Held(lock)


class _Held:
    def __init__(self, lock):
        self._lock = lock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)


@contextmanager
def run_lock(path: str | os.PathLike, owner: str, owner_running: Callable[[str], bool], *,
             poll_s: float = 0.5, timeout_s: float | None = None) -> Iterator[None]:
    """A lock held by a run (``owner``, its id), for machines that share a filesystem but not ``flock``.

    Taking it is an exclusive create of ``path``, which NFS (v3 and later), Lustre and GPFS do
    atomically, holding the owner's id. A contender waits while ``owner_running(holder)`` says the
    holder's run goes on, asked of the shared Dagster instance, and takes over the lock of a run
    that ended (finished, failed, or marked dead): no lease time, so no clock of any host matters.
    A lock left by an earlier attempt of the same run is taken over too (steps of one partition
    never run twice at once in a run).
    """
    import json
    import socket
    import uuid

    lock_path = Path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    record = json.dumps({"run_id": owner, "host": socket.gethostname(), "pid": os.getpid()})
    began = time.monotonic()
    empty_seen = 0
    while True:
        try:
            handle = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock_path)
            if holder is None:  # being written now, or its writer died between create and write
                empty_seen += 1
                stale = empty_seen * poll_s >= 30.0
            else:
                empty_seen = 0
                stale = holder == owner or not owner_running(holder)
            if stale:
                _take_over(lock_path, holder, uuid.uuid4().hex[:8])
                continue
            if timeout_s is not None and time.monotonic() - began >= timeout_s:
                raise LockTimeout(f"{lock_path} is held by run {holder}, still in progress") from None
            time.sleep(poll_s)
            continue
        try:
            os.write(handle, record.encode())
            os.fsync(handle)
        finally:
            os.close(handle)
        break
    try:
        yield
    finally:
        if _lock_holder(lock_path) == owner:
            lock_path.unlink(missing_ok=True)


def _lock_holder(lock_path: Path) -> str | None:
    import json

    try:
        return json.loads(lock_path.read_text(encoding="utf-8"))["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _take_over(lock_path: Path, holder: str | None, token: str) -> None:
    """Move a stale lock aside; if another contender replaced it meanwhile, put theirs back."""
    aside = lock_path.with_name(f"{lock_path.name}.stale-{token}")
    try:
        os.rename(lock_path, aside)
    except FileNotFoundError:
        return  # another contender took it over first
    if _lock_holder(aside) != holder:
        try:
            os.link(aside, lock_path)  # theirs, taken over by mistake: back unless a third made one
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)
