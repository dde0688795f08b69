"""A run killed anywhere, then `gen4gen materialize`: the data ends as an uninterrupted build leaves it.

Each case builds a small DVC-versioned project, changes ``seed`` (layouts and everything after
are rebuilt), runs `gen4gen materialize` in a child process that is SIGKILLed at a named point
(``GEN4GEN_CRASH_AT``) or at a random moment, then runs it again. Afterwards every PNG opens,
the export's files match its metadata, every exported image's lineage verifies, no staging
leftovers remain, and the export equals the one an uninterrupted run made.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from PIL import Image

from gen4gen.cli import main as cli
from gen4gen.staging import CRASH_ENV
from gen4gen_assets.mycanvas import export_problems

from .conftest import make_concepts
from .test_versioning import Project, isolate_dvc, needs_dvc

pytestmark = needs_dvc

CLI = [sys.executable, "-c", "import sys; from gen4gen.cli import main; sys.exit(main(sys.argv[1:]))"]
# Makefile's instance settings: one slot in every pool, so a slot a dead run keeps blocks the next.
DAGSTER_YAML = "telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n    granularity: op\n"
RUN_TIMEOUT_S = 300  # a hang shows up as a timeout, not as a stuck suite


def _home(project: Project) -> Path:
    home = project.root.parent / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML, encoding="utf-8")
    return home


def _start(project: Project, crash_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(_home(project))}
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.Popen([*CLI, "--config", str(project.config_file), "materialize"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _materialize(project: Project, crash_at: str | None = None) -> tuple[int, str]:
    process = _start(project, crash_at)
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"`gen4gen materialize` did not finish in {RUN_TIMEOUT_S} s (a hang):\n{output[-3000:]}")
    return process.returncode, output


@pytest.fixture(scope="module")
def built_once(tmp_path_factory) -> Project:
    """The small DVC-versioned project, set up and built once; each case works on a copy."""
    base = tmp_path_factory.mktemp("built_once")
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_dvc(base, monkeypatch)
        project = Project(base).setup()
        project.build()
    return project


def _changed_seed(built_once: Project, base: Path) -> Project:
    project = Project.copied(built_once, base)
    text = project.config_file.read_text(encoding="utf-8")
    project.config_file.write_text(text.replace("seed = 3", "seed = 4"), encoding="utf-8")
    return project


def _export(project: Project) -> dict:
    """The export's images and row files; absolute paths made relative, DVC versions left out.

    A partition's DVC version covers its bookkeeping (fingerprint.json, lineage journal: run ids,
    times), so two uninterrupted builds of the same data differ there too.
    """
    folder = project.data / "mycanvas"

    def rows(name: str) -> list[dict]:
        text = (folder / name).read_text(encoding="utf-8").replace(str(project.root), "<root>")
        return [{k: v for k, v in json.loads(line).items() if k != "dvc_version"} for line in text.splitlines()]

    return {"images": {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))},
            "metadata": rows("metadata.jsonl"), "rejected": rows("rejected.jsonl")}


@pytest.fixture(scope="module")
def uninterrupted(built_once, tmp_path_factory):
    base = tmp_path_factory.mktemp("uninterrupted")
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_dvc(base, monkeypatch)
        project = _changed_seed(built_once, base)
        began = time.perf_counter()
        code, output = _materialize(project)
        seconds = time.perf_counter() - began
    assert code == 0, output
    export = _export(project)
    assert export["images"], "the reference export is empty: nothing to compare"
    return export, seconds


def _assert_recovered(project: Project, reference: dict) -> None:
    data = project.data
    for png in data.rglob("*.png"):
        with Image.open(png) as image:
            image.load()  # a truncated file raises here
    leftovers = [p for p in data.rglob(".*") if any(f".{kind}-" in p.name for kind in ("staging", "ready", "old"))]
    assert not leftovers, leftovers
    assert export_problems(data / "mycanvas", project.config.paths) == []
    assert not list((data / "build/.state/dvc_pending").glob("*")), "a partition is still waiting for its DVC commit"
    for png in sorted((data / "mycanvas").glob("*.png")):
        assert cli(["--config", str(project.config_file), "lineage", str(png), "--verify"]) == 0, png
    assert _export(project) == reference


@pytest.mark.parametrize("point", ["partition-staged", "dvc-commit", "dvc-commit:layouts", "publish",
                                   "build:evaluation_report"])
def test_a_run_killed_at_a_named_point_is_finished_by_the_next(point, built_once, uninterrupted, tmp_path, monkeypatch,
                                                               capsys):
    isolate_dvc(tmp_path, monkeypatch)
    project = _changed_seed(built_once, tmp_path)
    code, output = _materialize(project, crash_at=point)
    assert code == -signal.SIGKILL, f"the run was not killed at {point}:\n{output[-2000:]}"
    code, output = _materialize(project)
    assert code == 0, output
    capsys.readouterr()
    _assert_recovered(project, uninterrupted[0])
    # The run the kill interrupted is reported, not left "started" for ever.
    assert "stopped without ending" in output
    plan_code = cli(["--config", str(project.config_file), "plan"])
    assert plan_code == 0 and "nothing to do" in capsys.readouterr().out


def test_a_run_killed_at_a_random_moment_is_finished_by_the_next(built_once, uninterrupted, tmp_path, monkeypatch):
    isolate_dvc(tmp_path, monkeypatch)
    seed = int(os.environ.get("GEN4GEN_CRASH_SEED", time.time_ns() % 100_000))
    delay = random.Random(seed).uniform(0.2, uninterrupted[1])
    project = _changed_seed(built_once, tmp_path)
    process = _start(project)
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGKILL)  # the command and any DVC process it started
    process.communicate()
    code, output = _materialize(project)
    assert code == 0, f"GEN4GEN_CRASH_SEED={seed} (killed after {delay:.2f} s):\n{output}"
    try:
        _assert_recovered(project, uninterrupted[0])
    except AssertionError as exc:
        raise AssertionError(f"GEN4GEN_CRASH_SEED={seed} (killed after {delay:.2f} s): {exc}") from exc


def test_a_run_killed_during_segmentation_does_not_block_the_next(built_once, tmp_path, monkeypatch):
    """The dead run keeps its `gpu` pool slot until the next `materialize` finds it dead and frees it."""
    isolate_dvc(tmp_path, monkeypatch)
    project = Project.copied(built_once, tmp_path)
    make_concepts(project.data / "concepts", {"yellow_star": [("ellipse", (220, 220, 30))]})
    code, output = _materialize(project, crash_at="build:segmented_foregrounds")
    assert code == -signal.SIGKILL, output
    code, output = _materialize(project)
    assert code == 0, output
    cleaned = [line for line in output.splitlines() if "stopped without ending" in line]
    assert len(cleaned) == 1 and "segment_concepts[yellow_star]" in cleaned[0], output
    assert "ok    segmented_foregrounds[yellow_star]" in output
    instance = DagsterInstance.from_config(str(_home(project)))
    assert not instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    killed = instance.get_runs(filters=RunsFilter(job_name="segment_concepts",
                                                  statuses=[DagsterRunStatus.FAILURE]))
    assert [r.tags.get("dagster/partition") for r in killed] == ["yellow_star"]
    assert any("yellow_star" in row["composition"] for row in _export(project)["metadata"])


def test_a_file_edited_before_its_pending_dvc_commit_is_never_versioned(built_once, uninterrupted, tmp_path,
                                                                          monkeypatch):
    import hashlib

    isolate_dvc(tmp_path, monkeypatch)
    project = _changed_seed(built_once, tmp_path)
    code, output = _materialize(project, crash_at="dvc-commit:layouts")
    assert code == -signal.SIGKILL, output
    pending = sorted(m.name for m in (project.data / "build/.state/dvc_pending").iterdir())
    assert pending == ["layouts__blue_box+red_ball"]
    layout = project.data / "build/layouts/blue_box+red_ball/manifest.json"
    content = bytearray(layout.read_bytes())
    content[10] ^= 0x01  # in place, same size
    layout.write_bytes(bytes(content))
    edited_md5 = hashlib.md5(bytes(content)).hexdigest()
    code, output = _materialize(project)
    assert code == 0, output
    assert "DVC: failed 1 partition(s) waiting for their commit" in output and "not committed" in output, output
    cached = {p.parent.name + p.name for p in (project.root / ".dvc/cache/files/md5").rglob("*") if p.is_file()}
    assert edited_md5 not in cached
    _assert_recovered(project, uninterrupted[0])


def test_a_byte_edited_exported_image_is_restored_and_never_versioned(built_once, tmp_path, monkeypatch):
    """The DVC cache is hard-linked to the data, so an in-place edit reaches the cached object too."""
    import hashlib

    isolate_dvc(tmp_path, monkeypatch)
    project = Project.copied(built_once, tmp_path)
    image = sorted((project.data / "mycanvas").glob("*.png"))[0]
    original = image.read_bytes()
    with open(image, "r+b") as handle:  # in place, same size
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 0xFF]))
    edited_md5 = hashlib.md5(image.read_bytes()).hexdigest()
    code, output = _materialize(project)
    assert code == 0, output
    assert image.read_bytes() == original
    cache = project.root / ".dvc/cache/files/md5"
    assert edited_md5 not in {p.parent.name + p.name for p in cache.rglob("*") if p.is_file()}
    assert not [p for p in cache.rglob("*") if p.is_file() and hashlib.md5(p.read_bytes()).hexdigest() == edited_md5]
