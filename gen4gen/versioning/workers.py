"""Running DVC commands: in a long-lived worker process when possible, else one subprocess each.

A DVC command costs about 1 s, nearly all of it Python starting and importing DVC. A worker in
DVC's environment (:mod:`gen4gen.versioning.worker`) imports DVC once and runs
``dvc.cli.main(argv)`` per request (as DVC's own test suite does), which brings a commit of a
small stage to about 0.2 s. One worker per gen4gen process; requests are serialised by our lock
anyway. Without a Python interpreter beside the executable (a standalone ``dvc`` binary), with
``GEN4GEN_DVC_WORKER=0``, or if the worker dies, each command is a subprocess of its own.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .command import Dvc

WORKER_MODULE = "gen4gen.versioning.worker"
# The folder that holds the gen4gen package (a checkout, or an editable install's source).
PACKAGE_PARENT = Path(__file__).resolve().parents[2]

_workers: dict[tuple, subprocess.Popen] = {}


def interpreter(executable: Path) -> Path | None:
    """The Python of DVC's environment: beside the executable, else its script's shebang."""
    for name in ("python", "python3"):
        candidate = executable.parent / name
        if candidate.is_file():
            return candidate
    try:
        first = executable.read_bytes()[:200].split(b"\n", 1)[0]
    except OSError:
        return None
    if first.startswith(b"#!") and b"python" in first:
        candidate = Path(first[2:].decode("utf-8", "replace").strip().split()[0])
        return candidate if candidate.is_file() else None
    return None


def worker_import_path() -> Path:
    """A folder to put on DVC's interpreter's path so that it finds ``gen4gen`` and nothing else
    of ours: the package's parent when that is a source tree; for an installed package (beside
    other packages, which would shadow DVC's own dependencies) a folder holding only a link to it."""
    if PACKAGE_PARENT.name not in ("site-packages", "dist-packages"):
        return PACKAGE_PARENT
    package = PACKAGE_PARENT / "gen4gen"
    folder = Path(tempfile.gettempdir()) / (
        f"gen4gen-dvc-worker-{os.getuid()}-" + hashlib.sha256(str(package).encode()).hexdigest()[:12])
    folder.mkdir(exist_ok=True)
    link = folder / "gen4gen"
    if not link.is_symlink() or Path(os.readlink(link)) != package:
        staged = folder / f".gen4gen.{os.getpid()}"
        staged.unlink(missing_ok=True)
        staged.symlink_to(package, target_is_directory=True)
        os.replace(staged, link)  # atomic: a concurrent starter sees the old link or the new one
    return folder


def worker_command(python: Path) -> list[str]:
    return [str(python), "-m", WORKER_MODULE]


def worker_env(dvc: "Dvc") -> dict:
    """DVC's environment, with our package on the path and the working directory off it (a
    repository's own files must not shadow a module)."""
    return {**dvc.env(), "PYTHONPATH": str(worker_import_path()), "PYTHONSAFEPATH": "1"}


def worker_for(dvc: "Dvc") -> subprocess.Popen | None:
    """This process's worker for ``dvc``'s executable, started if needed (None: none can run)."""
    if os.environ.get("GEN4GEN_DVC_WORKER", "1") == "0":
        return None
    env = worker_env(dvc)
    key = (os.getpid(), str(dvc.executable), hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest())
    worker = _workers.get(key)
    if worker is not None and worker.poll() is None:
        return worker
    python = interpreter(dvc.executable)
    if python is None:
        return None
    for old_key in [k for k in _workers if k[:2] == key[:2]]:
        stop_worker(_workers.pop(old_key))
    worker = subprocess.Popen(worker_command(python), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env=env, text=True, encoding="utf-8", cwd=dvc.root)
    _workers[key] = worker
    return worker


def stop_worker(worker: subprocess.Popen) -> None:
    try:
        worker.stdin.close()
        worker.wait(timeout=5)
    except Exception:  # noqa: BLE001 - it is going away either way
        worker.kill()
        worker.wait()


def stop_workers() -> None:
    for key in list(_workers):
        stop_worker(_workers.pop(key))


atexit.register(stop_workers)


def execute(dvc: "Dvc", args: list[str], timeout: float | None) -> subprocess.CompletedProcess:
    """Run one DVC command: in the worker when there is one, else as a subprocess."""
    worker = worker_for(dvc)
    if worker is not None:
        try:
            worker.stdin.write(json.dumps({"argv": args, "cwd": str(dvc.root)}) + "\n")
            worker.stdin.flush()
            line = worker.stdout.readline()
            if line:
                answer = json.loads(line)
                return subprocess.CompletedProcess([str(dvc.executable), *args], answer["rc"], answer["out"],
                                                   answer["err"])
        except (OSError, ValueError):
            pass
        worker.kill()  # it died mid-command: DVC's own lock protects the repository; rerun as a subprocess
        worker.wait()
    return subprocess.run([str(dvc.executable), *args], cwd=dvc.root, env=dvc.env(), text=True,
                          capture_output=True, timeout=timeout)
