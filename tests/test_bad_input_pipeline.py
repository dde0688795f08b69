"""Bad and unusual user input, part 4: the whole graph through Dagster with broken files among good ones."""
from __future__ import annotations

import json
from pathlib import Path

from gen4gen.concepts import split_composition

from .conftest import object_photo
from .test_bad_input import problems_for, truncate, write_unreadable


def _run(config_file: Path, instance=None):
    from dagster import DagsterInstance

    from gen4gen_assets.definitions import build_definitions
    from gen4gen_assets.runner import materialize_all

    instance = instance or DagsterInstance.ephemeral()
    summary = materialize_all(build_definitions(config_file=str(config_file)), instance, log=lambda *_: None)
    return instance, summary


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_bad_files_through_dagster_are_reported_and_nothing_produced_is_lost(small_project):
    _, data, config_file = small_project
    concepts_dir = data / "concepts"
    broken = concepts_dir / "red_ball" / "broken.png"
    object_photo("ellipse", (190, 50, 40), seed=99).save(broken)
    truncate(broken)
    (concepts_dir / "empty_concept").mkdir()
    (concepts_dir / "all_bad").mkdir()
    write_unreadable(concepts_dir / "all_bad" / "junk.jpg")
    # A second photo for "blue box", to be corrupted before the second run. (Its rounded-box
    # masks fill ~99% of their boxes, so the filter rejects its images: the composition
    # exported without it is green_cone+red_ball.)
    object_photo("rect", (60, 70, 190), seed=98).save(concepts_dir / "blue box" / "photo 1.png")
    good = {"blue_box", "green_cone", "red_ball"}

    instance, summary = _run(config_file)
    assert not summary.failed, summary.failed
    assert {f"segmented_foregrounds[{k}]" for k in good} <= set(summary.succeeded)
    assert sorted(instance.get_dynamic_partitions("concepts")) == sorted(good)

    registry = json.loads((data / "build" / "concepts.json").read_text(encoding="utf-8"))
    assert {c["key"] for c in registry["concepts"]} == good
    red = next(c for c in registry["concepts"] if c["key"] == "red_ball")
    assert sorted(p["name"] for p in red["photos"]) == ["photo 0.png", "photo 1.png"]
    problems = registry["problems"]
    assert any("truncated" in r for r in problems_for(problems, "red_ball/broken.png"))
    assert any("no usable images" in r for r in problems_for(problems, "empty_concept"))
    assert any("no usable images" in r for r in problems_for(problems, "all_bad"))
    assert any("not a readable image" in r for r in problems_for(problems, "all_bad/junk.jpg"))
    assert all(p["reason"] for p in problems)

    mycanvas = data / "mycanvas"
    rows = _rows(mycanvas / "metadata.jsonl")
    assert rows
    for row in rows:
        assert {o["concept"] for o in row["concepts"]} <= good
        assert (mycanvas / row["file_name"]).is_file()
    tokens = {c["key"]: c["token_index"] for c in registry["concepts"]}

    # One more photo of blue_box (it had two good ones) goes bad; rebuild.
    kept = {comp["key"] for comp in registry["compositions"] if "blue_box" not in split_composition(comp["key"])}
    before = {name: content for name, content in _snapshot(mycanvas).items()
              if name.endswith(".png") and name.rsplit("_", 1)[0] in kept}
    assert before, f"no exported image of a composition without blue_box: {kept}"
    segmented_before = {k: _snapshot(data / "build" / "segmented" / k) for k in good - {"blue_box"}}
    truncate(concepts_dir / "blue box" / "photo 1.png")

    instance, summary = _run(config_file, instance)  # same instance: the run history goes on
    assert not summary.failed, summary.failed
    assert sorted(instance.get_dynamic_partitions("concepts")) == sorted(good)
    registry = json.loads((data / "build" / "concepts.json").read_text(encoding="utf-8"))
    blue = next(c for c in registry["concepts"] if c["key"] == "blue_box")
    assert [p["name"] for p in blue["photos"]] == ["photo 0.png"]
    assert any("truncated" in r for r in problems_for(registry["problems"], "blue box/photo 1.png"))
    assert any("truncated" in r for r in problems_for(registry["problems"], "red_ball/broken.png"))
    assert {c["key"]: c["token_index"] for c in registry["concepts"]} == tokens
    # Nothing already produced is lost: the other compositions' images are unchanged, byte for byte.
    after = _snapshot(mycanvas)
    for name, content in before.items():
        assert name in after, f"{name} disappeared from the export"
        assert after[name] == content, f"{name} changed"
    for key, files in segmented_before.items():
        assert _snapshot(data / "build" / "segmented" / key) == files
    rows = _rows(mycanvas / "metadata.jsonl")
    assert {r["file_name"] for r in rows} >= set(before)
    everything = rows + _rows(mycanvas / "rejected.jsonl")
    assert {r["composition"] for r in everything} == {c["key"] for c in registry["compositions"]}
    for row in everything:
        assert {o["concept"] for o in row["concepts"]} <= good
        for obj in row["concepts"]:
            if obj["concept"] == "blue_box":  # rebuilt from the photo that is left
                assert obj["source_photo"] == "photo 0.png"
