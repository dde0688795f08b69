"""What is out of date: compares the catalogue's data versions with what each stage last built.

Each concept's data version is a hash of its photos' bytes and class name. Segmentation
manifests record the version they were built from; layout manifests record the versions of
every concept they used. So a partition is stale exactly when one of its inputs changed,
and adding a concept leaves every existing partition current.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .concepts import split_composition
from .io import read_json

MANIFEST = "manifest.json"


@dataclass
class UpdatePlan:
    concepts: list[str] = field(default_factory=list)  # segmentation partitions to (re)build
    compositions: list[str] = field(default_factory=list)  # composition partitions to (re)build
    publish: bool = False  # the export no longer matches the catalogue's compositions
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.concepts or self.compositions or self.publish)


def _manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    return read_json(path) if path.is_file() else None


def plan_updates(registry: dict, paths) -> UpdatePlan:
    """The partitions whose outputs are missing or were built from other inputs."""
    plan = UpdatePlan()
    versions = {c["key"]: _concept_version(c) for c in registry["concepts"]}
    for key, version in versions.items():
        manifest = _manifest(paths.segmented(key))
        if manifest is None:
            plan.concepts.append(key)
            plan.reasons[key] = "never segmented"
        elif manifest.get("data_version") != version:
            plan.concepts.append(key)
            plan.reasons[key] = "photos or class changed"
    for composition in registry["compositions"]:
        key = composition["key"]
        layouts = _manifest(paths.layouts(key))
        captions = _manifest(paths.captions(key))
        used = {k: versions.get(k) for k in split_composition(key)}
        if layouts is None or captions is None:
            plan.compositions.append(key)
            plan.reasons[key] = "never built"
        elif layouts.get("concept_versions") != used:
            plan.compositions.append(key)
            plan.reasons[key] = "a concept's photos changed"
    stats_path = paths.mycanvas / "stats.json"
    exported = read_json(stats_path).get("composition_keys") if stats_path.is_file() else None
    current = sorted(c["key"] for c in registry["compositions"])
    if plan.compositions or plan.concepts or exported != current:
        plan.publish = True
    return plan


def _concept_version(record: dict) -> str:
    from .concepts import ConceptRecord

    return ConceptRecord.from_dict(record).data_version
