"""`gen4gen add-concept` while the real dagster-daemon runs the sensor: each new partition is built once.

End to end: a small project is materialised once through the command line; then ``dagster-daemon
run`` is started on it (the same instance configuration `make setup` writes: telemetry off, the
``gpu`` pool with one slot), so ``concept_folder_sensor`` ticks and launches its runs through the
daemon's run coordinator and launcher. While it runs, ``gen4gen add-concept`` (a subprocess, the
installed command) copies a new concept in and materialises in-process; the sensor sees the same
new partitions and requests runs for those no live run is building. The test waits until the
system settles (no live run, and a tick after the last run that requested nothing), then counts,
per new partition and stage, the materialisations that built something (not ``unchanged``),
across the command's runs and the sensor's: each must be exactly one.

The sensor's interval is shortened with ``GEN4GEN_SENSOR_INTERVAL_S`` (the daemon still ticks at
most every 5 s), and add-concept starts just after a tick, so that the sensor ticks while
add-concept builds, after its photos are in.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from gen4gen.cli import main as cli
from gen4gen.concepts import load_registry
from gen4gen.config import load_config

from .conftest import PROJECT_ROOT, create_small_project, object_photo

VENV_BIN = Path(sys.executable).parent
SENSOR = "concept_folder_sensor"
# Below the daemon's loop time (5 s): the sensor ticks on every loop, about every 5 s.
SENSOR_INTERVAL_S = 2
FIRST_TICK_TIMEOUT = 90  # the daemon loads the code location, then ticks
ADD_CONCEPT_TIMEOUT = 120
SETTLE_TIMEOUT = 300  # after add-concept ended: the sensor's runs, then a tick that requests nothing (a
# loaded machine slows the daemon's ticks and each run's step processes: 120 s was seen to fall short)
NEW_COMPOSITIONS = 4
COMPOSITION_STAGES = ("layouts", "composed_images", "recoloured_images", "captions")
# What `make setup` writes (Makefile, $(DAGSTER_HOME)/dagster.yaml) on a machine with one GPU or none.
DAGSTER_YAML = "telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n    granularity: op\n"
WORKSPACE_YAML = f"""load_from:
  - python_module:
      module_name: gen4gen_assets.definitions
      location_name: gen4gen
      working_directory: {PROJECT_ROOT.as_posix()}
"""

pytestmark = pytest.mark.skipif(not (VENV_BIN / "dagster-daemon").exists() or not (VENV_BIN / "gen4gen").exists(),
                                reason=f"dagster-daemon or gen4gen not found beside {sys.executable}")


def _stop(process: subprocess.Popen) -> None:
    """Stop the daemon's whole process group (the daemon, its code server and the runs it launched)."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def _tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:] if path.is_file() else "(no log)"


def _sensor_ticks(instance) -> list:
    """The sensor's ticks, newest first (none before its first evaluation)."""
    from dagster._core.scheduler.instigation import InstigatorType

    states = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
              if s.instigator_name == SENSOR]
    ticks = []
    for state in states:
        ticks += instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=200)
    return sorted(ticks, key=lambda t: t.timestamp, reverse=True)


def _source(run) -> str:
    from gen4gen_assets.liveness import LEASE_TAG

    if "dagster/sensor_name" in run.tags:
        return "sensor"
    return "cli" if LEASE_TAG in run.tags else "other"


def _live_runs(instance) -> list:
    from dagster import DagsterRunStatus, RunsFilter

    return instance.get_runs(filters=RunsFilter(statuses=[
        DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
        DagsterRunStatus.CANCELING]))


def _run_lines(instance, since: float) -> str:
    lines = []
    for record in sorted(instance.get_run_records(), key=lambda r: r.create_timestamp.timestamp()):
        if record.create_timestamp.timestamp() < since:
            continue
        run = record.dagster_run
        lines.append(f"  {record.create_timestamp:%H:%M:%S} {_source(run):6} {run.job_name}"
                     f"[{run.tags.get('dagster/partition', '')}] {run.status.value}")
    return "\n".join(lines) or "  (none)"


