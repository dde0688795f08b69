"""DVC versioning when things go wrong: remotes, locks, DVC absent or switched off."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from gen4gen import versioning
from gen4gen.cli import main as cli
from gen4gen.config import load_config
from gen4gen_assets.definitions import build_definitions
from gen4gen_assets.runner import materialize_all

from .conftest import make_concepts
# The fixtures too (a DVC project built once per test), so both modules build the same one.
from .test_versioning import DVC, Project, built, dvc_env, isolate_dvc, needs_dvc  # noqa: F401


# ------------------------------------------------------------------------------------------ faults
@needs_dvc
def test_missing_remote_says_what_to_do(built, capsys):
    project = built
    dvc = versioning.Dvc.from_config(project.config)
    dvc.run("remote", "remove", "--local", "local")
    with pytest.raises(versioning.DvcError) as raised:
        versioning.push_data(project.config)
    assert "no DVC remote" in raised.value.message and "make dvc-setup" in raised.value.advice
    assert cli(["--config", str(project.config_file), "dvc", "push"]) == 2
    assert "dvc remote add" in capsys.readouterr().err


@needs_dvc
def test_unreachable_remote_keeps_the_committed_data(built, tmp_path):
    project = built
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the remote should be")
    dvc = versioning.Dvc.from_config(project.config)
    dvc.run("remote", "modify", "--local", "local", "url", str(blocker / "remote"))
    before = project.tracked_files()
    with pytest.raises(versioning.DvcError) as raised:
        versioning.push_data(project.config)
    assert "could not push" in raised.value.message and "nothing was lost" in raised.value.advice
    assert project.tracked_files() == before and versioning.status(project.config) == {}


@needs_dvc
def test_push_failure_after_a_commit_is_reported_not_fatal(dvc_env, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    project = Project(dvc_env, 'push = true\n').setup()
    dvc = versioning.Dvc.from_config(project.config)
    dvc.run("remote", "modify", "--local", "local", "url", str(blocker / "remote"))
    project.build_catalogue()
    metadata = project.metadata("concept_images")
    assert metadata["dvc"] == "committed" and metadata["dvc_pushed"] is False
    assert "could not push" in metadata["dvc_push_error"]


def _hold_dvc_lock(root: Path, seconds: float) -> subprocess.Popen:
    """Another DVC process holding the repository lock, as a long `dvc` command would."""
    python = DVC.parent / "python"
    script = ("import sys, time\nfrom dvc.lock import Lock\nlock = Lock(sys.argv[1])\nlock.lock()\n"
              "print('locked', flush=True)\ntime.sleep(float(sys.argv[2]))\nlock.unlock()\n")
    holder = subprocess.Popen([str(python), "-c", script, str(root / ".dvc" / "tmp" / "lock"), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@needs_dvc
def test_locked_repository_is_waited_for(built):
    project = built
    (project.data / "mycanvas" / "notes.txt").write_text("changed while another DVC process runs")
    holder = _hold_dvc_lock(project.root, 2.0)
    try:
        began = time.monotonic()
        outcome = versioning.commit_stages(project.config, [("mycanvas", None)])
        waited = time.monotonic() - began
    finally:
        holder.wait(timeout=30)
    assert outcome.status == "committed", outcome.message()
    assert waited >= 1.0 and outcome.lock_wait_s >= 1.0
    assert set(versioning.status(project.config)) == {"reports"}  # built from the previous mycanvas


@needs_dvc
def test_lock_held_too_long_fails_cleanly_and_commits_later(dvc_env):
    project = Project(dvc_env, "lock_wait_s = 1.0\n").setup()
    project.build()
    stage_files = {p: p.read_bytes() for p in sorted(project.root.glob("**/dvc.*")) if ".dvc" not in p.parts}
    # A new concept is materialised while another DVC process holds the repository.
    make_concepts(project.data / "concepts", {"green_cone": [("triangle", (40, 170, 60))]})
    holder = _hold_dvc_lock(project.root, 60)
    try:
        summary = materialize_all(build_definitions(config_file=str(project.config_file)), project.instance,
                                  log=lambda *_: None, incremental=True)
        assert not summary.failed  # [dvc] on_error = "warn": the data are materialised regardless
        metadata = project.metadata("segmented_foregrounds")
        assert metadata["dvc"] == "failed" and "locked" in metadata["dvc_reason"]
        assert "gen4gen dvc commit" in metadata["dvc_what_to_do"]
        # Not half-committed: the stage files are exactly as before, none for the new partitions.
        now = {p: p.read_bytes() for p in sorted(project.root.glob("**/dvc.*")) if ".dvc" not in p.parts}
        assert now == stage_files
        # The data and their lineage are there.
        assert (project.data / "build/segmented/green_cone/manifest.json").is_file()
        assert any(r["path"].startswith("build/segmented/green_cone/") for r in project.lineage_rows())
    finally:
        holder.kill()
        holder.wait()
    assert cli(["--config", str(project.config_file), "dvc", "commit"]) == 0
    assert versioning.status(project.config) == {}
    rows = [r for r in project.lineage_rows() if r["path"].startswith("build/segmented/green_cone/")]
    assert rows and all(r["data_version"] for r in rows)


@needs_dvc
def test_failed_commit_with_on_error_fail_fails_the_step(dvc_env):
    project = Project(dvc_env, 'on_error = "fail"\nlock_wait_s = 0.5\n').setup()
    holder = _hold_dvc_lock(project.root, 60)
    try:
        failure = project.build_catalogue()
    finally:
        holder.kill()
        holder.wait()
    assert failure is not None and "locked" in failure
    assert (project.data / "build/concepts.json").is_file()  # the catalogue itself was written


def test_dvc_not_installed_skips_with_a_clear_reason(dvc_env, tmp_path, capsys):
    project = Project(dvc_env, f'executable = "{(tmp_path / "no-dvc" / "bin" / "dvc").as_posix()}"\n')
    assert project.build_catalogue() is None
    metadata = project.metadata("concept_images")
    assert metadata["dvc"] == "skipped"
    assert "not installed" in metadata["dvc_reason"] and "make dvc-setup" in metadata["dvc_what_to_do"]
    assert (project.data / "build/concepts.json").is_file() and project.lineage_rows()
    assert cli(["--config", str(project.config_file), "dvc", "status"]) == 2
    assert "make dvc-setup" in capsys.readouterr().err


def test_disabled_outside_the_repository_or_inside_dvc_repro_is_skipped(dvc_env, tmp_path, monkeypatch):
    project = Project(dvc_env, "enabled = false\n")
    assert "switched off" in versioning.unavailable_reason(project.config).message
    (project.root / ".dvc").mkdir()
    dvc = {"executable": sys.executable, "root": str(project.root)}
    assert versioning.unavailable_reason(load_config(project.config_file, dvc=dvc)) is None
    outside = load_config(project.config_file, data_dir=str(tmp_path / "elsewhere"), dvc=dvc)
    assert "outside the DVC repository" in versioning.unavailable_reason(outside).message
    monkeypatch.setenv("DVC_STAGE", "dvc.yaml:mycanvas")
    assert "dvc repro" in versioning.unavailable_reason(load_config(project.config_file, dvc=dvc)).message
