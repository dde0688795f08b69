"""Incremental regeneration: adding, changing and removing concepts rebuilds exactly what depends on them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import DagsterInstance, build_sensor_context

from gen4gen.cli import main as cli
from gen4gen.concepts import extend_compositions, load_registry, split_composition
from gen4gen.config import load_config
from gen4gen_assets.definitions import build_definitions, build_resources
from gen4gen_assets.runner import materialize_all
from gen4gen_assets.sensors import concept_folder_sensor

from .conftest import build_template, copy_template, make_concepts, object_photo


def _snapshot(data: Path) -> dict[str, tuple[bytes, int]]:
    """Every image and per-partition file: bytes and modification time.

    Hidden caches (preview thumbnails, the export check's hash cache) and the catalogue are
    bookkeeping that grows with the dataset, not outputs."""
    files = [p for p in (data / "build").rglob("*") if p.is_file() and p.name != "concepts.json" and "catalogue" not in p.parts
             and not any(part.startswith(".") for part in p.relative_to(data).parts)]
    files += list((data / "mycanvas").glob("*.png"))
    return {str(p.relative_to(data)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def _exported(data: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (data / "mycanvas/metadata.jsonl").read_text().splitlines()]
    rows += [json.loads(line) for line in (data / "mycanvas/rejected.jsonl").read_text().splitlines()]
    return {r["image_id"]: r for r in rows}


@pytest.fixture(scope="module")
def built_template(tmp_path_factory):
    """One small dataset built once; every test works on its own copy (a fresh instance, as after a restart)."""
    return build_template(tmp_path_factory.mktemp("template"))


@pytest.fixture
def built(small_project, built_template):
    tmp_path = small_project[0]
    data, config_file = copy_template(built_template, tmp_path / "copy")
    instance = DagsterInstance.ephemeral()
    defs = build_definitions(config_file=str(config_file))
    summary = materialize_all(defs, instance, log=lambda *_: None, incremental=True)
    assert not summary.failed
    return data, config_file, instance, defs


def test_nothing_to_do_runs_only_the_catalogue(built):
    data, _, instance, defs = built
    before = _snapshot(data)
    summary = materialize_all(defs, instance, log=lambda *_: None, incremental=True)
    assert summary.succeeded == ["concept_images"] and summary.steps == 1
    assert _snapshot(data) == before


def test_adding_a_concept_builds_only_its_partitions(built, tmp_path, capsys):
    data, config_file, instance, _ = built
    before = _snapshot(data)
    exported_before = _exported(data)
    registry_before = load_registry(data / "build/concepts.json")
    photos = tmp_path / "new_photos"
    photos.mkdir()
    object_photo("ellipse", (230, 200, 40), seed=99).save(photos / "star.png")
    # In process, so the test can count the steps of the runs (same code path as the command).
    assert cli(["--config", str(config_file), "add-concept", str(photos), "--name", "yellow star", "--class", "star",
                "--no-build"]) == 0
    summary = materialize_all(build_definitions(config_file=str(config_file)), instance, log=lambda *_: None,
                              incremental=True)
    assert not summary.failed
    registry = load_registry(data / "build/concepts.json")
    old = [c["key"] for c in registry_before["compositions"]]
    new = [c["key"] for c in registry["compositions"] if c["key"] not in old]
    config = load_config(config_file)
    assert set(old) <= {c["key"] for c in registry["compositions"]}
    assert len(new) == config.proposal.per_new_concept and all("yellow_star" in split_composition(k) for k in new)
    assert {c["key"]: c["class_name"] for c in registry["concepts"]}["yellow_star"] == "star"
    # Exactly: catalogue, one segmentation, four steps per new composition, the export, its check and the report.
    assert summary.succeeded == (["concept_images", "segmented_foregrounds[yellow_star]"]
                                 + [f"compositions[{k}]" for k in sorted(new)] + ["mycanvas + evaluation_report"])
    assert summary.steps == 1 + 1 + 4 * len(new) + 3
    after = _snapshot(data)
    for path, (content, mtime) in before.items():
        assert after[path] == (content, mtime), f"{path} was rewritten"
    exported = _exported(data)
    assert set(exported) - set(exported_before) == {f"{k}/{i:03d}" for k in new
                                                     for i in range(config.layout.images_per_composition)}
    assert set(exported_before) <= set(exported)


def test_changing_a_photo_rebuilds_only_that_concepts_descendants(built):
    data, config_file, instance, defs = built
    before = _snapshot(data)
    registry = load_registry(data / "build/concepts.json")
    object_photo("triangle", (20, 120, 200), seed=5).save(data / "concepts/green_cone/photo 0.png")
    summary = materialize_all(defs, instance, log=lambda *_: None, incremental=True)
    assert not summary.failed
    affected = sorted(c["key"] for c in registry["compositions"] if "green_cone" in split_composition(c["key"]))
    assert summary.succeeded == (["concept_images", "segmented_foregrounds[green_cone]"]
                                 + [f"compositions[{k}]" for k in affected] + ["mycanvas + evaluation_report"])
    after = _snapshot(data)
    for path, (content, mtime) in before.items():
        parts = Path(path).parts
        depends = "green_cone" in parts or any(p in affected for p in parts) or any(
            Path(path).name.startswith(k + "_") for k in affected)
        if not depends:
            assert after[path] == (content, mtime), f"{path} was rewritten"
    changed = [p for p in before if after.get(p, (None,))[0] != before[p][0]]
    assert any(p.startswith("build/segmented/green_cone/") for p in changed)
    assert any(p.startswith("build/recoloured/") for p in changed)


def test_removing_a_concept_drops_exactly_its_images(built):
    data, config_file, instance, defs = built
    exported_before = _exported(data)
    # In process, so the test's instance sees the runs (same code path as the command).
    assert cli(["--config", str(config_file), "remove-concept", "blue box", "--no-build"]) == 0
    assert not (data / "concepts/blue box").exists()
    assert any(p.name.startswith("blue box") for p in (data / "removed").iterdir())  # photos kept aside
    summary = materialize_all(defs, instance, log=lambda *_: None, incremental=True)
    assert not summary.failed
    exported = _exported(data)
    expected = {k for k, r in exported_before.items() if "blue_box" not in split_composition(r["composition"])}
    assert set(exported) == expected
    assert "blue_box" not in instance.get_dynamic_partitions("concepts")
    assert all("blue_box" not in k for k in instance.get_dynamic_partitions("compositions"))
    # Its rebuildable outputs are cleaned; the lineage database keeps their history.
    assert not (data / "build/segmented/blue_box").exists()


def test_extend_compositions_keeps_existing_and_bounds_new():
    existing = ["a+b", "a+c", "b+c", "a+b+c"]
    extended = extend_compositions(existing, ["a", "b", "c", "d"], ["d"], [2, 3], per_new_concept=2)
    assert set(existing) <= set(extended) and len(extended) == 6
    assert all("d" in k.split("+") for k in set(extended) - set(existing))
    # "c" removed and "d" added: only "a+b" survives, and "d" brings two compositions of its own.
    after_removal = extend_compositions(existing, ["a", "b", "d"], ["d"], [2, 3], per_new_concept=2)
    assert "a+b" in after_removal and len(after_removal) == 3
    assert all("c" not in k.split("+") for k in after_removal)
    assert extend_compositions(existing, ["a", "b", "c", "d"], ["d"], [2, 3], 2) == extended  # deterministic


def test_sensor_requests_runs_in_dependency_order(small_project):
    _, data, config_file = small_project
    instance = DagsterInstance.ephemeral()
    defs = build_definitions(config_file=str(config_file))
    resources = build_resources(config_file=str(config_file))

    def tick():
        with build_sensor_context(instance=instance, resources=resources) as context:
            return concept_folder_sensor(context)

    first = tick()
    assert [r.job_name for r in first.run_requests] == ["catalogue_concepts"]
    defs.resolve_job_def("catalogue_concepts").execute_in_process(instance=instance)
    second = tick()
    assert sorted((r.job_name, r.partition_key) for r in second.run_requests) == [
        ("segment_concepts", k) for k in ("blue_box", "green_cone", "red_ball")]
    assert tick().run_requests[0].run_key == second.run_requests[0].run_key  # same work, same key: deduplicated
    for key in ("blue_box", "green_cone", "red_ball"):
        defs.resolve_job_def("segment_concepts").execute_in_process(instance=instance, partition_key=key)
    third = tick()
    compositions = [c["key"] for c in load_registry(data / "build/concepts.json")["compositions"]]
    assert sorted(r.partition_key for r in third.run_requests) == sorted(compositions)
    assert {r.job_name for r in third.run_requests} == {"build_compositions"}
    for key in compositions:
        defs.resolve_job_def("build_compositions").execute_in_process(instance=instance, partition_key=key)
    fourth = tick()
    assert [r.job_name for r in fourth.run_requests] == ["publish_dataset"]
    defs.resolve_job_def("publish_dataset").execute_in_process(instance=instance)
    assert "up to date" in tick().skip_message
    # A new concept folder starts the cycle again, with the catalogue.
    make_concepts(data / "concepts", {"purple_puck": [("ellipse", (120, 30, 160))]})
    assert [r.job_name for r in tick().run_requests] == ["catalogue_concepts"]