def test_add_concept_while_the_sensor_runs_builds_each_new_partition_once(tmp_path, monkeypatch, capsys):
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus
    from dagster._core.scheduler.instigation import TickStatus

    data, config_file = create_small_project(tmp_path)
    # Four new compositions (default two): add-concept builds longer, so the sensor ticks during it.
    text = config_file.read_text(encoding="utf-8")
    config_file.write_text(text.replace("[proposal]\n", f"[proposal]\nper_new_concept = {NEW_COMPOSITIONS}\n", 1),
                           encoding="utf-8")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML, encoding="utf-8")
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(WORKSPACE_YAML, encoding="utf-8")
    for name in ("GEN4GEN_PROFILE", "GEN4GEN_DATA_DIR", "GEN4GEN_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    env = {**os.environ, "DAGSTER_HOME": str(home), "GEN4GEN_CONFIG": str(config_file), "HF_HUB_OFFLINE": "1",
           "DAGSTER_DISABLE_TELEMETRY": "1", "GEN4GEN_SENSOR_INTERVAL_S": str(SENSOR_INTERVAL_S),
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    # 1. The project is current before the daemon starts.
    assert cli(["--config", str(config_file), "materialize"]) == 0
    capsys.readouterr()
    registry_before = load_registry(data / "build/concepts.json")
    instance = DagsterInstance.get()

    photos = tmp_path / "new_photos"
    photos.mkdir()
    object_photo("ellipse", (230, 200, 40), seed=99).save(photos / "star 1.png")
    object_photo("ellipse", (210, 190, 60), seed=98).save(photos / "star 2.png")

    # 2. The real daemon: the sensor ticks and its runs go through the queued run coordinator.
    log = tmp_path / "dagster_daemon.log"
    with log.open("wb") as sink:
        daemon = subprocess.Popen([str(VENV_BIN / "dagster-daemon"), "run", "-w", str(workspace)], cwd=PROJECT_ROOT,
                                  env=env, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + FIRST_TICK_TIMEOUT
        while not any(t.status == TickStatus.SKIPPED for t in _sensor_ticks(instance)):
            if daemon.poll() is not None:
                pytest.fail(f"dagster-daemon exited with {daemon.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"the sensor did not tick (up to date) within {FIRST_TICK_TIMEOUT} s of the daemon's "
                            f"start:\n{_tail(log)}")
            time.sleep(1)

        # 3. add-concept, the installed command, just after a tick: the next ones fall in its build.
        last = _sensor_ticks(instance)[0].timestamp
        deadline = time.monotonic() + 30
        while _sensor_ticks(instance)[0].timestamp == last and time.monotonic() < deadline:
            time.sleep(0.2)
        started = time.time()
        added = subprocess.run([str(VENV_BIN / "gen4gen"), "--config", str(config_file), "add-concept", str(photos),
                                "--name", "yellow star"], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=ADD_CONCEPT_TIMEOUT)
        ended = time.time()
        assert added.returncode == 0, f"add-concept failed ({added.returncode}):\n{added.stdout}\n{added.stderr}"

        # Settled: no live run, and a tick that began after add-concept and every run ended requested nothing.
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            if daemon.poll() is not None:
                pytest.fail(f"dagster-daemon exited with {daemon.returncode}:\n{_tail(log)}")
            if not _live_runs(instance):
                last_end = max([r.end_time or 0 for r in instance.get_run_records()] + [ended])
                ticks = _sensor_ticks(instance)
                if ticks and ticks[0].timestamp > last_end and ticks[0].status == TickStatus.SKIPPED:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"not settled {SETTLE_TIMEOUT} s after add-concept ended (live runs, or no tick that "
                            f"requested nothing since); runs since add-concept:\n{_run_lines(instance, started)}\n"
                            f"daemon log:\n{_tail(log)}")
            time.sleep(1)
        settled = time.time()
        ticks_during_add = [t for t in _sensor_ticks(instance) if started <= t.timestamp <= ended]
    finally:
        _stop(daemon)

    # The dataset is up to date, as `gen4gen plan` says.
    capsys.readouterr()
    assert cli(["--config", str(config_file), "plan"]) == 0
    plan = capsys.readouterr().out.strip().splitlines()
    assert plan == ["nothing to do: every partition is current"], plan

    # 4. Each new partition was built exactly once, across the command's runs and the sensor's.
    registry = load_registry(data / "build/concepts.json")
    new_concepts = sorted({c["key"] for c in registry["concepts"]} - {c["key"] for c in registry_before["concepts"]})
    new_compositions = sorted({c["key"] for c in registry["compositions"]}
                              - {c["key"] for c in registry_before["compositions"]})
    assert new_concepts == ["yellow_star"], new_concepts
    assert len(new_compositions) == NEW_COMPOSITIONS and all("yellow_star" in k.split("+") for k in new_compositions), \
        new_compositions
    partitions = ([("segmented_foregrounds", "segment_concepts", k) for k in new_concepts]
                  + [(stage, "build_compositions", k) for k in new_compositions for stage in COMPOSITION_STAGES])

    runs = {r.run_id: r for r in instance.get_runs()}
    runs_since = [r.dagster_run for r in instance.get_run_records() if r.create_timestamp.timestamp() >= started]
    lines, wrong = [], []
    for stage, job, key in partitions:
        records = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(stage), asset_partitions=[key]),
                                                  limit=100).records
        built = Counter()
        unchanged = Counter()
        for record in records:
            flag = record.asset_materialization.metadata.get("unchanged")
            (unchanged if flag is not None and flag.value is True else built)[_source(runs[record.run_id])] += 1
        started_runs = Counter(_source(r) for r in runs_since
                               if r.job_name == job and r.tags.get("dagster/partition") == key)
        line = (f"{stage}[{key}]: built {sum(built.values())} time(s) ({dict(built)}), unchanged in "
                f"{sum(unchanged.values())} ({dict(unchanged)}); runs started: cli {started_runs['cli']}, sensor "
                f"{started_runs['sensor']}")
        lines.append(line)
        if sum(built.values()) != 1:
            wrong.append(line)
    report = (f"add-concept took {ended - started:.1f} s with {len(ticks_during_add)} sensor tick(s) during it, "
              f"settled {settled - ended:.1f} s later\n" + "\n".join(lines)
              + f"\nruns since add-concept began:\n{_run_lines(instance, started)}")
    print(report)
    assert not wrong, "new partitions not built exactly once:\n" + report
    failed = [r for r in runs_since if r.status != DagsterRunStatus.SUCCESS]
    assert not failed, "runs that did not succeed:\n" + report + "\ndaemon log:\n" + _tail(log)
    assert ticks_during_add, "the sensor never ticked while add-concept ran: nothing concurrent was tested\n" + report

    # The export has the new concept's images: every image of every new composition, kept or rejected.
    folder = data / "mycanvas"
    rows = {name: [json.loads(line) for line in (folder / name).read_text(encoding="utf-8").splitlines()
                   if line.strip()] for name in ("metadata.jsonl", "rejected.jsonl")}
    exported = {r["image_id"] for name in rows for r in rows[name]}
    expected = {f"{k}/{i:03d}" for k in new_compositions
                for i in range(load_config(config_file).layout.images_per_composition)}
    assert expected <= exported, f"the export lacks {sorted(expected - exported)}\n" + report
    kept = [r for r in rows["metadata.jsonl"] if r["composition"] in new_compositions]
    assert kept and all((folder / r["file_name"]).is_file() for r in kept), report
    assert all(any(c["concept"] == "yellow_star" for c in r["concepts"]) for r in kept), report
