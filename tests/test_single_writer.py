"""`[regeneration] single_writer`: only the publish step commits to DVC and ingests lineage (a cluster's
one writer); partition steps write their partitions and journals only."""
from __future__ import annotations

import json

from gen4gen import versioning
from gen4gen.cli import main as cli
from gen4gen.concepts import load_registry
from gen4gen.lineage import open_reader
from gen4gen.lineage.database import db_path
from gen4gen_assets.definitions import build_definitions

from .test_versioning import Project, dvc_env, needs_dvc  # noqa: F401 (fixture)


def _rows_by_asset(data) -> dict:
    if not db_path(data).exists():
        return {}
    with open_reader(data, ingest_first=False) as reader:  # what is in the database, not on disk
        return dict(reader.connection.execute("SELECT asset_key, count(*) FROM artifacts GROUP BY ALL").fetchall())


@needs_dvc
def test_only_the_publish_step_commits_and_ingests(dvc_env):  # noqa: F811
    project = Project(dvc_env).setup()
    text = project.config_file.read_text(encoding="utf-8")
    project.config_file.write_text(text + "[regeneration]\nsingle_writer = true\n", encoding="utf-8")
    defs = build_definitions(config_file=str(project.config_file))

    def run(job: str, key: str | None = None):
        result = defs.resolve_job_def(job).execute_in_process(instance=project.instance, partition_key=key)
        assert result.success

    run("catalogue_concepts")
    registry = load_registry(project.data / "build/concepts.json")
    for concept in registry["concepts"]:
        run("segment_concepts", concept["key"])
    for composition in registry["compositions"]:
        run("build_compositions", composition["key"])
    # The partitions are current, their journals beside them; nothing is committed or ingested yet.
    pending = sorted(p.name.split("__")[0] for p in (project.data / "build/.state/dvc_pending").iterdir())
    assert pending == sorted(["segmented_foregrounds"] * len(registry["concepts"]) + [
        s for s in ("layouts", "composed_images", "recoloured_images", "captions")
        for _ in registry["compositions"]])
    assert set(_rows_by_asset(project.data)) <= {"concept_images", None}
    locked = versioning.read_locks(project.root)
    assert not [t for t in locked if t.startswith(("dvc-stages/concepts/", "dvc-stages/compositions/"))]
    for asset in ("segmented_foregrounds", "layouts", "recoloured_images", "captions"):
        assert project.metadata(asset)["dvc"].startswith("deferred to the publish step"), asset

    run("publish_dataset")
    assert "committed" in project.metadata("mycanvas")["dvc_partitions_committed"]
    assert not list((project.data / "build/.state/dvc_pending").glob("*"))
    assert versioning.status(project.config) == {}  # every stage committed, its data unchanged since
    assert {"segmented_foregrounds", "layouts", "recoloured_images", "captions", "mycanvas"} <= set(
        _rows_by_asset(project.data))
    rows = [json.loads(r) for r in (project.data / "mycanvas/metadata.jsonl").read_text().splitlines()]
    assert rows and all(r["dvc_version"] for r in rows)  # committed before the export named them
    for row in rows:
        assert cli(["--config", str(project.config_file), "lineage",
                    str(project.data / "mycanvas" / row["file_name"]), "--verify"]) == 0
