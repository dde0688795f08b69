"""Committing stages: write their stage files, check their bytes, `dvc commit --force`.

A commit never leaves the repository half-done: when DVC fails, the stage files are put back as
they were. The materialised files and their lineage are written before DVC is called and are
never touched by a failure here. With the caller's records (path, sha256 of every file its step
wrote), a file whose bytes changed since is never committed: the commit is refused, and cache
objects an in-place edit reached are removed (:mod:`gen4gen.versioning.integrity`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import PipelineConfig
from ..staging import crash_point
from .command import Dvc, DvcError, unavailable_reason
from .integrity import find_edited, quarantine_locked
from .labels import record_lineage_versions, relabel_lineage
from .lockfiles import load_yaml, parse_lock
from .remote import push_data
from .repository import apply_settings
from .stages import (dump_dvc_yaml, existing_stages, load_catalogue, remove_stage_folder, retired_partitions,
                     stage_file, stage_out, stage_spec, stage_target)


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
    edited: list[str] = field(default_factory=list)  # files whose bytes differ from the records
    quarantined: list[str] = field(default_factory=list)  # cache objects removed because of them

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
        if self.edited:
            data["dvc_edited_files"] = list(self.edited)
        if self.quarantined:
            data["dvc_quarantined_cache_objects"] = list(self.quarantined)
        return data


def commit_stages(config: PipelineConfig, refs: list[tuple[str, str | None]],
                  lineage_ids: dict[str, list[str]] | None = None, push: bool | None = None,
                  records=None) -> CommitOutcome:
    """Write the stages ``refs`` ((kind, partition key)) into their dvc.yaml and commit their outputs.

    ``lineage_ids`` (target -> artifact ids of files in its out) get the stage's version as their
    ``data_version``. ``records`` (objects with ``path`` and ``sha256``: the step's lineage
    records) are checked first: if a file in the outs no longer has its recorded bytes, nothing is
    committed. Never raises for DVC problems: the outcome says what happened and why.
    """
    began = time.perf_counter()
    targets = [stage_target(kind, key) for kind, key in refs]
    unavailable = unavailable_reason(config)
    if unavailable is not None:
        return CommitOutcome("skipped", targets, unavailable.message, unavailable.advice)
    dvc = Dvc.from_config(config)
    registry = load_catalogue(config)
    specs: dict[str, tuple[str, str, dict]] = {}  # target -> (file, stage name, spec)
    outs: list[Path] = []
    for (kind, key), target in zip(refs, targets):
        out = stage_out(config, kind, key)
        if out.exists():
            specs[target] = (stage_file(kind, key), kind, stage_spec(config, kind, key, registry))
            outs.append(out)
    if not specs:
        return CommitOutcome("skipped", targets, "the stage wrote no output to commit")
    try:
        with dvc.serialised():
            if records is not None:
                # Under the lock, right before DVC hashes the outs: the narrowest window for a change.
                edited = find_edited(records, config.paths.data, within=outs)
                if edited:
                    with dvc.repository_lock():
                        quarantined = quarantine_locked(dvc.root, edited)
                    return edited_outcome(list(specs), edited, quarantined, config.paths.data,
                                          time.perf_counter() - began, dvc.waited_s)
            apply_settings(dvc, config)  # a checkout where `make dvc-setup` did not run yet
            locks = commit_locked(dvc, specs, registry)
    except DvcError as exc:
        return CommitOutcome("failed", list(specs), exc.message, exc.advice or COMMIT_ADVICE,
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


COMMIT_ADVICE = ("The materialised files and their lineage are saved, and the stage files were restored. "
                 "Fix the cause, then run `gen4gen dvc commit` to commit every stage whose data exists.")


def edited_outcome(stages: list[str], edited: list[Path], quarantined: list[str], data_dir: Path,
                   seconds: float, waited: float) -> CommitOutcome:
    def shown(path: Path) -> str:
        return path.relative_to(data_dir.resolve()).as_posix() if path.is_relative_to(data_dir.resolve()) else str(path)

    names = [shown(p) for p in edited]
    listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    removed = (f" The {len(quarantined)} DVC cache object(s) the change had reached through their hard links "
               "were removed, so no version holds the changed bytes." if quarantined else "")
    return CommitOutcome(
        "failed", stages, f"{len(names)} file(s) changed after the step wrote them, not committed: {listed}",
        "Nothing was committed." + removed + " Restore the files (materialise the partition again, which "
        "replaces them), then run `gen4gen dvc commit`; `gen4gen dvc pull` fetches removed objects the "
        "remote holds.", seconds=seconds, lock_wait_s=waited, edited=names, quarantined=quarantined)


def commit_locked(dvc: Dvc, specs: dict[str, tuple[str, str, dict]], registry: dict | None) -> dict[str, dict]:
    """Under our lock: write the stage files, `dvc commit -f`, restore the stage files if that fails."""
    from ..io import atomic_write_bytes, atomic_write_text

    root = dvc.root
    by_file: dict[str, dict[str, dict]] = {}
    for file, name, spec in specs.values():
        by_file.setdefault(file, {})[name] = spec
    before: dict[str, tuple[bytes | None, bytes | None]] = {}  # file -> (dvc.yaml, dvc.lock) bytes
    with dvc.repository_lock():
        for folder in retired_partitions(root, registry):
            if not any(file.startswith(folder.relative_to(root).as_posix() + "/") for file in by_file):
                remove_stage_folder(folder)
        for file, stages in by_file.items():
            path = root / file
            lock = path.with_name("dvc.lock")
            before[file] = (path.read_bytes() if path.is_file() else None, lock.read_bytes() if lock.is_file() else None)
            merged = dict(load_yaml(path).get("stages") or {})
            merged.update(stages)
            atomic_write_text(path, dump_dvc_yaml(merged, top=file == "dvc.yaml"))
    # Stage files written, their lock not: the state a kill here leaves.
    crash_point("dvc-commit", *(name for _, name, _ in specs.values()))
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
                    atomic_write_bytes(path, yaml_bytes)
        raise
    locks: dict[str, dict] = {}
    for file in by_file:
        locks.update(parse_lock(load_yaml((root / file).with_name("dvc.lock")), file))
    return locks


def commit_existing(config: PipelineConfig) -> CommitOutcome:
    """Commit every stage whose output exists (recovery after a failed commit, or older data)."""
    refs = existing_stages(config, load_catalogue(config))
    if not refs:
        return CommitOutcome("skipped", [], f"no materialised data under {config.paths.data}")
    outcome = commit_stages(config, refs, push=False)
    if outcome.status == "committed":
        outcome.lineage_rows = relabel_lineage(config)
    return outcome
