"""DVC versioning of the data folder: plain functions around the ``dvc`` command (no Dagster).

Dagster orchestrates; DVC records versions. After an asset materialises a partition, its
folder is committed to the DVC cache as a DVC *stage* (``dvc commit --force <stage>``):

=========== ====================================  ==================  =============================================
stage       file                                  outs                deps
=========== ====================================  ==================  =============================================
catalogue   dvc.yaml                              build/concepts.json concepts/ (the photo folders)
segmented   dvc-stages/concepts/K/dvc.yaml        build/segmented/K   the concept's photo folder
layouts     dvc-stages/compositions/C/dvc.yaml    build/layouts/C     build/segmented/<each concept of C>, backgrounds/
composed    dvc-stages/compositions/C/dvc.yaml    build/composed/C    build/layouts/C, build/segmented/<concepts of C>
recoloured  dvc-stages/compositions/C/dvc.yaml    build/recoloured/C  build/composed/C, backgrounds/
captions    dvc-stages/compositions/C/dvc.yaml    build/captions/C    build/recoloured/C, build/layouts/C
mycanvas    dvc.yaml                              mycanvas/           build/captions/, build/recoloured/, overrides
reports     dvc.yaml                              reports/            mycanvas/
=========== ====================================  ==================  =============================================

(K a concept key, C a composition key; outs and deps are paths in the data folder, relative to
the repository root; deps that do not exist are left out.) Why the stage files are generated,
one small pair (dvc.yaml, dvc.lock) per partition:

* a composition depends on a variable number of concepts, and DVC cannot interpolate a list
  into the ``deps`` of a ``foreach`` stage ("Cannot interpolate data of type 'list'");
* DVC parses and rewrites the *whole* dvc.lock of a stage's dvc.yaml on every commit, with a
  pure-Python round-trip YAML parser (about 3,700 lines/s here): one lock for every partition
  would make each commit slower as the dataset grows (seconds per commit at a few hundred
  compositions). Per-partition files keep a commit's cost independent of the dataset's size.

Each commit merges the stages it commits into their file (other stages, including any a user
wrote into the top-level dvc.yaml, are kept) and removes the stage files of partitions that
left the catalogue. A stage's dvc.lock holds the md5 of every dep and out; the md5 of a stage's
out is its *DVC version*, written into the lineage rows of its files (``artifacts.data_version``).
The dataset's version is the set of dvc.lock files, committed to git with the stage files.

DVC runs from its own virtual environment (it breaks Dagster's asset selection when both share
one; ``make dvc-setup``), as a subprocess. Every call is serialised by a ``flock`` of ours
(``.dvc/tmp/gen4gen.lock``); a repository locked by another DVC process (``dvc status`` in a
terminal) is waited for and retried until ``[dvc] lock_wait_s``. A failed commit restores the
stage files as they were, so the repository is never left half-committed; the materialised
files and their lineage are written before DVC is called and are never touched by a failure here.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .config import PROJECT_ROOT, PipelineConfig, resolve_path

# Dagster asset -> stage kind (the prefix of its stage names in dvc.yaml).
ASSET_STAGES = {
    "concept_images": "catalogue",
    "segmented_foregrounds": "segmented",
    "layouts": "layouts",
    "composed_images": "composed",
    "recoloured_images": "recoloured",
    "captions": "captions",
    "mycanvas": "mycanvas",
    "evaluation_report": "reports",
}
KINDS = tuple(ASSET_STAGES.values())
CONCEPT_KINDS = {"segmented"}
COMPOSITION_KINDS = {"layouts", "composed", "recoloured", "captions"}
PARTITIONED_KINDS = CONCEPT_KINDS | COMPOSITION_KINDS

DVC_YAML_HEADER = """\
# DVC stages of the gen4gen data (README: "Versions of the data (DVC)"), written by gen4gen.
# Dagster orchestrates: after an asset materialises, gen4gen/versioning.py writes its stage here
# (catalogue, mycanvas, reports) or in dvc-stages/{concepts,compositions}/<partition>/dvc.yaml
# (segmented, layouts, composed, recoloured, captions) and runs `dvc commit --force <stage>`.
# Deps and outs are paths in the data folder. `dvc status` and `dvc dag` show the data; commit
# the dvc.yaml and dvc.lock files (here and under dvc-stages/) to git to record a dataset version.
# Stages of your own may be added below; gen4gen keeps them.
"""
PARTITION_YAML_HEADER = """\
# One partition's DVC stages, written by gen4gen (see the top-level dvc.yaml). Paths are relative
# to the repository root (wdir).
"""

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


# ---------------------------------------------------------------------------------- the command
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
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        env.update(DVC_NO_ANALYTICS="1", DVC_STUDIO_OFFLINE="1", GIT_TERMINAL_PROMPT="0")
        return env

    @contextmanager
    def serialised(self):
        """Our lock: one gen4gen DVC operation at a time across processes (waits, never fails early)."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as handle:
            self._flock(handle, "another gen4gen process is running DVC")
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _flock(self, handle, holder: str) -> None:
        began = time.monotonic()
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - began > self.lock_wait_s:
                    raise self._locked_error(holder) from None
                time.sleep(0.05)
        self.waited_s += time.monotonic() - began

    @contextmanager
    def repository_lock(self):
        """DVC's own repository lock (``.dvc/tmp/lock``, a ``flock`` as DVC's zc.lockfile takes it),
        held while we edit dvc.yaml / dvc.lock so that no DVC process reads them half-edited."""
        self.dvc_lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.dvc_lock_path, "a+") as handle:
            self._flock(handle, self._lock_holder())
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _wait_until_unlocked(self, deadline: float) -> None:
        """Poll DVC's repository lock without taking it (faster than DVC's 3 s attempts)."""
        if not self.dvc_lock_path.exists():
            return
        began = time.monotonic()
        with open(self.dvc_lock_path, "a+") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(handle, fcntl.LOCK_UN)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        break  # let DVC report it
                    time.sleep(0.05)
        self.waited_s += time.monotonic() - began

    def _lock_holder(self) -> str:
        try:
            pid = self.dvc_lock_path.read_text().strip()
        except OSError:
            pid = ""
        return f"another DVC process{f' (pid {pid})' if pid.isdigit() else ''} holds the repository lock"

    def _locked_error(self, holder: str) -> DvcLocked:
        return DvcLocked(
            f"the DVC repository {self.root} stayed locked for {self.lock_wait_s:.0f} s: {holder}",
            "Wait for that DVC command to finish (or end it), then run `gen4gen dvc commit` to commit the "
            "materialised data; nothing was committed meanwhile and no data or lineage was lost. "
            "A lock left by a killed process is released by the system; raise [dvc] lock_wait_s to wait longer.")

    def run(self, *args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
        """``dvc <args>`` in the repository; a locked repository is waited for and retried."""
        if not self.executable.is_file():
            raise not_installed(self.executable)
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            self._wait_until_unlocked(deadline)
            began = time.monotonic()
            result = _execute(self, list(args), timeout)
            output = result.stdout + result.stderr
            if result.returncode != 0 and any(marker in output for marker in LOCK_MARKERS):
                self.waited_s += time.monotonic() - began
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise self._locked_error(self._lock_holder())
            if check and result.returncode != 0:
                raise DvcError(f"`dvc {shlex.join(args)}` failed in {self.root}: {_dvc_error(output)}")
            return result


# A DVC command costs about 1 s, nearly all of it Python starting and importing DVC. A worker
# process in DVC's environment imports DVC once and runs `dvc.cli.main(argv)` per request (as
# DVC's own test suite does), which brings a commit of a small stage to about 0.2 s. One worker
# per gen4gen process; requests are serialised by our lock anyway. Without a Python interpreter
# beside the executable (a standalone `dvc` binary), or if the worker dies, each command is a
# subprocess of its own.
WORKER_SCRIPT = r"""
import io, json, logging, os, sys
requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
reply = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(2, 1)  # stray writes to the standard streams never reach the reply channel
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)  # and DVC never reads a request as the answer to a prompt
sys.stdin = open(os.devnull)
import dvc.cli
import colorama
# colorama's deinit() (DVC calls it around JSON output) would put back the original sys.stdout,
# bypassing the capture below; DVC never needs it here (no terminal, not Windows).
colorama.deinit()
colorama.deinit = colorama.reinit = lambda: None
for line in requests:
    request = json.loads(line)
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    for handler in logging.getLogger("dvc").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(err if handler.level >= logging.WARNING else out)
    try:
        os.chdir(request["cwd"])
        code = dvc.cli.main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:
        code = 255
        err.write("ERROR: " + repr(exc) + "\n")
    finally:
        sys.stdout, sys.stderr = saved
    reply.write(json.dumps({"rc": code or 0, "out": out.getvalue(), "err": err.getvalue()}) + "\n")
    reply.flush()
"""

_workers: dict[tuple, subprocess.Popen] = {}


def _interpreter(executable: Path) -> Path | None:
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


def _worker(dvc: "Dvc") -> subprocess.Popen | None:
    if os.environ.get("GEN4GEN_DVC_WORKER", "1") == "0":
        return None
    env = dvc.env()
    key = (os.getpid(), str(dvc.executable), hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest())
    worker = _workers.get(key)
    if worker is not None and worker.poll() is None:
        return worker
    python = _interpreter(dvc.executable)
    if python is None:
        return None
    for old_key in [k for k in _workers if k[:2] == key[:2]]:
        _stop_worker(_workers.pop(old_key))
    worker = subprocess.Popen([str(python), "-c", WORKER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env=env, text=True, encoding="utf-8", cwd=dvc.root)
    _workers[key] = worker
    return worker


def _stop_worker(worker: subprocess.Popen) -> None:
    try:
        worker.stdin.close()
        worker.wait(timeout=5)
    except Exception:  # noqa: BLE001 - it is going away either way
        worker.kill()


def _stop_workers() -> None:
    for key in list(_workers):
        _stop_worker(_workers.pop(key))


import atexit  # noqa: E402

atexit.register(_stop_workers)


def _execute(dvc: "Dvc", args: list[str], timeout: float | None) -> subprocess.CompletedProcess:
    """Run one DVC command: in the worker when there is one, else as a subprocess."""
    worker = _worker(dvc)
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
    return subprocess.run([str(dvc.executable), *args], cwd=dvc.root, env=dvc.env(), text=True,
                          capture_output=True, timeout=timeout)


def _dvc_error(output: str) -> str:
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


# ---------------------------------------------------------------------------------- where things are
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


def _rel(path: Path, root: Path) -> str:
    """A path as dvc.yaml writes it: relative to the repository root, else absolute."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


# Stage files: the catalogue and the dataset at the top, one small file per partition below.
PARTITION_DIRS = {"segmented": "concepts", "layouts": "compositions", "composed": "compositions",
                  "recoloured": "compositions", "captions": "compositions"}
STAGES_DIR = "dvc-stages"


def stage_file(kind: str, key: str | None) -> str:
    """The dvc.yaml (relative to the repository root) that holds a stage."""
    if kind in PARTITIONED_KINDS:
        if not key:
            raise ValueError(f"stage {kind!r} needs a partition key")
        return f"{STAGES_DIR}/{PARTITION_DIRS[kind]}/{key}/dvc.yaml"
    return "dvc.yaml"


def stage_target(kind: str, key: str | None = None) -> str:
    """DVC's address of a stage: ``dvc.yaml:mycanvas``, ``dvc-stages/compositions/a+b/dvc.yaml:layouts``."""
    return f"{stage_file(kind, key)}:{kind}"


def parse_target(target: str) -> tuple[str, str | None]:
    """(kind, partition key) of one of our targets; kind is the stage name for any other stage."""
    file, _, name = target.rpartition(":")
    parts = file.split("/")
    if len(parts) == 4 and parts[0] == STAGES_DIR:
        return name, parts[2]
    return name, None


def _registry(config: PipelineConfig) -> dict | None:
    from .concepts import load_registry

    try:
        return load_registry(config.paths.registry) if config.paths.registry.is_file() else None
    except (OSError, ValueError):
        return None


def stage_out(config: PipelineConfig, kind: str, key: str | None) -> Path:
    paths = config.paths
    return {
        "catalogue": lambda: paths.registry,
        "segmented": lambda: paths.segmented(key),
        "layouts": lambda: paths.layouts(key),
        "composed": lambda: paths.composed(key),
        "recoloured": lambda: paths.recoloured(key),
        "captions": lambda: paths.captions(key),
        "mycanvas": lambda: paths.mycanvas,
        "reports": lambda: paths.reports,
    }[kind]()


def stage_deps(config: PipelineConfig, kind: str, key: str | None, registry: dict | None) -> list[Path]:
    from .concepts import split_composition

    paths = config.paths
    members = split_composition(key) if kind in COMPOSITION_KINDS else []
    backgrounds = [paths.backgrounds] if paths.backgrounds.is_dir() else []
    if kind == "catalogue":
        deps = [paths.concepts]
        if paths.class_map_file and not paths.class_map_file.resolve().is_relative_to(paths.concepts.resolve()):
            deps.append(paths.class_map_file)
    elif kind == "segmented":
        folders = {c["key"]: c.get("folder") for c in (registry or {}).get("concepts", [])}
        folder = folders.get(key)
        deps = [Path(folder) if folder and Path(folder).is_absolute() else paths.concepts / (folder or key)]
    elif kind == "layouts":
        deps = [paths.segmented(c) for c in members] + backgrounds
    elif kind == "composed":
        deps = [paths.layouts(key)] + [paths.segmented(c) for c in members]
    elif kind == "recoloured":
        deps = [paths.composed(key)] + backgrounds
    elif kind == "captions":
        deps = [paths.recoloured(key), paths.layouts(key)]
    elif kind == "mycanvas":
        # The folders of every composition (a fixed-size entry, whatever the number of compositions).
        deps = [paths.build / "captions", paths.build / "recoloured", paths.screening_overrides]
    elif kind == "reports":
        deps = [paths.mycanvas]
        if config.evaluation.generated_dir:
            deps.append(resolve_path(config.evaluation.generated_dir))
    else:
        raise ValueError(f"unknown DVC stage kind {kind!r}")
    return [p for p in dict.fromkeys(deps) if p.exists()]


def stage_spec(config: PipelineConfig, kind: str, key: str | None, registry: dict | None) -> dict:
    root = repository_root(config)
    data = _rel(config.paths.data, root)
    spec: dict = {}
    depth = stage_file(kind, key).count("/")
    if depth:  # paths in every stage file are relative to the repository root
        spec["wdir"] = "/".join([".."] * depth)
    spec["cmd"] = "gen4gen materialize" + ("" if data == "data" else f" --data-dir {shlex.quote(data)}")
    deps = [_rel(p, root) for p in stage_deps(config, kind, key, registry)]
    if deps:
        spec["deps"] = deps
    spec["outs"] = [_rel(stage_out(config, kind, key), root)]
    return spec


def existing_stages(config: PipelineConfig, registry: dict | None) -> list[tuple[str, str | None]]:
    """Every stage of the catalogue whose output exists (what `gen4gen dvc commit` commits)."""
    registry = registry or {"concepts": [], "compositions": []}
    refs: list[tuple[str, str | None]] = [("catalogue", None)]
    refs += [("segmented", c["key"]) for c in registry["concepts"]]
    refs += [(kind, c["key"]) for c in registry["compositions"]
             for kind in ("layouts", "composed", "recoloured", "captions")]
    refs += [("mycanvas", None), ("reports", None)]
    return [(kind, key) for kind, key in refs if stage_out(config, kind, key).exists()]


# ---------------------------------------------------------------------------------- dvc.yaml, dvc.lock
def _load_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _dump_dvc_yaml(stages: dict, top: bool) -> str:
    import yaml

    def order(name: str) -> tuple:
        return (KINDS.index(name) if name in KINDS else len(KINDS), name)

    ordered = {name: stages[name] for name in sorted(stages, key=order)}
    body = yaml.safe_dump({"stages": ordered}, sort_keys=False, allow_unicode=True, default_flow_style=False,
                          width=10_000) if ordered else "stages: {}\n"
    return (DVC_YAML_HEADER if top else PARTITION_YAML_HEADER) + body


def _parse_lock(document: dict, file: str = "dvc.yaml") -> dict[str, dict]:
    stages = {}
    for name, entry in ((document or {}).get("stages") or {}).items():
        stages[f"{file}:{name}"] = {"outs": {o["path"]: o for o in entry.get("outs") or []},
                                    "deps": {d["path"]: d for d in entry.get("deps") or []}}
    return stages


def lock_files(root: Path) -> list[Path]:
    files = [root / "dvc.lock"] if (root / "dvc.lock").is_file() else []
    stages = root / STAGES_DIR
    if stages.is_dir():
        files += sorted(stages.glob("*/*/dvc.lock"))
    return files


def read_locks(root: Path) -> dict[str, dict]:
    """Every dvc.lock of ours as {target: {"outs": {path: entry}, "deps": {path: entry}}}."""
    stages: dict[str, dict] = {}
    for lock in lock_files(root):
        file = lock.with_name("dvc.yaml").relative_to(root).as_posix()
        stages.update(_parse_lock(_load_yaml(lock), file))
    return stages


def stage_version(config: PipelineConfig, kind: str, key: str | None = None) -> str | None:
    """The DVC hash (md5) last committed for a stage's output, or None when not committed."""
    if unavailable_reason(config) is not None:
        return None
    root = repository_root(config)
    lock = (root / stage_file(kind, key)).with_name("dvc.lock")
    if not lock.is_file():
        return None
    stage = _parse_lock(_load_yaml(lock), stage_file(kind, key)).get(stage_target(kind, key))
    out = _rel(stage_out(config, kind, key), root)
    entry = (stage or {}).get("outs", {}).get(out)
    return entry.get("md5") if entry else None


def _write_text_atomic(path: Path, text: str) -> None:
    from .io import atomic_write_text

    atomic_write_text(path, text)


def _retired_partitions(root: Path, registry: dict | None) -> list[Path]:
    """Stage folders of partitions that are no longer in the catalogue (none while the catalogue
    is missing or empty: an unmounted concepts folder must not retire every partition)."""
    if not registry or not registry.get("concepts") or not (root / STAGES_DIR).is_dir():
        return []
    known = {"concepts": {c["key"] for c in registry["concepts"]},
             "compositions": {c["key"] for c in registry["compositions"]}}
    retired = []
    for group, keys in known.items():
        folder = root / STAGES_DIR / group
        if folder.is_dir():
            retired += [p for p in sorted(folder.iterdir()) if p.is_dir() and p.name not in keys]
    return retired


# ---------------------------------------------------------------------------------- committing
@dataclass
class CommitOutcome:
    """What happened to one step's data in DVC; ``metadata()`` feeds the materialisation."""

    status: str  # committed | skipped | failed
    stages: list[str] = field(default_factory=list)  # DVC targets (file:stage)
    reason: str = ""
    advice: str = ""
    versions: dict[str, str] = field(default_factory=dict)  # target -> md5 of its out
    deps: dict[str, dict[str, str]] = field(default_factory=dict)  # target -> {dep path: md5}
    files: dict[str, int] = field(default_factory=dict)  # target -> files in its out
    seconds: float = 0.0
    lock_wait_s: float = 0.0
    lineage_rows: int = 0
    pushed: bool | None = None  # None: no push was asked for
    push_error: str = ""

    @property
    def version(self) -> str | None:
        return next(iter(self.versions.values()), None)

    def message(self) -> str:
        text = f"DVC {self.status}: {self.reason}" if self.reason else f"DVC {self.status}"
        return f"{text}\n{self.advice}" if self.advice else text

    def metadata(self) -> dict:
        """Plain values; the Dagster resource wraps them in MetadataValue."""
        data: dict = {"dvc": self.status}
        if self.stages:
            data["dvc_stage"] = ", ".join(self.stages)
        if self.version:
            data["dvc_version"] = self.version
        if len(self.versions) > 1:
            data["dvc_versions"] = dict(self.versions)
        if any(self.deps.values()):
            data["dvc_deps"] = {path: md5 for deps in self.deps.values() for path, md5 in deps.items()}
        if self.reason:
            data["dvc_reason"] = self.reason
        if self.advice:
            data["dvc_what_to_do"] = self.advice
        if self.status == "committed":
            data["dvc_seconds"] = round(self.seconds, 3)
            data["dvc_lock_wait_s"] = round(self.lock_wait_s, 3)
            data["dvc_lineage_rows"] = self.lineage_rows
        if self.pushed is not None:
            data["dvc_pushed"] = self.pushed
        if self.push_error:
            data["dvc_push_error"] = self.push_error
        return data


def commit_stages(config: PipelineConfig, refs: list[tuple[str, str | None]],
                  lineage_ids: dict[str, list[str]] | None = None, push: bool | None = None) -> CommitOutcome:
    """Write the stages ``refs`` ((kind, partition key)) into their dvc.yaml and commit their outputs.

    ``lineage_ids`` (target -> artifact ids of files in its out) get the stage's version as their
    ``data_version``. Never raises for DVC problems: the outcome says what happened and why.
    """
    began = time.perf_counter()
    targets = [stage_target(kind, key) for kind, key in refs]
    unavailable = unavailable_reason(config)
    if unavailable is not None:
        return CommitOutcome("skipped", targets, unavailable.message, unavailable.advice)
    dvc = Dvc.from_config(config)
    registry = _registry(config)
    specs: dict[str, tuple[str, str, dict]] = {}  # target -> (file, stage name, spec)
    for (kind, key), target in zip(refs, targets):
        if stage_out(config, kind, key).exists():
            specs[target] = (stage_file(kind, key), kind, stage_spec(config, kind, key, registry))
    if not specs:
        return CommitOutcome("skipped", targets, "the stage wrote no output to commit")
    try:
        with dvc.serialised():
            apply_settings(dvc, config)  # a checkout where `make dvc-setup` did not run yet
            locks = _commit_locked(dvc, specs, registry)
    except DvcError as exc:
        return CommitOutcome("failed", list(specs), exc.message, exc.advice or _commit_advice(),
                             seconds=time.perf_counter() - began, lock_wait_s=dvc.waited_s)
    outcome = CommitOutcome("committed", list(specs), lock_wait_s=dvc.waited_s)
    for target in specs:
        entry = locks.get(target, {})
        out = next(iter(entry.get("outs", {}).values()), {})
        outcome.versions[target] = out.get("md5", "")
        outcome.files[target] = int(out.get("nfiles") or (1 if out else 0))
        outcome.deps[target] = {path: d.get("md5", "") for path, d in entry.get("deps", {}).items()}
    if lineage_ids:
        updates: dict[str, list[str]] = {}
        for target, ids in lineage_ids.items():
            if outcome.versions.get(target) and ids:
                updates.setdefault(outcome.versions[target], []).extend(ids)
        outcome.lineage_rows = record_lineage_versions(config.paths.data, updates)
    if push if push is not None else config.dvc.push:
        try:
            push_data(config, list(specs), dvc=dvc)
            outcome.pushed = True
        except DvcError as exc:
            outcome.pushed = False
            outcome.push_error = f"{exc.message} {exc.advice}".strip()
    outcome.seconds = time.perf_counter() - began
    return outcome


def _commit_advice() -> str:
    return ("The materialised files and their lineage are saved, and the stage files were restored. "
            "Fix the cause, then run `gen4gen dvc commit` to commit every stage whose data exists.")


def _commit_locked(dvc: Dvc, specs: dict[str, tuple[str, str, dict]], registry: dict | None) -> dict[str, dict]:
    """Under our lock: write the stage files, `dvc commit -f`, restore the stage files if that fails."""
    root = dvc.root
    by_file: dict[str, dict[str, dict]] = {}
    for file, name, spec in specs.values():
        by_file.setdefault(file, {})[name] = spec
    before: dict[str, tuple[bytes | None, bytes | None]] = {}  # file -> (dvc.yaml, dvc.lock) bytes
    with dvc.repository_lock():
        for folder in _retired_partitions(root, registry):
            if not any(file.startswith(folder.relative_to(root).as_posix() + "/") for file in by_file):
                for name in ("dvc.yaml", "dvc.lock", ".gitignore"):
                    (folder / name).unlink(missing_ok=True)
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        for file, stages in by_file.items():
            path = root / file
            lock = path.with_name("dvc.lock")
            before[file] = (path.read_bytes() if path.is_file() else None, lock.read_bytes() if lock.is_file() else None)
            merged = dict(_load_yaml(path).get("stages") or {})
            merged.update(stages)
            _write_text_atomic(path, _dump_dvc_yaml(merged, top=file == "dvc.yaml"))
    try:
        dvc.run("commit", "--force", *specs)
    except BaseException:
        with dvc.repository_lock():
            for file, (yaml_bytes, lock_bytes) in before.items():
                path = root / file
                lock = path.with_name("dvc.lock")
                if (lock.read_bytes() if lock.is_file() else None) != lock_bytes:
                    continue  # DVC committed this file's stages: keep dvc.yaml consistent with its lock
                if yaml_bytes is None:
                    path.unlink(missing_ok=True)
                    if path.parent != root and path.parent.is_dir() and not any(path.parent.iterdir()):
                        path.parent.rmdir()
                else:
                    _write_text_atomic(path, yaml_bytes.decode("utf-8"))
        raise
    locks: dict[str, dict] = {}
    for file in by_file:
        lock = (root / file).with_name("dvc.lock")
        locks.update(_parse_lock(_load_yaml(lock), file))
    return locks


def commit_existing(config: PipelineConfig) -> CommitOutcome:
    """Commit every stage whose output exists (recovery after a failed commit, or older data)."""
    registry = _registry(config)
    refs = existing_stages(config, registry)
    if not refs:
        return CommitOutcome("skipped", [], f"no materialised data under {config.paths.data}")
    outcome = commit_stages(config, refs, push=False)
    if outcome.status == "committed":
        outcome.lineage_rows = relabel_lineage(config)
    return outcome


# ---------------------------------------------------------------------------------- lineage
def record_lineage_versions(data_dir: Path, updates: dict[str, list[str]]) -> int:
    """Write DVC versions into ``artifacts.data_version`` (``{version: [artifact ids]}``)."""
    from .lineage import LineageStore

    updates = {version: ids for version, ids in updates.items() if ids}
    if not updates:
        return 0
    store = LineageStore(data_dir)
    if not store.db_path.exists() and not store.journal_dir.is_dir():
        return 0
    return store.set_data_versions(updates)


def lineage_ids_in(records, out: Path, data_dir: Path) -> list[str]:
    """Ids of the lineage rows of ``records`` (ArtifactRecord) whose file lies in ``out``."""
    from .lineage import artifact_id, relative_path

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
    from .io import sha256_file
    from .lineage import LineageStore, artifact_id, relative_path

    root = repository_root(config)
    data = config.paths.data
    store = LineageStore(data)
    if not store.db_path.exists():
        return 0
    with store.reader() as connection:
        rows = connection.execute("SELECT path, sha256, data_version FROM artifacts").fetchall()
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


# ---------------------------------------------------------------------------------- setup, remotes
def setup_repository(config: PipelineConfig, log=print) -> list[str]:
    """`make dvc-setup`: a DVC repository at the root, our cache settings, a default remote."""
    if not config.dvc.enabled:
        raise DvcUnavailable("DVC versioning is switched off ([dvc] enabled = false)")
    dvc = Dvc.from_config(config)
    if not dvc.executable.is_file():
        raise not_installed(dvc.executable)
    done = []
    if not (dvc.root / ".dvc").is_dir():
        in_git = subprocess.run(["git", "-C", str(dvc.root), "rev-parse", "--git-dir"], capture_output=True,
                                text=True).returncode == 0
        dvc.run("init", *([] if in_git else ["--no-scm"]))
        done.append(f"initialised a DVC repository in {dvc.root}" + ("" if in_git else " (no git: versions cannot "
                                                                                       "be listed)"))
    with dvc.serialised():
        done += apply_settings(dvc, config)
        remotes = list_remotes(dvc)
        default = _default_remote(dvc)
        name = config.dvc.remote or "local"
        if name not in remotes and (config.dvc.remote or not default):
            url = config.dvc.remote_url
            local = "://" not in url
            if local:  # a folder, relative to the repository
                url = str(Path(url) if Path(url).is_absolute() else dvc.root / url)
            dvc.run("remote", "add", "--local", *([] if default else ["--default"]), name, url)
            if local:
                Path(url).mkdir(parents=True, exist_ok=True)
            done.append(f"remote {name!r} -> {url}" + ("" if default else " (default)"))
        if not (dvc.root / "dvc.yaml").is_file():
            _write_text_atomic(dvc.root / "dvc.yaml", _dump_dvc_yaml({}, top=True))
            done.append("wrote an empty dvc.yaml")
    for line in done or ["DVC repository already set up"]:
        log(line)
    return done


def apply_settings(dvc: Dvc, config: PipelineConfig) -> list[str]:
    """This machine's DVC settings from [dvc] (.dvc/config.local): link types, hashing threads,
    no analytics or update checks. Reads the file first; runs `dvc config` only for a difference."""
    settings = {
        "cache.type": ",".join(config.dvc.cache_types),
        "core.checksum_jobs": str(config.dvc.checksum_jobs or max(1, os.cpu_count() or 1)),
        "core.analytics": "false",
        "core.check_update": "false",
    }
    current = _local_config(dvc.root)
    done = []
    for option, value in settings.items():
        if current.get(option) != value:
            dvc.run("config", "--local", option, value)
            done.append(f"dvc config --local {option} {value}")
    return done


def _local_config(root: Path) -> dict[str, str]:
    import configparser

    parser = configparser.ConfigParser()
    try:
        parser.read(root / ".dvc" / "config.local", encoding="utf-8")
    except configparser.Error:
        return {}
    return {f"{section}.{key}": value.strip().strip('"').strip("'") for section in parser.sections()
            for key, value in parser[section].items()}


def list_remotes(dvc: Dvc) -> dict[str, str]:
    result = dvc.run("remote", "list")
    remotes = {}
    for line in result.stdout.splitlines():
        parts = line.split(None, 1)
        if parts:
            remotes[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return remotes


def _default_remote(dvc: Dvc) -> str | None:
    result = dvc.run("remote", "default", check=False)
    name = result.stdout.strip()
    return name if result.returncode == 0 and name and "No default remote" not in name else None


def _remote_args(config: PipelineConfig) -> list[str]:
    return ["--remote", config.dvc.remote] if config.dvc.remote else []


def _remote_error(config: PipelineConfig, dvc: Dvc, action: str, error: DvcError) -> DvcError:
    text = error.message
    name = config.dvc.remote or "the default remote"
    if "no remote specified" in text or "doesn't exist" in text and "remote" in text:
        return DvcError(f"no DVC remote to {action}: {name} is not configured",
                        "Run `make dvc-setup` (a local folder remote, .dvc-remote/), or add one with "
                        "`.venv-dvc/bin/dvc remote add -d --local NAME URL` (S3, GCS, SSH, ...: README, "
                        "\"Versions of the data (DVC)\") or name it in [dvc] remote.")
    if PLUGIN_MARKER in text:
        plugin = text.split("requires '", 1)[-1].split("'", 1)[0]
        return DvcError(f"the DVC remote {name} needs the plugin {plugin}, which is not installed",
                        f"Install it into DVC's environment: `make dvc-setup DVC_EXTRAS={plugin.removeprefix('dvc-')}`.")
    if "Some of the cache files do not exist" in text or "missing" in text and action == "pull":
        return DvcError(f"the DVC remote {name} does not hold every file of this version: {text}",
                        "Push that version from a checkout that has it (`gen4gen dvc push`), or check that "
                        "[dvc] remote names the right remote.")
    remotes = {}
    try:
        remotes = list_remotes(dvc)
    except DvcError:
        pass
    where = f" ({remotes[config.dvc.remote]})" if config.dvc.remote in remotes else ""
    return DvcError(f"could not {action} the DVC remote {name}{where}: {text}",
                    "Check that the remote is reachable (network, credentials, the folder exists and is writable), "
                    f"then run `gen4gen dvc {action}` again. The data stay committed in the local DVC cache; "
                    "nothing was lost.")


def push_data(config: PipelineConfig, targets: list[str] | None = None, dvc: Dvc | None = None) -> str:
    """`dvc push` (all stages, or ``targets``) to [dvc] remote or DVC's default remote."""
    dvc = dvc or _available_dvc(config)
    with dvc.serialised():
        try:
            return dvc.run("push", *_remote_args(config), *(targets or [])).stdout.strip()
        except DvcLocked:
            raise
        except DvcError as exc:
            raise _remote_error(config, dvc, "push", exc) from None


def pull_data(config: PipelineConfig, force: bool = False) -> str:
    """`dvc pull`: fetch the version dvc.lock names from the remote and check it out."""
    dvc = _available_dvc(config)
    with dvc.serialised():
        try:
            return dvc.run("pull", *_remote_args(config), *(["--force"] if force else [])).stdout.strip()
        except DvcLocked:
            raise
        except DvcError as exc:
            if _needs_confirmation(exc):
                raise _uncommitted_error(exc) from None
            raise _remote_error(config, dvc, "pull", exc) from None


def _available_dvc(config: PipelineConfig) -> Dvc:
    """The repository's DVC, or the DvcUnavailable error that says why not and what to do."""
    unavailable = unavailable_reason(config)
    if unavailable is not None:
        raise unavailable
    return Dvc.from_config(config)


def _needs_confirmation(exc: DvcError) -> bool:
    """DVC refuses to overwrite workspace changes without --force (two wordings across versions)."""
    return "without confirmation" in exc.message or "without a confirmation" in exc.message


def _uncommitted_error(exc: DvcError) -> DvcError:
    return DvcError(f"the workspace has data that this version would overwrite: {exc.message}",
                    "Commit it first (`gen4gen dvc commit`, then commit dvc.yaml and dvc.lock to git), or pass "
                    "--force to discard it.")


def checkout_data(config: PipelineConfig, force: bool = False) -> dict:
    """`dvc checkout`: make the data folder match dvc.lock (after `git checkout <version>`).

    Returns what was done and the partition folders that are not part of this version (kept).
    """
    dvc = _available_dvc(config)
    with dvc.serialised():
        try:
            output = dvc.run("checkout", *(["--force"] if force else [])).stdout.strip()
        except DvcLocked:
            raise
        except DvcError as exc:
            if _needs_confirmation(exc):
                raise _uncommitted_error(exc) from None
            if "cache files do not exist" in exc.message or "missing" in exc.message:
                raise DvcError(f"the local DVC cache lacks files of this version: {exc.message}",
                               "Fetch them from the remote: `gen4gen dvc pull`.") from None
            raise
    lock = read_locks(dvc.root)
    tracked = {(dvc.root / out).resolve() for entry in lock.values() for out in entry["outs"]}
    paths = config.paths
    extra = []
    for kind, parent in (("segmented", paths.build / "segmented"), ("layouts", paths.build / "layouts"),
                         ("composed", paths.build / "composed"), ("recoloured", paths.build / "recoloured"),
                         ("captions", paths.build / "captions")):
        if parent.is_dir():
            extra += [str(p) for p in sorted(parent.iterdir()) if p.is_dir() and p.resolve() not in tracked]
    return {"output": output, "untracked": extra}


def status(config: PipelineConfig) -> dict:
    """`dvc status --json`: {} when every stage's deps and outs match dvc.lock and the cache."""
    dvc = _available_dvc(config)
    with dvc.serialised():
        result = dvc.run("status", "--json")
    text = result.stdout.strip()
    if not text:  # `dvc status --json` prints {} when everything is up to date
        raise DvcError(f"`dvc status --json` printed nothing in {dvc.root}: {_dvc_error(result.stderr)}")
    return json.loads(text)


# ---------------------------------------------------------------------------------- versions
@dataclass
class StageSummary:
    kind: str
    partitions: int = 0
    files: int = 0
    images: int | None = 0  # PNG files (None: the .dir listing is not in the local cache)
    bytes: int = 0
    version: str = ""  # the out's md5, or a digest of the partitions' md5s

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def summarise_lock(lock: dict[str, dict], cache: Path) -> dict[str, StageSummary]:
    """Per stage kind: partitions, files, PNG images, bytes and a version hash."""
    grouped: dict[str, list[tuple[str, dict]]] = {}
    for target, entry in lock.items():
        kind, _ = parse_target(target)
        for out in entry["outs"].values():
            grouped.setdefault(kind, []).append((target, out))
    summaries = {}
    for kind in sorted(grouped, key=lambda k: (KINDS.index(k) if k in KINDS else len(KINDS), k)):
        items = sorted(grouped[kind], key=lambda item: item[0])
        summary = StageSummary(kind, partitions=len(items))
        for _, out in items:
            md5 = out.get("md5", "")
            summary.files += int(out.get("nfiles") or 1)
            summary.bytes += int(out.get("size") or 0)
            pngs = _count_pngs(cache, md5, out.get("path", ""))
            summary.images = None if pngs is None or summary.images is None else summary.images + pngs
        if kind not in PARTITIONED_KINDS and len(items) == 1:
            summary.version = items[0][1].get("md5", "")
        else:
            digest = hashlib.sha256("".join(f"{t}\0{o.get('md5', '')}\n" for t, o in items).encode())
            summary.version = f"{digest.hexdigest()[:16]} (digest of {len(items)})"
        summaries[kind] = summary
    return summaries


def _count_pngs(cache: Path, md5: str, path: str) -> int | None:
    if not md5.endswith(".dir"):
        return int(path.lower().endswith(".png"))
    listing = cache / "files" / "md5" / md5[:2] / md5[2:]
    try:
        entries = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return sum(1 for e in entries if e.get("relpath", "").lower().endswith(".png"))


def _git(root: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, input=stdin)


def _locks_at(root: Path, commit: str) -> dict[str, dict]:
    """Every dvc.lock of ours as stored in a git commit (one `git cat-file --batch` for all)."""
    import yaml

    listed = _git(root, "ls-tree", "-r", "--name-only", "--full-name", commit, "--", "dvc.lock", STAGES_DIR)
    prefix = _git(root, "rev-parse", "--show-prefix").stdout.strip()
    names = [n for n in listed.stdout.splitlines() if n.endswith("dvc.lock")]
    if not names:
        return {}
    batch = subprocess.run(["git", "-C", str(root), "cat-file", "--batch"], capture_output=True,
                           input="".join(f"{commit}:{n}\n" for n in names).encode())
    data, stages, position = batch.stdout, {}, 0
    for name in names:
        end = data.index(b"\n", position)
        header = data[position:end].split()
        position = end + 1
        if len(header) < 3 or header[1] != b"blob":
            continue
        size = int(header[2])
        text = data[position:position + size].decode("utf-8")
        position += size + 1
        relative = name[len(prefix):] if prefix and name.startswith(prefix) else name
        stages.update(_parse_lock(yaml.safe_load(text) or {}, relative[:-len("dvc.lock")] + "dvc.yaml"))
    return stages


def list_versions(config: PipelineConfig, limit: int | None = None) -> list[dict]:
    """Dataset versions: every git commit that changed a dvc.lock, newest first, after the workspace
    when its dvc.lock files differ from HEAD's.

    Each has the commit, its date and subject, and per stage kind the partitions, files, PNG images
    and a version hash (the md5 DVC recorded; a digest of those for partitioned stages).
    """
    root = repository_root(config)
    cache = root / ".dvc" / "cache"
    versions = []
    workspace = read_locks(root)
    in_git = _git(root, "rev-parse", "--git-dir").returncode == 0
    head: dict[str, dict] | None = None
    if in_git:
        log = _git(root, "log", "--format=%H%x09%aI%x09%s", *([f"-n{limit}"] if limit else []), "--", "dvc.lock",
                   STAGES_DIR)
        for line in log.stdout.splitlines():
            commit, date, subject = (line.split("\t", 2) + ["", ""])[:3]
            locks = _locks_at(root, commit)
            versions.append({"commit": commit, "date": date, "subject": subject,
                             "stages": {k: s.to_dict() for k, s in summarise_lock(locks, cache).items()}})
        if _git(root, "rev-parse", "--verify", "-q", "HEAD").returncode == 0:
            head = _locks_at(root, "HEAD")
    if workspace and workspace != head:
        versions.insert(0, {"commit": None, "date": None,
                            "subject": "workspace (dvc.lock files not committed to git)" if in_git else
                            "workspace (not a git repository)",
                            "stages": {k: s.to_dict() for k, s in summarise_lock(workspace, cache).items()}})
    return versions


def format_versions(versions: list[dict]) -> list[str]:
    lines = []
    for version in versions:
        head = (version["commit"] or "workspace")[:10]
        date = (version["date"] or "")[:19].replace("T", " ")
        lines.append(f"{head}  {date}  {version['subject']}".rstrip())
        for kind, stage in version["stages"].items():
            images = "?" if stage["images"] is None else stage["images"]
            lines.append(f"    {kind:<11} {stage['partitions']:>4} part.  {stage['files']:>6} files  "
                         f"{images:>6} images  {stage['bytes'] / 1e6:>9.1f} MB  {stage['version']}")
    return lines
