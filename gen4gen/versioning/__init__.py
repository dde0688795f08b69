"""DVC versioning of the data folder: plain functions around the ``dvc`` command (no Dagster).

Dagster orchestrates; DVC records versions. After an asset materialises a partition, and its
checks pass, its folder is committed to the DVC cache as a DVC *stage* (``dvc commit --force
<stage>``):

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
  would make each commit slower as the dataset grows. Per-partition files keep a commit's cost
  independent of the dataset's size.

Each commit merges the stages it commits into their file (other stages, including any a user
wrote into the top-level dvc.yaml, are kept) and removes the stage files of partitions that
left the catalogue (their data stay in the DVC cache and in git history). The md5 of a stage's
out is its *DVC version*, written into the lineage rows of its files (``artifacts.data_version``).

Modules (each importable alone; this package imports them on first use of a name, so that DVC's
own interpreter can run :mod:`.worker` without gen4gen's dependencies):

* :mod:`.command` — the ``dvc`` executable bound to a repository, its errors and locks;
* :mod:`.workers` / :mod:`.worker` — the long-lived DVC process and the program it runs;
* :mod:`.stages` — stage kinds, files, specs, dvc.yaml text, retired partitions;
* :mod:`.lockfiles` — reading dvc.lock, a stage's version, the cache's objects;
* :mod:`.history` — dataset versions from git (`gen4gen versions`);
* :mod:`.commit` — committing stages (refusing files changed since their step recorded them);
* :mod:`.integrity` — finding edited files and removing cache objects an edit reached;
* :mod:`.labels` — DVC versions of lineage rows;
* :mod:`.remote` — push, pull, checkout, status;  :mod:`.repository` — `gen4gen dvc setup`.
"""
from __future__ import annotations

import importlib

_HOMES = {
    "command": ["DvcError", "DvcUnavailable", "DvcLocked", "Dvc", "LOCK_MARKERS", "PLUGIN_MARKER",
                "available_dvc", "dvc_error_text", "not_installed", "repository_root", "unavailable_reason"],
    "workers": ["WORKER_MODULE", "interpreter", "stop_workers", "worker_command", "worker_env"],
    "stages": ["ASSET_STAGES", "KINDS", "CONCEPT_KINDS", "COMPOSITION_KINDS", "PARTITIONED_KINDS",
               "PARTITION_DIRS", "STAGES_DIR", "DVC_YAML_HEADER", "PARTITION_YAML_HEADER", "dump_dvc_yaml",
               "existing_stages", "load_catalogue", "parse_target", "remove_stage_folder", "repo_relative",
               "retired_partitions", "stage_deps", "stage_file", "stage_out", "stage_spec", "stage_target"],
    "lockfiles": ["cache_dir", "cache_object", "committed_md5s", "dir_listing", "load_yaml", "lock_files",
                  "parse_lock", "read_locks", "stage_version"],
    "history": ["StageSummary", "format_versions", "list_versions", "summarise_lock"],
    "commit": ["CommitOutcome", "commit_existing", "commit_stages"],
    "integrity": ["find_edited", "quarantine_edited", "record_files"],
    "labels": ["lineage_ids_in", "record_lineage_versions", "relabel_lineage"],
    "remote": ["checkout_data", "list_remotes", "pull_data", "push_data", "status"],
    "repository": ["apply_settings", "setup_repository"],
}
_WHERE = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
