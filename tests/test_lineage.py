"""Per-image lineage: audit trees, verification, descendants, concurrency and crash safety."""
from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from gen4gen.cli import main as cli
from gen4gen.io import sha256_file
from gen4gen.lineage import (JOURNAL_NAME, ArtifactRecord, LineageStore, artifact_id, ingestion, open_reader,
                             relative_path)
from gen4gen_assets.definitions import build_definitions
from gen4gen_assets.runner import materialize_all

from .conftest import create_small_project, make_concepts


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One small project built once for the read-only tests of this module."""
    data, config_file = create_small_project(tmp_path_factory.mktemp("lineage"))
    instance = DagsterInstance.ephemeral()
    summary = materialize_all(build_definitions(config_file=str(config_file)), instance, log=lambda *_: None)
    assert not summary.failed
    return data, config_file, instance


def _rows(data: Path) -> list[dict]:
    return [json.loads(line) for line in (data / "mycanvas/metadata.jsonl").read_text().splitlines()]


def _walk(node):
    yield node
    for parent in node["parents"]:
        yield from _walk(parent)


def test_json_tree_reaches_the_exact_source_photos(built, capsys):
    data, config_file, _ = built
    row = _rows(data)[0]
    assert cli(["--config", str(config_file), "lineage", str(data / "mycanvas" / row["file_name"]), "--json"]) == 0
    tree = json.loads(capsys.readouterr().out)
    assert tree["asset_key"] == "mycanvas"
    # The row's provenance id (place and bytes) names the same, newest, lineage row.
    assert cli(["--config", str(config_file), "lineage", row["provenance_id"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == tree["id"]
    photos = {n["path"]: n for n in _walk(tree) if n.get("role") == "source_photo"}
    expected = {f"concepts/{c['concept'] if c['concept'] != 'blue_box' else 'blue box'}/{c['source_photo']}"
                for c in row["concepts"]}
    assert set(photos) == expected
    for path, node in photos.items():
        assert node["asset_key"] == "concept_images"
        assert node["sha256"] == sha256_file(data / path)
    roles = {n.get("role") for n in _walk(tree)}
    assert {"recoloured", "caption", "composite", "mask", "layout", "cutout", "background", "source_photo"} <= roles
    steps = {n["asset_key"] for n in _walk(tree)}
    assert {"mycanvas", "captions", "recoloured_images", "composed_images", "layouts", "segmented_foregrounds",
            "concept_images", "scene_bank"} <= steps
    composite = next(n for n in _walk(tree) if n.get("role") == "composite")
    assert composite["params"]["seed"] == 7 and composite["run_id"]


def test_text_tree_prints_every_step_with_parameters(built, capsys):
    data, config_file, _ = built
    row = _rows(data)[0]
    assert cli(["--config", str(config_file), "lineage", row["provenance_id"]]) == 0
    text = capsys.readouterr().out
    for step in ("mycanvas", "captions[", "recoloured_images[", "composed_images[", "layouts[", "segmented_foregrounds[",
                 "concept_images", "params:"):
        assert step in text
    for concept in row["concepts"]:
        assert concept["source_photo"] in text


def test_verify_catches_modified_and_deleted_intermediate_files(built, capsys, tmp_path):
    data, config_file, _ = built
    row = _rows(data)[0]
    target = str(data / "mycanvas" / row["file_name"])
    assert cli(["--config", str(config_file), "lineage", target, "--verify"]) == 0
    composite = data / "build/composed" / row["composition"] / f"{row['image_id'].split('/')[-1]}.png"
    layout = data / "build/layouts" / row["composition"] / f"{row['image_id'].split('/')[-1]}.json"
    saved_composite, saved_layout = composite.read_bytes(), layout.read_bytes()
    try:
        composite.write_bytes(saved_composite + b"tampered")
        layout.unlink()
        capsys.readouterr()
        assert cli(["--config", str(config_file), "lineage", target, "--verify"]) == 1
        errors = capsys.readouterr().err
        assert f"changed: build/composed/{row['composition']}/" in errors
        assert f"missing: {layout}" in errors
        assert "2 missing or changed" in errors
    finally:
        composite.write_bytes(saved_composite)
        layout.write_bytes(saved_layout)


def test_descendants_of_a_photo_are_the_images_built_from_it(built, capsys):
    data, config_file, _ = built
    photo = data / "concepts/red_ball/photo 0.png"
    assert cli(["--config", str(config_file), "lineage", str(photo), "--descendants", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    exported = {Path(r["path"]).name for r in result["descendants"]
                if r["asset_key"] == "mycanvas" and r["path"].endswith(".png")}
    expected = {r["file_name"] for r in _rows(data)
                if any(c["concept"] == "red_ball" and c["source_photo"] == "photo 0.png" for c in r["concepts"])}
    assert exported == expected and expected
    # The other photo of the same concept has its own, disjoint set of images.
    assert cli(["--config", str(config_file), "lineage", str(data / "concepts/red_ball/photo 1.png"), "--descendants",
                "--json"]) == 0
    other = {Path(r["path"]).name for r in json.loads(capsys.readouterr().out)["descendants"]
             if r["asset_key"] == "mycanvas" and r["path"].endswith(".png")}
    assert not other & exported


def test_export_carries_provenance_and_parquet_lineage(built):
    duckdb = pytest.importorskip("duckdb")
    data, _, _ = built
    rows = _rows(data)
    connection = duckdb.connect()
    artifacts = connection.execute("SELECT id, content_id, path, sha256, ancestors FROM read_parquet(?)",
                                   [str(data / "mycanvas/lineage_artifacts.parquet")]).fetchall()
    by_id = {a[0]: a for a in artifacts}
    newest_by_content = {a[1]: a for a in artifacts}
    for row in rows:
        # The row names the file by place and bytes; its lineage row adds what it was made from.
        assert row["provenance_id"] == artifact_id(f"mycanvas/{row['file_name']}", row["image_sha256"])
        ancestors = newest_by_content[row["provenance_id"]][4]
        assert all(a in by_id for a in ancestors)  # the file is self-contained
        photos = [by_id[a][2] for a in ancestors if by_id[a][2].startswith("concepts/")]
        assert len(photos) == len(row["concepts"])
    edges = connection.execute("SELECT count(*) FROM read_parquet(?)",
                               [str(data / "mycanvas/lineage_edges.parquet")]).fetchone()[0]
    assert edges > len(rows)


def test_materialisations_show_lineage_counts_and_audit_command(built):
    _, _, instance = built
    for asset in ("concept_images", "segmented_foregrounds", "composed_images", "mycanvas", "evaluation_report"):
        metadata = instance.get_latest_materialization_event(AssetKey(asset)).asset_materialization.metadata
        assert metadata["lineage_files"].value > 0
        assert metadata["audit_command"].value.startswith("gen4gen lineage ")


# ---------------------------------------------------------------------- concurrency and crashes
def _write_and_commit(args):
    data_dir, worker, count = args
    store = LineageStore(Path(data_dir))
    records = []
    for i in range(count):
        path = Path(data_dir) / f"w{worker}" / f"{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = f"{worker}-{i}".encode()
        path.write_bytes(payload)
        parents = [(str(path.parent / f"{i - 1}.bin"), sha256_file(path.parent / f"{i - 1}.bin"), "previous")] if i else []
        records.append(ArtifactRecord(str(path), sha256_file(path), parents))
        if len(records) == 5:  # several commits per worker, interleaving with the others
            store.commit(records, journal_file=Path(data_dir) / f"w{worker}" / f"part{i}" / JOURNAL_NAME,
                         asset_key="test", partition_key=str(worker), run_id=f"run{worker}", code_version="1",
                         params={"i": i}, backend=None)
            records = []
    return worker


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    workers, count = 6, 40
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        assert sorted(pool.map(_write_and_commit, [(str(tmp_path), w, count) for w in range(workers)])) == list(range(workers))
    files = sorted(tmp_path.glob("w*/*.bin"))
    assert len(files) == workers * count
    with open_reader(tmp_path) as reader:
        rows = reader.connection.execute("SELECT path, sha256, id FROM artifacts").fetchall()
        edges = reader.connection.execute("SELECT count(*) FROM edges").fetchone()[0]
        journals = reader.connection.execute("SELECT count(*) FROM journals").fetchone()[0]
        last = reader.ancestor_ids({r[0]: r[2] for r in rows}["w3/39.bin"])
    assert len(rows) == len(files)  # one row per file, none duplicated
    assert {r[0] for r in rows} == {relative_path(f, tmp_path) for f in files}
    assert all(sha256_file(tmp_path / r[0]) == r[1] for r in rows)
    assert edges == workers * (count - 1)
    assert len(last) == 39  # the whole chain, across the worker's separate commits
    assert journals == workers * count // 5  # every journal kept and ingested once
    assert len(list(tmp_path.glob("w*/part*/" + JOURNAL_NAME))) == journals


STEP_TIMEOUT_S = 300


def _segment_one_concept(args):
    """One concept's segmentation step, in a process of its own (as Dagster's multiprocess executor runs it)."""
    config_file, home, key = args
    job = build_definitions(config_file=config_file).resolve_job_def("segment_concepts")
    result = job.execute_in_process(instance=DagsterInstance.from_config(home), partition_key=key,
                                    raise_on_error=False)
    return key, result.success


def test_four_dagster_steps_in_parallel_processes(small_project):
    root, data, config_file = small_project
    make_concepts(data / "concepts", {"yellow_star": [("ellipse", (220, 220, 30))]})
    home = root / "dagster_home"  # one instance the four processes share, as Dagster's steps do
    home.mkdir()
    catalogue = build_definitions(config_file=str(config_file)).resolve_job_def("catalogue_concepts")
    assert catalogue.execute_in_process(instance=DagsterInstance.from_config(str(home))).success
    keys = ["blue_box", "green_cone", "red_ball", "yellow_star"]
    # Not multiprocessing.Pool: leaving its `with` block calls terminate(), which once waited for
    # ever (every step had succeeded; two workers had taken their stop sentinel, the third was
    # blocked reading the task queue). The timeout turns any other hang into a failure.
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_segment_one_concept, (str(config_file), str(home), k)) for k in keys]
        results = [future.result(timeout=STEP_TIMEOUT_S) for future in futures]
    assert all(ok for _, ok in results), results
    # Every output file has one row; the partition's bookkeeping (its journal, its fingerprint) has none.
    on_disk = [p for p in (data / "build/segmented").rglob("*")
               if p.is_file() and p.name not in (JOURNAL_NAME, "fingerprint.json")]
    store = LineageStore(data)
    with store.reader() as connection:
        recorded = dict(connection.execute(
            "SELECT path, count(*) FROM artifacts WHERE asset_key = 'segmented_foregrounds' GROUP BY path").fetchall())
    assert set(recorded) == {relative_path(p, data) for p in on_disk}
    assert set(recorded.values()) == {1}


def _crash_after_files(data_dir):
    path = Path(data_dir) / "orphan.bin"
    path.write_bytes(b"written, then the process died before its journal")
    os._exit(1)


def _crash_after_journal(data_dir):
    store = LineageStore(Path(data_dir))
    path = Path(data_dir) / "kept.bin"
    path.write_bytes(b"journalled, then the process died before ingestion")
    store.write_journal([ArtifactRecord(str(path), sha256_file(path))], asset_key="test", partition_key=None,
                        run_id="crashed", code_version="1", params=None, backend=None)
    os._exit(1)


def test_crashes_leave_no_dangling_rows_and_lose_no_journalled_file(tmp_path, monkeypatch):
    context = multiprocessing.get_context("spawn")
    for target in (_crash_after_files, _crash_after_journal):
        process = context.Process(target=target, args=(str(tmp_path),))
        process.start()
        process.join()
        assert process.exitcode == 1
    store = LineageStore(tmp_path)
    # A failed ingestion rolls back and keeps the journal for the next attempt.
    path = tmp_path / "third.bin"
    path.write_bytes(b"third")
    original = ingestion.insert_rows

    def failing(connection, rows, data_dir, seq):
        original(connection, rows, data_dir, seq)
        raise RuntimeError("disk full")

    monkeypatch.setattr(ingestion, "insert_rows", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        store.commit([ArtifactRecord(str(path), sha256_file(path))], asset_key="test", partition_key=None,
                     run_id="r", code_version="1", params=None, backend=None)
    monkeypatch.setattr(ingestion, "insert_rows", original)
    with store.reader() as connection:  # the reader ingests what the crashed steps left
        rows = dict(connection.execute("SELECT path, run_id FROM artifacts").fetchall())
    assert rows == {"kept.bin": "crashed", "third.bin": "r"}
    assert "orphan.bin" not in rows  # never journalled: no row claims it
    for path in rows:
        assert (tmp_path / path).is_file()
    assert len(list(store.journal_dir.glob("*.jsonl"))) == 2  # journals are kept
