"""Never versioning damage, and the DVC worker run by DVC's own interpreter.

The DVC cache is hard-linked to the data: an in-place edit of a committed file rewrites its cache
object too. These tests edit files as an outside program would (opened ``r+b``, one byte changed)
and check that no DVC version ends up holding the edited bytes.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gen4gen import versioning
from gen4gen.io import atomic_write_bytes, atomic_write_png, sha256_file

from .test_versioning import Project, isolate_dvc, needs_dvc

KEY = "blue_box+red_ball"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A set-up DVC repository whose data folder has one composition's recoloured PNGs, committed."""
    project = Project(isolate_dvc(tmp_path, monkeypatch)).setup()
    folder = project.config.paths.recoloured(KEY)
    rng = np.random.default_rng(0)
    for index in range(3):
        atomic_write_png(folder / f"{index:03d}.png", rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))
    project.records = records_of(folder)
    outcome = versioning.commit_stages(project.config, [("recoloured", KEY)], records=project.records)
    assert outcome.status == "committed", outcome.message()
    return project


def records_of(folder: Path) -> list[SimpleNamespace]:
    """What a step records of the files it wrote (lineage records: path and sha256)."""
    return [SimpleNamespace(path=str(p), sha256=sha256_file(p)) for p in sorted(folder.glob("*.png"))]


def edit_in_place(path: Path) -> bytes:
    """Change one byte through the file's own inode, as an editor writing in place would."""
    with open(path, "r+b") as handle:
        handle.seek(40)
        byte = handle.read(1)
        handle.seek(40)
        handle.write(bytes([byte[0] ^ 0xFF]))
    return path.read_bytes()


def cache_files(root: Path) -> list[Path]:
    return [p for p in (root / ".dvc" / "cache").rglob("*") if p.is_file()]


def lock_bytes(root: Path) -> bytes:
    return (root / "dvc-stages" / "compositions" / KEY / "dvc.lock").read_bytes()


@needs_dvc
def test_edited_file_is_quarantined_restored_and_recommitted(project):
    config, root = project.config, project.root
    victim = config.paths.recoloured(KEY) / "001.png"
    original = victim.read_bytes()
    md5 = hashlib.md5(original).hexdigest()
    cached = versioning.cache_object(versioning.cache_dir(root), md5)
    assert victim.stat().st_nlink == 2 and victim.stat().st_ino == cached.stat().st_ino  # hard-linked

    edited = edit_in_place(victim)
    assert cached.read_bytes() == edited  # the edit reached the cache through the link
    assert versioning.find_edited(project.records, config.paths.data) == [victim.resolve()]

    removed = versioning.quarantine_edited(config, [victim])
    assert removed == [str(cached)]
    assert not [p for p in cache_files(root) if p.read_bytes() == edited]
    assert versioning.quarantine_edited(config, [victim]) == []  # nothing left to remove

    atomic_write_bytes(victim, original)  # restored by rename: a new inode
    outcome = versioning.commit_stages(config, [("recoloured", KEY)], records=project.records)
    assert outcome.status == "committed", outcome.message()
    assert cached.read_bytes() == original
    assert not [p for p in cache_files(root) if p.read_bytes() == edited]
    assert versioning.status(config) == {}

    # A version restored from the cache has the original bytes.
    victim.unlink()
    versioning.checkout_data(config)
    assert victim.read_bytes() == original


@needs_dvc
def test_object_already_unlinked_from_its_file_is_found_by_its_content(project):
    """The file was replaced before quarantine: no inode is shared any more, but the object's
    content no longer hashes to its name."""
    config, root = project.config, project.root
    victim = config.paths.recoloured(KEY) / "002.png"
    original = victim.read_bytes()
    edited = edit_in_place(victim)
    atomic_write_bytes(victim, original)
    cached = versioning.cache_object(versioning.cache_dir(root), hashlib.md5(original).hexdigest())
    assert cached.read_bytes() == edited and cached.stat().st_ino != victim.stat().st_ino
    assert versioning.quarantine_edited(config, [victim]) == [str(cached)]
    assert not [p for p in cache_files(root) if p.read_bytes() == edited]


@needs_dvc
def test_commit_refuses_files_that_differ_from_the_records(project):
    config, root = project.config, project.root
    before = lock_bytes(root)
    victim = config.paths.recoloured(KEY) / "000.png"
    edited = edit_in_place(victim)
    outcome = versioning.commit_stages(config, [("recoloured", KEY)], records=project.records)
    assert outcome.status == "failed" and outcome.edited == [f"build/recoloured/{KEY}/000.png"]
    assert "000.png" in outcome.reason and "gen4gen dvc commit" in outcome.advice
    assert outcome.metadata()["dvc_edited_files"] == outcome.edited
    assert len(outcome.quarantined) == 1  # the object the edit had reached through the hard link
    assert lock_bytes(root) == before  # not committed
    assert not [p for p in cache_files(root) if p.read_bytes() == edited]

    # A file missing since it was recorded is refused too; a commit without records is not checked.
    (config.paths.recoloured(KEY) / "001.png").unlink()
    missing = versioning.commit_stages(config, [("recoloured", KEY)], records=project.records)
    assert missing.status == "failed" and f"build/recoloured/{KEY}/001.png" in missing.edited
    # Files outside the committed out are not the commit's business.
    elsewhere = [SimpleNamespace(path=str(config.paths.data / "concepts" / "red_ball" / "photo 0.png"),
                                 sha256="0" * 64)]
    assert versioning.commit_stages(config, [("recoloured", KEY)], records=elsewhere).status == "committed"


@needs_dvc
def test_worker_module_runs_under_dvcs_interpreter_from_any_directory(project, tmp_path):
    """DVC's environment has none of gen4gen's dependencies: the worker must import only DVC and
    the standard library, and find its module wherever it is started."""
    config, root = project.config, project.root
    folder = config.paths.recoloured(KEY)
    atomic_write_png(folder / "003.png", np.full((24, 24, 3), 7, dtype=np.uint8))
    dvc = versioning.Dvc.from_config(config)
    python = versioning.interpreter(dvc.executable)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A module of the repository's own name in the working directory must not shadow anything.
    (elsewhere / "gen4gen.py").write_text("raise SystemExit('the working directory was on the path')\n")
    command = versioning.worker_command(python)
    assert command[1:] == ["-m", "gen4gen.versioning.worker"]
    worker = subprocess.Popen([command[0], "-X", "importtime", *command[1:]], cwd=elsewhere,
                              env=versioning.worker_env(dvc), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    request = {"argv": ["commit", "--force", versioning.stage_target("recoloured", KEY)], "cwd": str(root)}
    out, err = worker.communicate(json.dumps(request) + "\n", timeout=120)
    assert worker.returncode == 0, err[-2000:]
    reply = json.loads(out.splitlines()[0])
    assert reply["rc"] == 0, reply
    imported = {line.rsplit("|", 1)[-1].strip() for line in err.splitlines() if line.startswith("import time:")}
    assert "dvc.cli" in imported
    assert {name for name in imported if name.startswith("gen4gen")} == {"gen4gen", "gen4gen.versioning"}
    assert not {"dagster", "numpy", "PIL"} & imported
    # The commit went through: the new file is in the recorded version and in the cache.
    listing = versioning.dir_listing(versioning.cache_dir(root), versioning.stage_version(config, "recoloured", KEY))
    assert "003.png" in {entry["relpath"] for entry in listing}
    assert versioning.status(config) == {}
