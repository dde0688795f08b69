"""The ``dvc`` executable bound to one repository: errors, locks, and running a command.

Every gen4gen DVC operation holds our lock (``.dvc/tmp/gen4gen.lock``), so step processes run
DVC one at a time; DVC's own repository lock (``.dvc/tmp/lock``, a ``flock`` as DVC's
zc.lockfile takes it) is held while we edit stage files, and waited for before each command.
Both go through :func:`gen4gen.locking.file_lock`.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..config import PROJECT_ROOT, PipelineConfig, resolve_path
from ..locking import LockTimeout, file_lock

# Messages of DVC that mean "another DVC process holds the repository": wait and retry.
LOCK_MARKERS = ("Unable to acquire lock", "is busy, it is being blocked by")
PLUGIN_MARKER = "is supported, but requires"


class DvcError(RuntimeError):
    """A DVC operation that did not happen; ``advice`` says what to do about it."""

    def __init__(self, message: str, advice: str = ""):
        self.message = message
        self.advice = advice
        super().__init__(f"{message}\n{advice}" if advice else message)


class DvcUnavailable(DvcError):
    """DVC is switched off, not installed, or the data folder is not in a DVC repository."""


class DvcLocked(DvcError):
    """The repository stayed locked by another DVC process for longer than ``lock_wait_s``."""


@dataclass
class Dvc:
    """The ``dvc`` executable bound to one repository, with our lock and lock-wait retries."""

    executable: Path
    root: Path
    lock_wait_s: float = 300.0
    # Seconds spent waiting for locks (ours and DVC's) by the calls of this object.
    waited_s: float = 0.0

    @classmethod
    def from_config(cls, config: PipelineConfig) -> "Dvc":
        return cls(executable=resolve_path(config.dvc.executable), root=repository_root(config),
                   lock_wait_s=config.dvc.lock_wait_s)

    @property
    def lock_path(self) -> Path:
        return self.root / ".dvc" / "tmp" / "gen4gen.lock"

    @property
    def dvc_lock_path(self) -> Path:
        return self.root / ".dvc" / "tmp" / "lock"

    def env(self) -> dict:
        """The environment of a DVC process: no Python settings of ours leak into DVC's interpreter."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        env.update(DVC_NO_ANALYTICS="1", DVC_STUDIO_OFFLINE="1", GIT_TERMINAL_PROMPT="0")
        return env

    def _count_wait(self, seconds: float) -> None:
        self.waited_s += seconds

    @contextmanager
    def serialised(self):
        """Our lock: one gen4gen DVC operation at a time across processes (waits, never fails early)."""
        with self._locked(self.lock_path, lambda: "another gen4gen process is running DVC"):
            yield

    @contextmanager
    def repository_lock(self):
        """DVC's own repository lock, held while we edit dvc.yaml / dvc.lock or the cache, so that
        no DVC process reads them half-edited."""
        with self._locked(self.dvc_lock_path, self.lock_holder):
            yield

    @contextmanager
    def _locked(self, path: Path, holder):
        # Only a timeout while taking the lock is ours to report; one raised in the block is not.
        held = ExitStack()
        try:
            held.enter_context(file_lock(path, timeout_s=self.lock_wait_s, poll_s=0.05, waited=self._count_wait))
        except LockTimeout:
            raise self.locked_error(holder()) from None
        with held:
            yield

    def wait_until_unlocked(self, deadline: float) -> None:
        """Wait for DVC's repository lock to be free (faster than DVC's own 3 s attempts); at the
        deadline, return and let DVC report it."""
        if not self.dvc_lock_path.exists():
            return
        began = time.monotonic()
        try:
            with file_lock(self.dvc_lock_path, timeout_s=max(0.0, deadline - began), poll_s=0.05):
                pass
        except LockTimeout:
            pass
        self._count_wait(time.monotonic() - began)

    def lock_holder(self) -> str:
        try:
            pid = self.dvc_lock_path.read_text().strip()
        except OSError:
            pid = ""
        return f"another DVC process{f' (pid {pid})' if pid.isdigit() else ''} holds the repository lock"

    def locked_error(self, holder: str) -> DvcLocked:
        return DvcLocked(
            f"the DVC repository {self.root} stayed locked for {self.lock_wait_s:.0f} s: {holder}",
            "Wait for that DVC command to finish (or end it), then run `gen4gen dvc commit` to commit the "
            "materialised data; nothing was committed meanwhile and no data or lineage was lost. "
            "A lock left by a killed process is released by the system; raise [dvc] lock_wait_s to wait longer.")

    def run(self, *args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
        """``dvc <args>`` in the repository; a locked repository is waited for and retried."""
        from .workers import execute

        if not self.executable.is_file():
            raise not_installed(self.executable)
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            self.wait_until_unlocked(deadline)
            began = time.monotonic()
            result = execute(self, list(args), timeout)
            output = result.stdout + result.stderr
            if result.returncode != 0 and any(marker in output for marker in LOCK_MARKERS):
                self.waited_s += time.monotonic() - began
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise self.locked_error(self.lock_holder())
            if check and result.returncode != 0:
                raise DvcError(f"`dvc {shlex.join(args)}` failed in {self.root}: {dvc_error_text(output)}")
            return result


def dvc_error_text(output: str) -> str:
    """DVC's error message (from its first ERROR line on, without the support footer)."""
    lines = [line.strip() for line in output.splitlines() if line.strip() and "Having any troubles?" not in line]
    first = next((i for i, line in enumerate(lines) if line.startswith("ERROR")), None)
    chosen = lines[first:] if first is not None else lines[-3:]
    text = " ".join(line.removeprefix("ERROR:").strip() for line in chosen)
    return (text[:1500] + " ...") if len(text) > 1500 else (text or "no message")


def not_installed(executable: Path) -> DvcUnavailable:
    return DvcUnavailable(f"DVC is not installed at {executable}",
                          "Run `make dvc-setup` (DVC 3.67.1 in its own environment, .venv-dvc/, plus the repository "
                          "settings and a local remote), or set [dvc] executable to a `dvc` command, or "
                          "[dvc] enabled = false to switch versioning off.")


def repository_root(config: PipelineConfig) -> Path:
    return resolve_path(config.dvc.root) if config.dvc.root else PROJECT_ROOT


def unavailable_reason(config: PipelineConfig) -> DvcUnavailable | None:
    """Why DVC cannot version this data folder now (None: it can)."""
    if not config.dvc.enabled:
        return DvcUnavailable("DVC versioning is switched off ([dvc] enabled = false)",
                              "Set [dvc] enabled = true and run `gen4gen dvc commit` to version the data.")
    if os.environ.get("DVC_STAGE"):
        return DvcUnavailable(f"running inside `dvc repro` (stage {os.environ['DVC_STAGE']}): DVC records the outputs "
                              "itself")
    executable = resolve_path(config.dvc.executable)
    if not executable.is_file():
        return not_installed(executable)
    root = repository_root(config)
    if not (root / ".dvc").is_dir():
        return DvcUnavailable(f"{root} is not a DVC repository (no .dvc/ folder)",
                              "Run `make dvc-setup` (or `gen4gen dvc setup`), or point [dvc] root at the repository.")
    data = config.paths.data.resolve()
    if not data.is_relative_to(root.resolve()):
        return DvcUnavailable(f"the data folder {data} is outside the DVC repository {root}",
                              "DVC versions files inside its repository only: set [dvc] root to a repository "
                              "that contains the data folder (or move the data folder into it).")
    return None


def available_dvc(config: PipelineConfig) -> Dvc:
    """The repository's DVC, or the DvcUnavailable error that says why not and what to do."""
    unavailable = unavailable_reason(config)
    if unavailable is not None:
        raise unavailable
    return Dvc.from_config(config)
