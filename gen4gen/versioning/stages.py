"""Which DVC stages exist, where they are written, and their specs (dvc.yaml generation).

The catalogue and the dataset are stages of the top-level ``dvc.yaml``; every partition has a
small ``dvc-stages/{concepts,compositions}/<key>/dvc.yaml`` of its own (the package docstring
says why). Deps and outs are paths in the data folder, relative to the repository root.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from ..config import PipelineConfig, resolve_path
from .command import repository_root

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
PARTITION_DIRS = {"segmented": "concepts", "layouts": "compositions", "composed": "compositions",
                  "recoloured": "compositions", "captions": "compositions"}
STAGES_DIR = "dvc-stages"

DVC_YAML_HEADER = """\
# DVC stages of the gen4gen data (README: "Versions of the data (DVC)"), written by gen4gen.
# Dagster orchestrates: after an asset materialises, gen4gen/versioning/ writes its stage here
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


def repo_relative(path: Path, root: Path) -> str:
    """A path as dvc.yaml writes it: relative to the repository root, else absolute."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


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


def load_catalogue(config: PipelineConfig) -> dict | None:
    """The concept catalogue (build/concepts.json), or None when it is missing or unreadable."""
    from ..concepts import load_registry

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
    from ..concepts import split_composition

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
    """The stage as dvc.yaml holds it: wdir, cmd, deps that exist, the out."""
    root = repository_root(config)
    data = repo_relative(config.paths.data, root)
    spec: dict = {}
    depth = stage_file(kind, key).count("/")
    if depth:  # paths in every stage file are relative to the repository root
        spec["wdir"] = "/".join([".."] * depth)
    # The command is text for DVC to run, never run by us: quoting keeps an odd data folder one argument.
    spec["cmd"] = "gen4gen materialize" + ("" if data == "data" else f" --data-dir {shlex.quote(data)}")
    deps = [repo_relative(p, root) for p in stage_deps(config, kind, key, registry)]
    if deps:
        spec["deps"] = deps
    spec["outs"] = [repo_relative(stage_out(config, kind, key), root)]
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


def dump_dvc_yaml(stages: dict, top: bool) -> str:
    """A stage file's text: our header, then the stages in pipeline order (others after)."""
    import yaml

    def order(name: str) -> tuple:
        return (KINDS.index(name) if name in KINDS else len(KINDS), name)

    ordered = {name: stages[name] for name in sorted(stages, key=order)}
    body = yaml.safe_dump({"stages": ordered}, sort_keys=False, allow_unicode=True, default_flow_style=False,
                          width=10_000) if ordered else "stages: {}\n"
    return (DVC_YAML_HEADER if top else PARTITION_YAML_HEADER) + body


def retired_partitions(root: Path, registry: dict | None) -> list[Path]:
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


def remove_stage_folder(folder: Path) -> None:
    """Drop a retired partition's stage files (its data stay in the DVC cache and in git history)."""
    for name in ("dvc.yaml", "dvc.lock", ".gitignore"):
        (folder / name).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
