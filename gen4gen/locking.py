"""One file-lock helper for every cross-process lock of the platform (lineage, DVC, partitions).

``flock`` locks are released by the system when their holder dies, so a killed process never
leaves a lock behind. They hold on one machine (and on filesystems that forward ``flock``).
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
