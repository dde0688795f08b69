"""Reading the dvc.lock files: what DVC recorded for each stage, and a stage's DVC version."""
from __future__ import annotations

import configparser
import json
from pathlib import Path

from ..config import PipelineConfig
from .command import repository_root, unavailable_reason
from .stages import STAGES_DIR, repo_relative, stage_file, stage_out, stage_target


def load_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def parse_lock(document: dict, file: str = "dvc.yaml") -> dict[str, dict]:
    """A dvc.lock document as {target: {"outs": {path: entry}, "deps": {path: entry}}}."""
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
        stages.update(parse_lock(load_yaml(lock), file))
    return stages


def stage_version(config: PipelineConfig, kind: str, key: str | None = None) -> str | None:
    """The DVC hash (md5) last committed for a stage's output, or None when not committed."""
    if unavailable_reason(config) is not None:
        return None
    root = repository_root(config)
    lock = (root / stage_file(kind, key)).with_name("dvc.lock")
    if not lock.is_file():
        return None
    stage = parse_lock(load_yaml(lock), stage_file(kind, key)).get(stage_target(kind, key))
    out = repo_relative(stage_out(config, kind, key), root)
    entry = (stage or {}).get("outs", {}).get(out)
    return entry.get("md5") if entry else None


def cache_dir(root: Path) -> Path:
    """The repository's DVC cache: ``cache.dir`` of .dvc/config(.local) (relative to .dvc/), else .dvc/cache."""
    parser = configparser.ConfigParser()
    try:
        parser.read([root / ".dvc" / "config", root / ".dvc" / "config.local"], encoding="utf-8")
    except configparser.Error:
        return root / ".dvc" / "cache"
    configured = parser.get("cache", "dir", fallback="").strip().strip('"').strip("'")
    if not configured:
        return root / ".dvc" / "cache"
    return (root / ".dvc" / configured).resolve() if not Path(configured).is_absolute() else Path(configured)


def cache_object(cache: Path, md5: str) -> Path:
    """Where DVC 3 keeps the object of an md5 (``files/md5/ab/cdef…``, ``.dir`` listings too)."""
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def dir_listing(cache: Path, md5: str) -> list[dict] | None:
    """The entries ({"relpath", "md5", ...}) of a folder out's ``.dir`` object; None when absent."""
    try:
        return json.loads(cache_object(cache, md5).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def committed_md5s(root: Path, files: list[Path], cache: Path) -> dict[Path, str]:
    """The md5 each of ``files`` has in the workspace's dvc.lock files (files not committed are
    left out): from the out itself, or the ``.dir`` listing (in ``cache``) of the folder out that holds it."""
    wanted = {file.resolve(): file for file in files}
    found: dict[Path, str] = {}
    for entry in read_locks(root).values():
        for out_path, out in entry["outs"].items():
            out_dir = (root / out_path).resolve()
            md5 = out.get("md5", "")
            if out_dir in wanted and not md5.endswith(".dir"):
                found[wanted[out_dir]] = md5
                continue
            inside = [path for path in wanted if path.is_relative_to(out_dir) and path != out_dir]
            if not inside or not md5.endswith(".dir"):
                continue
            by_relpath = {e.get("relpath"): e.get("md5") for e in dir_listing(cache, md5) or []}
            for path in inside:
                relpath = path.relative_to(out_dir).as_posix()
                if by_relpath.get(relpath):
                    found[wanted[path]] = by_relpath[relpath]
    return found
