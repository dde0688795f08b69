"""The Dagster instance on Postgres (dagster-postgres), as machines of a team share it.

A throwaway Postgres 16 (PyPI's pgserver: bundled binaries, unix socket only, no TCP address)
holds the instance; ``dagster.yaml`` says ``storage: postgres:`` with the Makefile's settings.
Machine A runs ``gen4gen materialize`` in a child process: its runs and the dynamic partitions of
``concepts`` and ``compositions`` are then in Postgres, nothing in SQLite. Machine B (another
process, its own DAGSTER_HOME with the same ``dagster.yaml``, its own copy of the configuration,
the same data folder) plans nothing: only the catalogue runs, and its run joins A's in Postgres.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .conftest import PROJECT_ROOT, create_small_project

pgserver = pytest.importorskip("pgserver", reason="pgserver is not installed (the `dev` extra; make setup-paper)")
pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed (the `cluster` extra; "
                                               "make setup-paper)")

CLI = [sys.executable, "-c", "import sys; from gen4gen.cli import main; sys.exit(main(sys.argv[1:]))"]
RUN_TIMEOUT_S = 300
DB_NAME = "gen4gen"


def dagster_yaml(socket_dir: Path) -> str:
    """The Makefile's settings (telemetry off, one slot per pool) with the instance in Postgres.

    On a team's server ``hostname`` names it and the password comes from the environment
    (README: "Dagster instance on Postgres"); here the server listens on a unix socket only, so
    the host is the socket's folder, passed to libpq as the ``host`` parameter. ``scheme`` names
    the driver dagster-postgres installs, psycopg2: SQLAlchemy 2.1 maps a bare ``postgresql``
    to psycopg 3, which is not installed.
    """
    return (
        "telemetry:\n  enabled: false\n"
        "concurrency:\n  pools:\n    default_limit: 1\n    granularity: op\n"
        "storage:\n  postgres:\n    postgres_db:\n"
        "      scheme: postgresql+psycopg2\n"
        "      username: postgres\n"
        '      password: ""\n'
        '      hostname: ""\n'
        "      port: 5432\n"
        f"      db_name: {DB_NAME}\n"
        f"      params:\n        host: {socket_dir}\n"
    )


@pytest.fixture
def postgres():
    """A Postgres server in a fresh folder, stopped and deleted afterwards.

    The folder is not under pytest's temporary root: run as root, pgserver runs the server as a
    system user ``pgserver`` (created on first use) and opens the folders above its data to it.
    """
    base = Path(tempfile.mkdtemp(prefix="gen4gen-pg-"))
    server = None
    try:
        server = pgserver.get_server(base / "pgdata", cleanup_mode="delete")
        server.psql(f"CREATE DATABASE {DB_NAME};")
        yield server
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def _machine(root: Path, yaml_text: str) -> tuple[Path, dict]:
    """A machine's DAGSTER_HOME with ``yaml_text``, and the environment of its commands."""
    home = root / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml_text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("GEN4GEN_CONFIG", "GEN4GEN_DATA_DIR", "GEN4GEN_PROFILE")}
    env.update({"DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    return home, env


def _materialize(config_file: Path, env: dict) -> str:
    done = subprocess.run([*CLI, "--config", str(config_file), "materialize"], cwd=PROJECT_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, f"`gen4gen materialize` exited with {done.returncode}:\n{done.stdout[-4000:]}"
    return done.stdout


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _sql(server, query: str) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(server.get_uri(DB_NAME)) as conn, conn.cursor() as cursor:
        cursor.execute(query)
        rows = cursor.fetchall()
    conn.close()
    return rows


def test_two_machines_share_the_instance_in_postgres(postgres, tmp_path):
    from dagster import DagsterInstance, DagsterRunStatus

    from gen4gen.concepts import load_registry

    socket_dir = postgres.get_postmaster_info().socket_dir
    assert socket_dir is not None
    # Loopback only, in fact no TCP at all: the server listens on its unix socket.
    assert postgres.psql("SHOW listen_addresses;").splitlines()[2].strip() == ""
    yaml_text = dagster_yaml(socket_dir)
    data, config_file = create_small_project(tmp_path / "machine_a")
    home_a, env_a = _machine(tmp_path / "machine_a", yaml_text)

    output = _materialize(config_file, env_a)
    assert ", 0 failed" in output, output[-4000:]

    registry = load_registry(data / "build/concepts.json")
    concepts = sorted(c["key"] for c in registry["concepts"])
    compositions = sorted(c["key"] for c in registry["compositions"])
    assert len(concepts) == 3 and compositions
    with DagsterInstance.from_config(str(home_a)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        runs = instance.get_runs()
        assert runs and all(run.status == DagsterRunStatus.SUCCESS for run in runs), \
            [(run.job_name, run.status) for run in runs]
        by_job = {}
        for run in runs:
            by_job.setdefault(run.job_name, []).append(run.tags.get("dagster/partition"))
        assert sorted(by_job["segment_concepts"]) == concepts
        assert sorted(by_job["build_compositions"]) == compositions
        assert by_job["catalogue_concepts"] == [None] and by_job["publish_dataset"] == [None]
        assert sorted(instance.get_dynamic_partitions("concepts")) == concepts
        assert sorted(instance.get_dynamic_partitions("compositions")) == compositions
        first_runs = {run.run_id for run in runs}
    # In Postgres itself, and no SQLite storage beside the yaml.
    assert {row[0] for row in _sql(postgres, "SELECT run_id FROM runs")} == first_runs
    stored = _sql(postgres, "SELECT partitions_def_name, partition FROM dynamic_partitions")
    assert sorted(p for name, p in stored if name == "concepts") == concepts
    assert sorted(p for name, p in stored if name == "compositions") == compositions
    assert not [p for p in home_a.rglob("*") if p.suffix == ".db"]

    # Machine B: its own DAGSTER_HOME (the same yaml), its own copy of the configuration.
    machine_b = tmp_path / "machine_b"
    home_b, env_b = _machine(machine_b, yaml_text)
    config_b = machine_b / "gen4gen.toml"
    shutil.copy2(config_file, config_b)
    before = _files(data)
    output = _materialize(config_b, env_b)
    assert "  plan  " not in output, output[-4000:]
    for line in ("segmenting 0 concepts", "building 0 compositions", "dataset is up to date",
                 "1 runs (1 steps) succeeded, 0 failed"):
        assert line in output, output[-4000:]
    assert "using the instance in" not in output and not (data / ".dagster_home").exists()
    assert {k: v for k, v in _files(data).items() if not k.startswith("build/catalogue/")} == \
        {k: v for k, v in before.items() if not k.startswith("build/catalogue/")}
    with DagsterInstance.from_config(str(home_b)) as instance:
        new = [run for run in instance.get_runs() if run.run_id not in first_runs]
        assert [(run.job_name, run.status) for run in new] == [("catalogue_concepts", DagsterRunStatus.SUCCESS)]
        assert sorted(instance.get_dynamic_partitions("concepts")) == concepts
    assert not [p for p in home_b.rglob("*") if p.suffix == ".db"]
