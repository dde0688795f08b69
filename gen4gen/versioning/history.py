"""Dataset versions: the git commits of the dvc.lock files, summarised per stage (`gen4gen versions`)."""
from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..config import PipelineConfig
from .command import repository_root
from .lockfiles import cache_dir, dir_listing, parse_lock, read_locks
from .stages import KINDS, PARTITIONED_KINDS, STAGES_DIR, parse_target


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
            pngs = count_pngs(cache, md5, out.get("path", ""))
            summary.images = None if pngs is None or summary.images is None else summary.images + pngs
        if kind not in PARTITIONED_KINDS and len(items) == 1:
            summary.version = items[0][1].get("md5", "")
        else:
            digest = hashlib.sha256("".join(f"{t}\0{o.get('md5', '')}\n" for t, o in items).encode())
            summary.version = f"{digest.hexdigest()[:16]} (digest of {len(items)})"
        summaries[kind] = summary
    return summaries


def count_pngs(cache: Path, md5: str, path: str) -> int | None:
    if not md5.endswith(".dir"):
        return int(path.lower().endswith(".png"))
    entries = dir_listing(cache, md5)
    if entries is None:
        return None
    return sum(1 for e in entries if e.get("relpath", "").lower().endswith(".png"))


def git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)


def locks_at(root: Path, commit: str) -> dict[str, dict]:
    """Every dvc.lock of ours as stored in a git commit (one `git cat-file --batch` for all)."""
    import yaml

    listed = git(root, "ls-tree", "-r", "--name-only", "--full-name", commit, "--", "dvc.lock", STAGES_DIR)
    prefix = git(root, "rev-parse", "--show-prefix").stdout.strip()
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
        stages.update(parse_lock(yaml.safe_load(text) or {}, relative[:-len("dvc.lock")] + "dvc.yaml"))
    return stages


def list_versions(config: PipelineConfig, limit: int | None = None) -> list[dict]:
    """Dataset versions: every git commit that changed a dvc.lock, newest first, after the workspace
    when its dvc.lock files differ from HEAD's.

    Each has the commit, its date and subject, and per stage kind the partitions, files, PNG images
    and a version hash (the md5 DVC recorded; a digest of those for partitioned stages).
    """
    root = repository_root(config)
    cache = cache_dir(root)
    versions = []
    workspace = read_locks(root)
    in_git = git(root, "rev-parse", "--git-dir").returncode == 0
    head: dict[str, dict] | None = None
    if in_git:
        log = git(root, "log", "--format=%H%x09%aI%x09%s", *([f"-n{limit}"] if limit else []), "--", "dvc.lock",
                  STAGES_DIR)
        for line in log.stdout.splitlines():
            commit, date, subject = (line.split("\t", 2) + ["", ""])[:3]
            locks = locks_at(root, commit)
            versions.append({"commit": commit, "date": date, "subject": subject,
                             "stages": {k: s.to_dict() for k, s in summarise_lock(locks, cache).items()}})
        if git(root, "rev-parse", "--verify", "-q", "HEAD").returncode == 0:
            head = locks_at(root, "HEAD")
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
