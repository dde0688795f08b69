"""DVC versioning with the real DVC, in temporary git repositories: commits, versions, switching.

DVC 3.67.1 lives in its own environment (.venv-dvc, `make dvc-env`; `make test` installs it):
these tests skip where it is absent. Nothing here touches the checkout's data/ or .dvc state.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from gen4gen import versioning
from gen4gen.cli import main as cli
from gen4gen.config import PROJECT_ROOT, load_config
from gen4gen.fingerprints import FINGERPRINT_FILE
from gen4gen.lineage import JOURNAL_NAME, LineageStore
from gen4gen_assets.definitions import build_definitions
from gen4gen_assets.runner import materialize_all

from .conftest import make_concepts

DVC = PROJECT_ROOT / ".venv-dvc" / "bin" / "dvc"
needs_dvc = pytest.mark.skipif(not DVC.is_file(), reason=f"{DVC} is absent: run `make dvc-env` (make test does)")

CONCEPTS = {
    "red_ball": [("ellipse", (200, 40, 40)), ("ellipse", (180, 60, 50))],
    "blue box": [("rect", (40, 60, 200))],
}
CONFIG = """seed = 3
[proposal]
max_compositions = 1
sizes = [2]
per_new_concept = 1
[layout]
images_per_composition = 2
[composition]
canvas_size = 128
[report]
contact_sheet_thumb = 32
"""


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


class Project:
    """A git repository holding a DVC repository and a small data folder, like the checkout."""

    def __init__(self, base: Path, dvc_config: str = ""):
        self.root = base / "repo"
        self.root.mkdir(parents=True)
        self.data = self.root / "data"
        self.remote = base / "remote"
        _git(self.root, "init", "-q")
        _git(self.root, "config", "user.email", "test@example.com")
        _git(self.root, "config", "user.name", "test")
        # As in the checkout: the data folder is git-ignored; DVC tracks it.
        (self.root / ".gitignore").write_text("/data/\n/gen4gen.toml\n", encoding="utf-8")
        make_concepts(self.data / "concepts", CONCEPTS)
        self.config_file = self.root / "gen4gen.toml"
        self.config_file.write_text(
            f'data_dir = "{self.data.as_posix()}"\n' + CONFIG
            + f'[dvc]\nroot = "{self.root.as_posix()}"\nremote_url = "{self.remote.as_posix()}"\n{dvc_config}',
            encoding="utf-8")
        self.instance = DagsterInstance.ephemeral()

    @classmethod
    def copied(cls, template: "Project", base: Path) -> "Project":
        """A copy of a set-up (and possibly built) project under ``base``: its git and DVC repository,
        data and remote. Only the configuration and DVC's local settings name the folder. `cp -a`
        keeps the hard links between the data and DVC's cache, as DVC made them."""
        project = cls.__new__(cls)
        project.root, project.data, project.remote = base / "repo", base / "repo" / "data", base / "remote"
        base.mkdir(parents=True, exist_ok=True)
        sources = [str(template.root)] + ([str(template.remote)] if template.remote.exists() else [])
        subprocess.run(["cp", "-a", *sources, str(base)], check=True)
        project.config_file = project.root / "gen4gen.toml"
        for path in (project.config_file, project.root / ".dvc" / "config.local"):
            if path.is_file():
                path.write_text(path.read_text(encoding="utf-8").replace(str(template.root.parent), str(base)),
                                encoding="utf-8")
        project.instance = DagsterInstance.ephemeral()
        return project

    @property
    def config(self):
        return load_config(self.config_file)

    def setup(self) -> "Project":
        versioning.setup_repository(self.config, log=lambda *_: None)
        return self

    def build(self):
        summary = materialize_all(build_definitions(config_file=str(self.config_file)), self.instance,
                                  log=lambda *_: None, incremental=True)
        assert not summary.failed, summary.failed
        return summary

    def build_catalogue(self) -> str | None:
        """Only the catalogue (the concept_images asset); returns the step's failure message, if any."""
        job = build_definitions(config_file=str(self.config_file)).resolve_job_def("catalogue_concepts")
        result = job.execute_in_process(instance=self.instance, raise_on_error=False)
        failures = [str(event.step_failure_data.error.message) for event in result.all_events if event.is_step_failure]
        return "\n".join(failures) if not result.success else None

    def metadata(self, asset: str) -> dict:
        event = self.instance.get_latest_materialization_event(AssetKey(asset))
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    def commit_version(self, message: str) -> str:
        _git(self.root, "add", "-A")
        _git(self.root, "commit", "-q", "-m", message)
        return _git(self.root, "rev-parse", "HEAD")

    def tracked_files(self) -> dict[str, str]:
        """sha256 of every file in every out that the stage files' dvc.lock name (relative to data/)."""
        files = {}
        for entry in versioning.read_locks(self.root).values():
            for out in entry["outs"]:
                path = self.root / out
                for file in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
                    files[file.relative_to(self.data).as_posix()] = _sha256(file)
        return files

    def lineage_rows(self) -> list[dict]:
        with LineageStore(self.data).reader() as connection:
            rows = connection.execute("SELECT path, sha256, asset_key, data_version FROM artifacts").fetchall()
        return [dict(zip(("path", "sha256", "asset_key", "data_version"), row)) for row in rows]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def isolate_dvc(tmp_path: Path, monkeypatch) -> Path:
    """Keep DVC's hash cache (state, in a site cache folder) private and gen4gen's settings default."""
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    for name in ("GEN4GEN_CONFIG", "GEN4GEN_DATA_DIR", "GEN4GEN_PROFILE", "DVC_STAGE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def dvc_env(tmp_path, monkeypatch):
    return isolate_dvc(tmp_path, monkeypatch)


@pytest.fixture
def built(dvc_env):
    project = Project(dvc_env).setup()
    project.build()
    return project


# ------------------------------------------------------------------------------------------ commits
@needs_dvc
def test_materialisation_commits_every_stage_and_dvc_status_is_clean(built, capsys):
    project = built
    assert versioning.status(project.config) == {}
    plain = subprocess.run([str(DVC), "status"], cwd=project.root, capture_output=True, text=True,
                           env={**versioning.Dvc.from_config(project.config).env()})
    assert plain.returncode == 0 and "up to date" in plain.stdout
    locks = versioning.read_locks(project.root)
    kinds = {versioning.parse_target(t)[0] for t in locks}
    assert kinds == set(versioning.KINDS)
    registry = json.loads((project.data / "build/concepts.json").read_text())
    assert {versioning.parse_target(t)[1] for t in locks if t.startswith("dvc-stages/concepts/")} == {
        c["key"] for c in registry["concepts"]}
    # The git-ignored data folder got no .gitignore entries; the stage files are what git tracks.
    assert not list(project.data.rglob(".gitignore"))
    assert "data/" not in _git(project.root, "status", "--porcelain")
    # Materialisation metadata and lineage rows carry the DVC version of the data they belong to.
    for asset, target in (("mycanvas", "dvc.yaml:mycanvas"), ("evaluation_report", "dvc.yaml:reports"),
                          ("concept_images", "dvc.yaml:catalogue")):
        metadata = project.metadata(asset)
        out = next(iter(locks[target]["outs"].values()))
        assert metadata["dvc"] == "committed" and metadata["dvc_version"] == out["md5"], metadata
    assert project.metadata("mycanvas")["dvc_deps"]  # the versions of the folders it was built from
    by_out = {(project.root / path).relative_to(project.data).as_posix(): out["md5"]
              for entry in locks.values() for path, out in entry["outs"].items()}
    rows = [r for r in project.lineage_rows() if not r["path"].startswith(("pkg:", "/", "concepts/"))]
    assert rows
    for row in rows:
        expected = [md5 for prefix, md5 in by_out.items() if row["path"] == prefix or row["path"].startswith(prefix + "/")]
        assert expected and row["data_version"] == expected[0], row
    # Hard links into the cache: no copy of the images (every gen4gen write replaces files by rename).
    image = next((project.data / "build/recoloured").rglob("*.png"))
    assert image.stat().st_nlink == 2
    # `gen4gen versions` lists the workspace version with image counts per stage.
    assert cli(["--config", str(project.config_file), "versions"]) == 0
    out = capsys.readouterr().out
    assert "workspace" in out and "segmented" in out and "mycanvas" in out
    listed = versioning.list_versions(project.config)[0]["stages"]
    assert listed["recoloured"]["images"] == 2 and listed["segmented"]["partitions"] == 2


@needs_dvc
def test_push_delete_workspace_and_cache_then_pull_restores_identical_bytes(built):
    project = built
    before = project.tracked_files()
    assert versioning.push_data(project.config) is not None
    assert any(project.remote.rglob("*"))
    for folder in ("build", "mycanvas", "reports"):
        shutil.rmtree(project.data / folder)
    shutil.rmtree(project.root / ".dvc" / "cache")
    versioning.pull_data(project.config)
    assert project.tracked_files() == before
    assert versioning.status(project.config) == {}


@needs_dvc
def test_two_versions_with_different_concepts_switch_back_and_forth(built):
    project = built
    v1_files = project.tracked_files()
    v1 = project.commit_version("dataset v1: two concepts")
    make_concepts(project.data / "concepts", {"green_cone": [("triangle", (40, 170, 60))]})
    project.build()
    assert versioning.status(project.config) == {}
    v2_files = project.tracked_files()
    v2 = project.commit_version("dataset v2: three concepts")
    blue_box = versioning.stage_version(project.config, "segmented", "blue_box")
    assert {p.split("/")[2] for p in v2_files if p.startswith("build/segmented/")} == {"red_ball", "blue_box",
                                                                                      "green_cone"}
    assert v1_files != v2_files

    versions = versioning.list_versions(project.config)
    assert [v["commit"] for v in versions] == [v2, v1]
    assert versions[0]["stages"]["segmented"]["partitions"] == 3
    assert versions[1]["stages"]["segmented"]["partitions"] == 2

    for commit, expected in ((v1, v1_files), (v2, v2_files), (v1, v1_files)):
        _git(project.root, "checkout", "-q", commit)
        result = versioning.checkout_data(project.config)
        assert project.tracked_files() == expected, commit
        # DVC removes the outputs of the other version's partitions too (they stay in the cache).
        assert (project.data / "build/segmented/green_cone").exists() == (commit == v2)
        assert result["untracked"] == []
        _check_lineage_names_the_version(project)

    # A concept removed from the catalogue takes its stage files along (its data stay in the
    # versions that have them). Removed while on v2: the new version follows it.
    _git(project.root, "checkout", "-q", v2)
    versioning.checkout_data(project.config)
    assert cli(["--config", str(project.config_file), "remove-concept", "blue box", "--no-build"]) == 0
    project.build()
    assert not (project.root / "dvc-stages/concepts/blue_box").exists()
    assert not [p for p in (project.root / "dvc-stages/compositions").iterdir() if "blue_box" in p.name]
    assert versioning.status(project.config) == {}
    # Its history stays: the versions that had it still list it, and bring its data back.
    assert versioning.cache_object(versioning.cache_dir(project.root), blue_box).is_file()
    v3 = project.commit_version("dataset v3: blue box removed")
    partitions = {v["commit"]: v["stages"]["segmented"]["partitions"] for v in versioning.list_versions(project.config)}
    assert partitions == {v3: 2, v2: 3, v1: 2}
    _git(project.root, "checkout", "-q", v2)
    versioning.checkout_data(project.config)
    assert project.tracked_files() == v2_files


def _check_lineage_names_the_version(project: Project) -> None:
    """Every file of the checked-out version has its lineage row, and every row labelled with
    one of this version's DVC hashes names a file that is on disk with the recorded bytes."""
    files = project.tracked_files()
    rows = project.lineage_rows()
    known = {(r["path"], r["sha256"]) for r in rows}
    # Not lineage artifacts themselves: the lineage exported beside the dataset, the report's
    # thumbnail cache (a hidden folder), and each partition's bookkeeping (its build fingerprint
    # and its lineage journal, which cannot record itself).
    unrecorded = [p for p in files if p.startswith("mycanvas/lineage_") or "/." in p
                  or p.rsplit("/", 1)[-1] in (FINGERPRINT_FILE, JOURNAL_NAME)]
    missing = [path for path, sha in files.items() if (path, sha) not in known and path not in unrecorded]
    assert not missing, missing[:5]
    versions = {out["md5"] for entry in versioning.read_locks(project.root).values()
                for out in entry["outs"].values()}
    labelled = [r for r in rows if r["data_version"] in versions]
    assert labelled
    for row in labelled:
        assert files.get(row["path"]) == row["sha256"], row


def _commit_in_another_process(args) -> str:
    config_file, kind = args
    return versioning.commit_stages(load_config(config_file), [(kind, None)]).status


@needs_dvc
def test_concurrent_commits_from_several_processes_are_serialised(built):
    """Three step processes commit stages of the same dvc.yaml at once: none is lost."""
    import multiprocessing

    project = built
    for name in ("dvc.yaml", "dvc.lock"):
        (project.root / name).unlink()
    kinds = ["catalogue", "mycanvas", "reports"]
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        statuses = pool.map(_commit_in_another_process, [(str(project.config_file), k) for k in kinds])
    assert statuses == ["committed"] * 3
    assert {versioning.parse_target(t)[0] for t in versioning.read_locks(project.root) if t.startswith("dvc.yaml:")} \
        == set(kinds)
    assert versioning.status(project.config) == {}


@needs_dvc
def test_checkout_keeps_uncommitted_changes_unless_forced(built):
    project = built
    before = project.tracked_files()
    image = next((project.data / "build/recoloured").rglob("*.png"))
    changed = image.with_suffix(".tmp")
    changed.write_bytes(image.read_bytes() + b"edited")
    changed.replace(image)  # as every gen4gen write: a new file renamed over the old one
    changes = versioning.status(project.config)
    stage = f"dvc-stages/compositions/{image.parent.name}/dvc.yaml:recoloured"
    assert stage in changes and "mycanvas" in changes, changes
    with pytest.raises(versioning.DvcError) as raised:
        versioning.checkout_data(project.config)
    assert "--force" in raised.value.advice and "gen4gen dvc commit" in raised.value.advice
    assert image.read_bytes().endswith(b"edited")
    versioning.checkout_data(project.config, force=True)
    assert project.tracked_files() == before
