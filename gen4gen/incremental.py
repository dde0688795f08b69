"""What is out of date, what failed, and what is damaged: the plan of a rebuild.

Each partition's ``fingerprint.json`` (written last into its staging folder) records what
produced it (``gen4gen.fingerprints``) and its files with their sizes and hashes. The plan
compares it with the fingerprint the configuration and inputs call for now, checks the files
(size and mtime as the fast path, the hash when they differ, every hash under ``verify``), and
reads the failure records of partitions whose last build failed.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .fingerprints import (FINGERPRINT_FILE, STAGES, DesiredState, desired_state, describe_changes,
                           read_fingerprint)

COMPOSITION_STAGES = ("layouts", "composed_images", "recoloured_images", "captions")
DATASET_STAGES = ("mycanvas", "evaluation_report")


@dataclass
class PlannedStep:
    stage: str
    key: str | None
    reasons: list[str]
    # build: out of date or missing; repair: files missing or changed; retry: failed before;
    # waiting: failed, next retry after a backoff; given_up: failed too often; blocked: an input failed.
    action: str = "build"

    @property
    def label(self) -> str:
        return f"{self.stage}[{self.key}]" if self.key is not None else self.stage

    def to_dict(self) -> dict:
        return {"stage": self.stage, "key": self.key, "action": self.action, "reasons": self.reasons}

    def line(self) -> str:
        action = "" if self.action == "build" else f"({self.action.replace('_', ' ')}) "
        return f"{self.label}: {action}{'; '.join(self.reasons)}"


@dataclass
class UpdatePlan:
    steps: list[PlannedStep] = field(default_factory=list)

    def _keys(self, stages, actions=("build", "repair", "retry")) -> list[str]:
        return list(dict.fromkeys(s.key for s in self.steps if s.stage in stages and s.action in actions))

    @property
    def concepts(self) -> list[str]:
        return self._keys(("segmented_foregrounds",))

    @property
    def compositions(self) -> list[str]:
        return self._keys(COMPOSITION_STAGES)

    @property
    def publish(self) -> bool:
        return any(s.stage in DATASET_STAGES for s in self.steps)

    @property
    def empty(self) -> bool:
        return not any(s.action in ("build", "repair", "retry") for s in self.steps)

    @property
    def held_back(self) -> list[PlannedStep]:
        return [s for s in self.steps if s.action in ("waiting", "given_up", "blocked")]

    def to_dict(self) -> dict:
        return {"steps": [s.to_dict() for s in self.steps], "concepts": self.concepts,
                "compositions": self.compositions, "publish": self.publish}


# ------------------------------------------------------------------ failure records
def failure_path(paths, stage: str, key: str | None) -> Path:
    return paths.build / ".state" / "failures" / stage / f"{key or '_'}.json"


def read_failure(paths, stage: str, key: str | None) -> dict | None:
    try:
        return json.loads(failure_path(paths, stage, key).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def record_failure(paths, stage: str, key: str | None, digest: str, error: str) -> dict:
    """Count one more failed attempt of a partition (for this fingerprint) and remember the error."""
    from .io import atomic_write_text

    previous = read_failure(paths, stage, key)
    attempts = (previous["attempts"] if previous and previous.get("digest") == digest else 0) + 1
    record = {"digest": digest, "attempts": attempts, "error": error[:2000], "failed_at": time.time()}
    atomic_write_text(failure_path(paths, stage, key), json.dumps(record, indent=1))
    return record


def clear_failure(paths, stage: str, key: str | None) -> None:
    failure_path(paths, stage, key).unlink(missing_ok=True)


def retry_state(record: dict | None, digest: str, regeneration, now: float | None = None,
                honour_backoff: bool = True) -> tuple[str, str] | None:
    """(action, reason) for a partition with a failure record for this fingerprint, else None."""
    if not record or record.get("digest") != digest:
        return None
    attempts = record["attempts"]
    error = record.get("error", "").splitlines()[0] if record.get("error") else "unknown error"
    if attempts >= regeneration.max_attempts:
        return "given_up", f"failed {attempts} times, given up (last error: {error}); fix the cause, then " \
                           f"`gen4gen materialize --retry-failed`"
    wait = regeneration.retry_backoff_s * 2 ** (attempts - 1)
    remaining = record["failed_at"] + wait - (now or time.time())
    if honour_backoff and remaining > 0:
        return "waiting", f"failed {attempts} of {regeneration.max_attempts} attempts ({error}); retry in {remaining:.0f} s"
    return "retry", f"failed {attempts} of {regeneration.max_attempts} attempts ({error}); retrying"


# ------------------------------------------------------------------ file integrity
def damaged_files(folder: Path, record: dict, verify: bool = False, cache: dict | None = None) -> list[str]:
    """Files of a partition that are missing or no longer hold their recorded bytes."""
    from .io import sha256_file

    problems = []
    for name, (digest, size, mtime_ns) in sorted(record.get("files", {}).items()):
        path = folder / name
        try:
            stat = path.stat()
        except OSError:
            problems.append(f"{name} missing")
            continue
        if stat.st_size != size:
            problems.append(f"{name} changed (size {size} → {stat.st_size})")
        elif verify or stat.st_mtime_ns != mtime_ns:
            key = (str(path), stat.st_size, stat.st_mtime_ns)
            actual = cache.get(key) if cache is not None else None
            if actual is None:
                actual = sha256_file(path)
                if cache is not None:
                    cache[key] = actual
            if actual != digest:
                problems.append(f"{name} changed (bytes differ from the recorded sha256)")
    return problems


def partition_status(paths, stage: str, key: str | None, desired, verify: bool = False,
                     cache: dict | None = None) -> list[str]:
    """Why a partition is not current (empty when it is)."""
    folder = STAGES[stage].folder(paths, key)
    record = read_fingerprint(folder)
    if record is None and folder.is_dir() and not (folder / FINGERPRINT_FILE).exists() and any(folder.iterdir()):
        return ["built by an older version of the platform (no fingerprint): rebuilt"]
    if record is not None and record.get("digest") == desired.digest:
        damage = damaged_files(folder, record, verify, cache)
        return [f"repair: {d}" for d in damage]
    return describe_changes(record, desired, label=_input_label)


def _input_label(name: str) -> str:
    if name == "concept":
        return "concept photos or class changed"
    if name == "scene_bank":
        return "scene bank (backgrounds/) changed"
    if name in ("tokens", "composition_token"):
        return "token assignment changed"
    if name == "overrides":
        return "review overrides changed"
    if name == "compositions":
        return "the set of current compositions changed"
    if name == "generated":
        return "a trained model's samples changed"
    return f"input {name} changed"


# ------------------------------------------------------------------ the plan
def plan_updates(config, registry: dict, verify: bool = False, honour_backoff: bool = True,
                 force: bool = False) -> UpdatePlan:
    """Every partition that is missing, out of date, damaged or failed, with the reasons, in order."""
    paths = config.paths
    cache: dict = {}
    first = desired_state(config, registry)
    plan = UpdatePlan()
    stale: set[tuple[str, str | None]] = set()
    held: set[tuple[str, str | None]] = set()
    for (stage, key), desired in first.fingerprints.items():
        if stage in DATASET_STAGES:
            continue
        reasons = ["rebuild everything (--all)"] if force else partition_status(paths, stage, key, desired, verify, cache)
        if not reasons:
            continue
        blocked = [f"{s}[{k}]" for s, k in held if k is not None and _feeds(s, k, stage, key)]
        action = "repair" if all(r.startswith("repair: ") for r in reasons) else "build"
        if blocked:
            plan.steps.append(PlannedStep(stage, key, [f"waits for {', '.join(sorted(blocked))}"], "blocked"))
            held.add((stage, key))
            continue
        retry = None if force else retry_state(read_failure(paths, stage, key), desired.digest,
                                               config.regeneration, honour_backoff=honour_backoff)
        if retry:
            action, reason = retry
            reasons = [reason]
            if action != "retry":
                held.add((stage, key))
        if action in ("build", "repair", "retry"):
            stale.add((stage, key))
        plan.steps.append(PlannedStep(stage, key, reasons, action))
    # The dataset covers the compositions whose whole chain is (or will be) current.
    final = desired_state(config, registry, current=lambda stage, key: not any(
        (s, key) in held for s in COMPOSITION_STAGES) and not any(
        (("segmented_foregrounds", m) in held) for m in key.split("+")))
    for stage in DATASET_STAGES:
        desired = final.get(stage)
        reasons = ["rebuild everything (--all)"] if force else partition_status(paths, stage, None, desired, verify, cache)
        if stale and not reasons:
            reasons = ["inputs rebuilt"]
        if reasons:
            action = "repair" if all(r.startswith("repair: ") for r in reasons) else "build"
            plan.steps.append(PlannedStep(stage, None, reasons, action))
    return plan


def _feeds(up_stage: str, up_key: str, stage: str, key: str) -> bool:
    """Whether partition (up_stage, up_key) is an input of (stage, key)."""
    if up_stage == "segmented_foregrounds":
        return stage in COMPOSITION_STAGES and up_key in key.split("+")
    if up_stage in COMPOSITION_STAGES and stage in COMPOSITION_STAGES:
        return up_key == key and COMPOSITION_STAGES.index(up_stage) < COMPOSITION_STAGES.index(stage)
    return False


def left_out_compositions(config, registry: dict) -> dict[str, str]:
    """Compositions whose chain is not current on disk now, with the first reason: the export skips them."""
    paths = config.paths
    state: DesiredState = desired_state(config, registry)
    left_out = {}
    for composition in registry.get("compositions", []):
        key = composition["key"]
        members = key.split("+")
        checks = [("segmented_foregrounds", m) for m in members] + [(s, key) for s in COMPOSITION_STAGES]
        for stage, part in checks:
            desired = state.get(stage, part)
            if desired is None:
                left_out[key] = f"{stage}[{part}] is not in the catalogue"
                break
            reasons = partition_status(paths, stage, part, desired)
            if reasons:
                failure = read_failure(paths, stage, part)
                why = f"failed: {failure['error'].splitlines()[0]}" if failure and failure.get("error") else reasons[0]
                left_out[key] = f"{stage}[{part}] is not current ({why})"
                break
    return left_out
