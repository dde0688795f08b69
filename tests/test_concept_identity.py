"""A concept key is one concept for ever: collisions are refused, never resolved by replacing.

``cat``, ``Cat`` and ``_cat`` are the same concept (same key ignoring case). The catalogued one
keeps its key and token; a newcomer is refused and reported. Also: the same photo in two
concepts, hidden folders, and add-concept's interrupted copies.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from gen4gen.cli import main
from gen4gen.concepts import build_registry
from gen4gen.config import PipelineConfig
from gen4gen.io import BadInput, check_concept_name

from .conftest import make_concepts, object_photo
from .test_bad_input import BLUE, GREEN, RED, discover, problems_for


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("GEN4GEN_CONFIG", "GEN4GEN_DATA_DIR", "GEN4GEN_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "data"
    make_concepts(data / "concepts", {"cat": [("ellipse", RED)], "mug": [("rect", BLUE)],
                                      "vase": [("triangle", GREEN)], "lamp": [("rect", GREEN)]})
    return tmp_path, data


def _config(data: Path) -> PipelineConfig:
    return PipelineConfig(data_dir=str(data))


def _photos_folder(root: Path, name: str = "new photos", seed: int = 40) -> Path:
    folder = root / name
    folder.mkdir()
    object_photo("ellipse", (90, 90, 200), seed=seed).save(folder / "p.png")
    return folder


def test_identity_ignores_case_and_punctuation():
    from gen4gen.io import concept_identity

    assert concept_identity("_cat") == concept_identity("Cat") == concept_identity("cat") == "cat"
    assert concept_identity("coffee cup") == concept_identity("Coffee_Cup")
    assert concept_identity("cat2") != concept_identity("cat")


@pytest.mark.parametrize("name", ["_cat", "Cat", "CAT "])
def test_add_concept_with_the_key_of_an_existing_concept_is_refused(project, capsys, name):
    root, data = project
    first = build_registry(_config(data), {})
    tokens = {c["key"]: c["token_index"] for c in first["concepts"]}
    (data / "build").mkdir(exist_ok=True)
    (data / "build" / "concepts.json").write_text(json.dumps(first), encoding="utf-8")
    source = _photos_folder(root)
    assert main(["add-concept", str(source), "--name", name, "--data-dir", str(data), "--no-build"]) == 2
    err = capsys.readouterr().err
    assert str(data / "concepts" / "cat") in err and "'cat'" in err
    assert sorted(p.name for p in (data / "concepts").iterdir()) == ["cat", "lamp", "mug", "vase"]
    again = build_registry(_config(data), first)
    assert {c["key"]: c["token_index"] for c in again["concepts"]} == tokens


def test_add_concept_is_refused_against_a_folder_not_yet_catalogued(project, capsys):
    root, data = project  # no catalogue written yet: the folders on disk count
    source = _photos_folder(root)
    assert main(["add-concept", str(source), "--name", "_mug", "--data-dir", str(data), "--no-build"]) == 2
    assert str(data / "concepts" / "mug") in capsys.readouterr().err
    assert not (data / "concepts" / "_mug").exists()


def test_catalogued_folder_keeps_its_key_against_newcomers(project):
    _, data = project
    first = build_registry(_config(data), {})
    cat = next(c for c in first["concepts"] if c["key"] == "cat")
    # "_cat" and "Cat" sort before "cat": today's first-come rule would hand them the key.
    for newcomer in ("_cat", "Cat"):
        make_concepts(data / "concepts", {newcomer: [("rect", GREEN)]})
    second = build_registry(_config(data), first)
    again = next(c for c in second["concepts"] if c["key"] == "cat")
    assert again["name"] == "cat" and again["token_index"] == cat["token_index"]
    assert [p["sha256"] for p in again["photos"]] == [p["sha256"] for p in cat["photos"]]
    assert sorted(c["key"] for c in second["concepts"]) == ["cat", "lamp", "mug", "vase"]
    for newcomer in ("_cat", "Cat"):
        reasons = problems_for(second["problems"], f"/{newcomer}")
        assert reasons and "'cat'" in reasons[0] and "already in the catalogue" in reasons[0], second["problems"]


def test_new_folders_of_one_concept_pick_one_deterministically_and_report_the_other(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    make_concepts(concepts_dir, {"cat": [("ellipse", RED)], "Cat": [("rect", BLUE)]})
    concepts, problems = discover(concepts_dir)
    assert [(c.key, c.name) for c in concepts] == [("Cat", "Cat")]  # "Cat" sorts first
    reasons = problems_for(problems, "/cat")
    assert reasons and "'Cat'" in reasons[0] and "refused" in reasons[0]


def test_the_same_photo_in_two_concepts_is_reported_naming_both(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    make_concepts(concepts_dir, {"cat": [("ellipse", RED)], "mug": [("rect", BLUE)]})
    shutil.copy(concepts_dir / "cat" / "photo 0.png", concepts_dir / "mug" / "copied.png")
    concepts, problems = discover(concepts_dir)
    assert sorted(c.key for c in concepts) == ["cat", "mug"]  # reported, not dropped
    reasons = problems_for(problems, "mug/copied.png")
    assert len(reasons) == 1 and str(concepts_dir / "cat" / "photo 0.png") in reasons[0]
    assert "same photo" in reasons[0]


def test_hidden_folders_and_interrupted_copies_are_not_concepts(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    make_concepts(concepts_dir, {"cat": [("ellipse", RED)], ".adding-k3x9": [("rect", BLUE)],
                                 ".thumbnails": [("rect", GREEN)]})
    concepts, problems = discover(concepts_dir)
    assert [c.key for c in concepts] == ["cat"]
    assert not any(".adding" in p["path"] or ".thumbnails" in p["path"] for p in problems)


def test_hidden_concept_names_are_refused():
    with pytest.raises(BadInput) as info:
        check_concept_name(".adding-mine")
    assert "hides" in info.value.reason


def test_interrupted_add_concept_is_cleaned_by_the_next_one(project):
    root, data = project
    concepts_dir = data / "concepts"
    old = concepts_dir / ".adding-interrupted"
    old.mkdir()
    object_photo("rect", BLUE).save(old / "half.png")
    two_minutes_ago = time.time() - 120
    os.utime(old, (two_minutes_ago, two_minutes_ago))
    fresh = concepts_dir / ".adding-running"  # another add-concept may be copying right now
    fresh.mkdir()
    assert main(["add-concept", str(_photos_folder(root)), "--name", "teapot", "--data-dir", str(data),
                 "--no-build"]) == 0
    assert not old.exists() and fresh.is_dir()
    assert sorted(p.name for p in concepts_dir.iterdir() if p.name.startswith(".adding-")) == [".adding-running"]
    assert (concepts_dir / "teapot" / "p.png").is_file()


def test_demo_data_leaves_out_a_sample_the_user_already_has_under_another_spelling(tmp_path):
    from gen4gen.demo_data import write_demo_concepts

    concepts_dir = tmp_path / "concepts"
    make_concepts(concepts_dir, {"Cat": [("ellipse", RED)]})
    write_demo_concepts(concepts_dir)
    names = sorted(p.name for p in concepts_dir.iterdir())
    assert "cat" not in names and "Cat" in names and "astronaut" in names
