"""The lineage store without the pipeline: regeneration, journals kept beside partitions,
idempotent ingestion, damaged databases, full disks, paths with quotes."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from gen4gen.cli import main as cli
from gen4gen.io import sha256_file
from gen4gen.lineage import (JOURNAL_NAME, ArtifactRecord, LineageDatabaseDamaged, content_id, discover_journals,
                             ingest, open_reader, rebuild, write_journal)
from gen4gen.lineage import ingestion as ingest_module
from gen4gen.lineage.database import db_path


def _write(path: Path, payload: bytes) -> tuple[str, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return str(path), sha256_file(path)


def _journal(data: Path, folder: str, records: list[ArtifactRecord], asset_key: str, run: str) -> Path:
    return write_journal(data / folder / JOURNAL_NAME, records, asset_key=asset_key, partition_key=folder.split("/")[-1],
                         run_id=run, code_version="1", params={"run": run}, backend=None, data_dir=data)


def build_chain(data: Path, photo_bytes: bytes, run: str) -> dict[str, tuple[str, str]]:
    """photo -> cut-out -> layout (same bytes whatever the photo) -> image -> export, plus a listing."""
    files = {
        "photo": _write(data / "concepts/cat/photo.png", photo_bytes),
        "cutout": _write(data / "build/segmented/cat/photo.png", b"cutout of " + photo_bytes),
        "layout": _write(data / "build/layouts/cat/000.json", b'{"box": [1, 2, 3, 4]}'),
    }
    files["image"] = _write(data / "build/composed/cat/000.png", b"image from " + photo_bytes)
    files["export"] = _write(data / "mycanvas/cat_000.png", b"image from " + photo_bytes)
    files["metadata"] = _write(data / "mycanvas/metadata.jsonl", b'{"file_name": "cat_000.png"}\n')
    # Children's journals are written first: ingestion must not depend on the order of writing.
    _journal(data, "mycanvas", [
        ArtifactRecord(files["export"][0], files["export"][1], [(*files["image"], "recoloured"),
                                                                 (*files["layout"], "caption")]),
        ArtifactRecord(files["metadata"][0], files["metadata"][1], [(*files["export"], "listed")])], "mycanvas", run)
    _journal(data, "build/composed/cat", [ArtifactRecord(files["image"][0], files["image"][1], [
        (*files["layout"], "layout"), (*files["cutout"], "cutout")])], "composed_images", run)
    _journal(data, "build/layouts/cat", [ArtifactRecord(files["layout"][0], files["layout"][1],
                                                        [(*files["cutout"], "cutout")])], "layouts", run)
    _journal(data, "build/segmented/cat", [ArtifactRecord(files["cutout"][0], files["cutout"][1],
                                                          [(*files["photo"], "source_photo")])],
             "segmented_foregrounds", run)
    _journal(data, "build/catalogue", [ArtifactRecord(*files["photo"])], "concept_images", run)
    return files


def _photos(reader, target: str) -> set[tuple[str, str]]:
    row = reader.resolve(target)
    nodes, _ = reader.ancestry(row["id"])
    return {(n["path"], n["sha256"]) for n in nodes.values() if n["asset_key"] == "concept_images"}


def test_regenerated_identical_bytes_point_at_the_new_photo_only(tmp_path):
    data = tmp_path / "data"
    v1 = build_chain(data, b"pixels", "run1")
    ingest(data)
    v2 = build_chain(data, b"slexip", "run2")  # the photo flipped; the layout's bytes did not change
    assert v1["layout"] == v2["layout"]
    result = ingest(data)
    assert result.journals_ingested == 5
    with open_reader(data) as reader:
        assert _photos(reader, str(data / "mycanvas/cat_000.png")) == {("concepts/cat/photo.png", v2["photo"][1])}
        layout = reader.resolve(str(data / "build/layouts/cat/000.json"))
        assert layout["run_id"] == "run2"  # the path resolves to the newest row
        nodes, _ = reader.ancestry(reader.resolve(str(data / "mycanvas/cat_000.png"))["id"])
        assert reader.verify(nodes) == []
        # History stays: the old layout row still names the old photo.
        old = reader.connection.execute("SELECT id FROM artifacts WHERE path = ? AND run_id = 'run1'",
                                        ["build/layouts/cat/000.json"]).fetchone()[0]
        assert old != layout["id"]
    assert cli(["lineage", str(data / "mycanvas/cat_000.png"), "--verify", "--data-dir", str(data)]) == 0


def test_journals_are_kept_found_and_ingested_once(tmp_path):
    data = tmp_path / "data"
    build_chain(data, b"pixels", "run1")
    hidden = data / "build/.staging-x/cat"
    hidden.mkdir(parents=True)
    (hidden / JOURNAL_NAME).write_text("not json", encoding="utf-8")  # a step still writing: skipped
    (data / "a/b/c/d").mkdir(parents=True)
    (data / "a/b/c/d" / JOURNAL_NAME).write_text("not json", encoding="utf-8")  # too deep to be a partition
    journals = discover_journals(data)
    assert [p.relative_to(data).as_posix() for p in journals] == [
        "build/catalogue/" + JOURNAL_NAME, "build/composed/cat/" + JOURNAL_NAME, "build/layouts/cat/" + JOURNAL_NAME,
        "build/segmented/cat/" + JOURNAL_NAME, "mycanvas/" + JOURNAL_NAME]
    first = ingest(data)
    assert (first.journals_ingested, first.new_rows) == (5, 6)
    assert all(p.is_file() for p in journals)  # never deleted
    assert ingest(data).journals_ingested == 0
    os.utime(journals[0], ns=(1, 1))  # touched, same bytes: still not ingested twice
    assert ingest(data).journals_ingested == 0
    with open_reader(data) as reader:
        recorded = reader.connection.execute("SELECT path, seq FROM journals ORDER BY seq").fetchall()
        counts = reader.counts()
    # Parents before children, whatever the order they were written in.
    assert [p for p, _ in recorded] == ["build/catalogue/" + JOURNAL_NAME, "build/segmented/cat/" + JOURNAL_NAME,
                                        "build/layouts/cat/" + JOURNAL_NAME, "build/composed/cat/" + JOURNAL_NAME,
                                        "mycanvas/" + JOURNAL_NAME]
    assert counts["artifacts"] == 6


def test_aggregates_list_files_without_inheriting_their_ancestry(tmp_path):
    data = tmp_path / "data"
    files = build_chain(data, b"pixels", "run1")
    with open_reader(data) as reader:
        metadata = reader.resolve(str(data / "mycanvas/metadata.jsonl"))
        assert reader.ancestor_ids(metadata["id"]) == []  # no closure rows for a listing
        tree = reader.tree(metadata["id"])
        assert [(p["role"], p["path"], p["parents"]) for p in tree["parents"]] == [("listed", "mycanvas/cat_000.png", [])]
        photo = reader.resolve(files["photo"][0])
        derived = {r["path"] for r in reader.descendants(photo["id"])}
        closure_rows = reader.counts()["closure"]
    assert derived == {"build/segmented/cat/photo.png", "build/layouts/cat/000.json", "build/composed/cat/000.png",
                       "mycanvas/cat_000.png", "mycanvas/metadata.jsonl"}
    assert closure_rows == 1 + 2 + 3 + 4  # cut-out, layout, image, export; none for the listing


def _damage(data: Path) -> None:
    path = db_path(data)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(min(size, 100))


def test_damaged_database_says_what_to_do_and_rebuilds_from_journals(tmp_path, capsys):
    data = tmp_path / "data"
    files = build_chain(data, b"pixels", "run1")
    ingest(data)
    _damage(data)
    with pytest.raises(LineageDatabaseDamaged, match="gen4gen lineage rebuild"):
        ingest(data)
    capsys.readouterr()
    assert cli(["lineage", files["export"][0], "--data-dir", str(data)]) == 1
    err = capsys.readouterr().err
    assert str(db_path(data)) in err and "gen4gen lineage rebuild" in err and "Traceback" not in err
    assert cli(["lineage", "rebuild", "--data-dir", str(data)]) == 0
    assert "rebuilt the lineage database from 5 journals" in capsys.readouterr().err
    kept = list(db_path(data).parent.glob("lineage.duckdb.damaged-*"))
    assert len(kept) == 1 and kept[0].stat().st_size == 100  # moved aside, never deleted
    for name, (path, _) in files.items():
        assert cli(["lineage", path, "--verify", "--data-dir", str(data)]) == 0, name


def test_full_disk_at_journal_write_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    data = tmp_path / "data"
    path, sha = _write(data / "build/layouts/cat/000.json", b"{}")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    target = data / "build/layouts/cat" / JOURNAL_NAME
    with pytest.raises(OSError, match="No space left on device") as caught:
        _journal(data, "build/layouts/cat", [ArtifactRecord(path, sha)], "layouts", "run1")
    assert caught.value.errno == errno.ENOSPC and str(target) in str(caught.value)
    assert sorted(p.name for p in target.parent.iterdir()) == ["000.json"]  # no journal, no temporary file


def test_full_disk_during_ingestion_is_reported_not_masked_by_the_rollback(tmp_path, monkeypatch):
    data = tmp_path / "data"
    build_chain(data, b"pixels", "run1")
    original = ingest_module.insert_rows

    def disk_full(connection, rows, data_dir, seq):
        original(connection, rows, data_dir, seq)
        # DuckDB ends the transaction itself when a write fails; a later ROLLBACK then raises
        # "no transaction is active", which used to replace the real error.
        connection.execute("ROLLBACK")
        raise OSError(errno.ENOSPC, "No space left on device", str(db_path(data)))

    monkeypatch.setattr(ingest_module, "insert_rows", disk_full)
    with pytest.raises(OSError, match="No space left on device") as caught:
        ingest(data)
    assert str(db_path(data)) in str(caught.value)
    monkeypatch.setattr(ingest_module, "insert_rows", original)
    with open_reader(data, ingest_first=False) as reader:
        assert reader.counts()["artifacts"] == 0  # nothing half-ingested
    assert ingest(data).journals_ingested == 5  # and the next attempt takes everything


def test_parquet_export_into_a_folder_with_a_quote(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    data = tmp_path / "it's data"
    files = build_chain(data, b"pixels", "run1")
    export_id = content_id("mycanvas/cat_000.png", files["export"][1])  # what metadata.jsonl names
    with open_reader(data) as reader:
        written = reader.export_parquet([export_id], data / "mycanvas")
        row = reader.resolve(export_id)
    assert [p.name for p in written] == ["lineage_artifacts.parquet", "lineage_edges.parquet"]
    connection = duckdb.connect()
    rows = connection.execute("SELECT id, content_id, path, ancestors FROM read_parquet(?)", [str(written[0])]).fetchall()
    by_id = {r[0]: r for r in rows}
    assert by_id[row["id"]][1] == export_id
    assert {by_id[a][2] for a in by_id[row["id"]][3]} == {
        "concepts/cat/photo.png", "build/segmented/cat/photo.png", "build/layouts/cat/000.json",
        "build/composed/cat/000.png"}
    edges = connection.execute("SELECT count(*) FROM read_parquet(?)", [str(written[1])]).fetchone()[0]
    assert edges == 1 + 1 + 2 + 2
    assert not [p for p in (data / "mycanvas").iterdir() if p.name.startswith(".")]


def test_legacy_journal_folder_is_still_read(tmp_path):
    data = tmp_path / "data"
    path, sha = _write(data / "old.bin", b"old")
    legacy = data / "lineage/journal"
    legacy.mkdir(parents=True)
    row = {"id": content_id("old.bin", sha), "path": "old.bin", "sha256": sha, "asset_key": "test",
           "partition_key": None, "run_id": "r0", "code_version": "1", "created_at": "2024-01-01T00:00:00+00:00",
           "params": None, "backend": None, "data_version": None, "parents": []}
    (legacy / "0001-old.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    with open_reader(data) as reader:
        assert reader.resolve(path)["run_id"] == "r0"
    result = rebuild(data)
    assert result.moved_aside is not None and result.ingested.new_rows == 1


def test_parquet_export_of_records_not_yet_journalled_matches_their_later_ids(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    data = tmp_path / "data"
    files = build_chain(data, b"pixels", "run1")
    journal = data / "mycanvas" / JOURNAL_NAME
    saved = journal.read_bytes()
    journal.unlink()  # the export step writes its Parquet before its journal
    export = ArtifactRecord(files["export"][0], files["export"][1], [(*files["image"], "recoloured"),
                                                                     (*files["layout"], "caption")])
    export_id = content_id("mycanvas/cat_000.png", files["export"][1])
    with open_reader(data) as reader:
        assert reader.resolve(export_id) is None
        written = reader.export_parquet([export_id], data / "mycanvas", pending=[export])
    journal.write_bytes(saved)
    with open_reader(data) as reader:
        final_id = reader.resolve(export_id)["id"]
    rows = dict(duckdb.connect().execute("SELECT id, ancestors FROM read_parquet(?)", [str(written[0])]).fetchall())
    assert final_id in rows and len(rows[final_id]) == 4 and set(rows[final_id]) <= set(rows)


def test_a_listing_keeps_member_edges_for_its_newest_version_only(tmp_path):
    """Ten publishes of a growing export: the listing edges are those of the last metadata.jsonl,
    not the sum over every version (which grows with the square of the dataset)."""
    data = tmp_path / "data"
    images = []
    for publish in range(1, 11):
        images.append(_write(data / f"mycanvas/img_{publish:02d}.png", f"image {publish}".encode()))
        listing = _write(data / "mycanvas/metadata.jsonl", "\n".join(p for p, _ in images).encode())
        _journal(data, "mycanvas", [ArtifactRecord(*image) for image in images]
                 + [ArtifactRecord(*listing, [(*image, "listed") for image in images])], "mycanvas", f"run{publish}")
        ingest(data)
    with open_reader(data) as reader:
        listed = reader.connection.execute("SELECT count(*) FROM edges WHERE role = 'listed'").fetchone()[0]
        versions = reader.connection.execute(
            "SELECT count(*) FROM artifacts WHERE path = 'mycanvas/metadata.jsonl'").fetchone()[0]
        newest = reader.resolve(str(data / "mycanvas/metadata.jsonl"))
        members = [p["path"] for p in reader.tree(newest["id"])["parents"]]
    assert versions == 10  # every version keeps its row (history)
    assert listed == 10 and sorted(members) == [f"mycanvas/img_{n:02d}.png" for n in range(1, 11)]
    # Back to an earlier listing (same bytes, same members): it is the newest again, with its members.
    first = _write(data / "mycanvas/metadata.jsonl", images[0][0].encode())
    _journal(data, "mycanvas", [ArtifactRecord(*images[0]), ArtifactRecord(*first, [(*images[0], "listed")])],
             "mycanvas", "run11")
    ingest(data)
    with open_reader(data) as reader:
        newest = reader.resolve(str(data / "mycanvas/metadata.jsonl"))
        assert [p["path"] for p in reader.tree(newest["id"])["parents"]] == ["mycanvas/img_01.png"]
        assert reader.connection.execute("SELECT count(*) FROM edges WHERE role = 'listed'").fetchone()[0] == 1


def test_an_empty_export_writes_empty_lineage_tables(tmp_path):
    """Every composition left out: the export has no image, and its lineage files are still written."""
    import pyarrow.parquet

    data = tmp_path / "data"
    data.mkdir()
    with open_reader(data) as reader:  # a new database: its schema was just written
        written = reader.export_parquet([], data / "mycanvas", pending=[])
    assert sorted(p.name for p in written) == ["lineage_artifacts.parquet", "lineage_edges.parquet"]
    assert all(pyarrow.parquet.read_table(p).num_rows == 0 for p in written)
