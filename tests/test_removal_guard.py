"""The catalogue never retires concepts by accident: missing, emptied or half-lost folders are refused.

Retiring a concept retires its partitions and its token for ever, so ``build_registry`` raises
(writing nothing) unless the removals are few or confirmed (``gen4gen remove-concept``,
``confirm_removals``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gen4gen.cli import main
from gen4gen.concepts import build_registry
from gen4gen.config import PipelineConfig
from gen4gen.removals import (CatalogueRefused, NoConcepts, RemovalRefused, confirm_removals, missing_concepts,
                              read_confirmations)

from .conftest import make_concepts
from .test_bad_input import BLUE, GREEN, RED

FOUR = {"cat": [("ellipse", RED)], "mug": [("rect", BLUE)], "vase": [("triangle", GREEN)], "lamp": [("rect", RED)]}


@pytest.fixture
def catalogued(tmp_path, monkeypatch):
    """Four concepts, catalogued; the catalogue written where the asset writes it."""
    monkeypatch.chdir(tmp_path)
    for name in ("GEN4GEN_CONFIG", "GEN4GEN_DATA_DIR", "GEN4GEN_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "data"
    make_concepts(data / "concepts", FOUR)
    config = PipelineConfig(data_dir=str(data))
    registry = build_registry(config, {})
    _write(config, registry)
    return config, registry


def _write(config, registry) -> None:
    config.paths.registry.parent.mkdir(parents=True, exist_ok=True)
    config.paths.registry.write_text(json.dumps(registry), encoding="utf-8")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(config, registry) -> RemovalRefused:
    build_before = _snapshot(config.paths.build)
    with pytest.raises(RemovalRefused) as info:
        build_registry(config, registry)
    assert _snapshot(config.paths.build) == build_before  # nothing written
    return info.value


def test_missing_concepts_folder_is_refused_saying_what_it_saw(catalogued):
    config, registry = catalogued
    concepts = config.paths.concepts
    concepts.rename(concepts.with_name("unmounted"))
    error = _refused(config, registry)
    message = str(error)
    assert str(concepts) in message and "does not exist" in message
    assert "4 concepts were catalogued, 0 are found now" in message
    assert "cat (folder gone)" in message and "vase (folder gone)" in message
    assert "gen4gen remove-concept NAME" in message and "gen4gen materialize --confirm-removals" in message
    assert error.missing == ["cat", "lamp", "mug", "vase"] and (error.before, error.now) == (4, 0)
    assert isinstance(error, CatalogueRefused)


def test_emptied_concepts_folder_is_refused(catalogued):
    config, registry = catalogued
    for folder in config.paths.concepts.iterdir():
        for photo in folder.iterdir():
            photo.unlink()
    error = _refused(config, registry)
    assert "holds no concept with a usable photo" in str(error)
    assert "mug (no usable photo left)" in str(error)


def test_losing_more_than_the_share_at_once_is_refused_and_less_is_allowed(catalogued):
    config, registry = catalogued
    shutil.rmtree(config.paths.concepts / "cat")
    shutil.rmtree(config.paths.concepts / "mug")  # 2 of 4 = 50% > 25%
    error = _refused(config, registry)
    assert "lost 2 of its 4" in str(error) and "max_removed_share = 0.25" in str(error)
    assert error.missing == ["cat", "mug"]
    make_concepts(config.paths.concepts, {"mug": FOUR["mug"]})  # back: 1 of 4 = 25%, allowed
    after = build_registry(config, registry)
    assert sorted(c["key"] for c in after["concepts"]) == ["lamp", "mug", "vase"]
    assert "cat" in after["retired_concept_tokens"]


def test_the_share_is_configurable(catalogued):
    config, registry = catalogued
    shutil.rmtree(config.paths.concepts / "cat")
    shutil.rmtree(config.paths.concepts / "mug")
    lenient = config.model_copy(update={"regeneration": config.regeneration.model_copy(
        update={"max_removed_share": 0.5})})
    assert sorted(c["key"] for c in build_registry(lenient, registry)["concepts"]) == ["lamp", "vase"]


def test_confirmed_removals_are_retired_whatever_the_share_then_forgotten(catalogued):
    config, registry = catalogued
    for key in ("cat", "mug", "vase"):
        shutil.rmtree(config.paths.concepts / key)
    assert missing_concepts(config) == ["cat", "mug", "vase"]
    confirm_removals(config.paths, ["cat"])
    error = _refused(config, registry)  # mug and vase unconfirmed: 2 of 4
    assert error.missing == ["mug", "vase"] and "lost 2 of its 4" in str(error)
    confirm_removals(config.paths, missing_concepts(config))
    after = build_registry(config, registry)
    assert [c["key"] for c in after["concepts"]] == ["lamp"]
    assert set(after["retired_concept_tokens"]) == {"cat", "mug", "vase"}
    assert read_confirmations(config.paths) == set()
    assert not (config.paths.build / "confirmed_removals.json").exists()


def test_every_concept_removed_with_confirmation_gives_an_empty_catalogue(catalogued):
    config, registry = catalogued
    shutil.rmtree(config.paths.concepts)
    confirm_removals(config.paths, missing_concepts(config))
    after = build_registry(config, registry)
    assert after["concepts"] == [] and len(after["retired_concept_tokens"]) == 4


def test_nothing_ever_catalogued_and_no_concepts_is_a_clear_error(tmp_path):
    config = PipelineConfig(data_dir=str(tmp_path / "data"))
    with pytest.raises(NoConcepts) as info:
        build_registry(config, {})
    assert str(config.paths.concepts) in str(info.value) and "gen4gen demo-data" in str(info.value)
    config.paths.concepts.mkdir(parents=True)
    (config.paths.concepts / "empty").mkdir()
    with pytest.raises(NoConcepts, match="no concept with a usable photo"):
        build_registry(config, {})


def test_remove_concept_moves_the_photos_aside_and_confirms(catalogued, capsys):
    config, registry = catalogued
    data = config.paths.data
    photos = _snapshot(config.paths.concepts / "cat")
    assert main(["remove-concept", "cat", "--data-dir", str(data), "--no-build"]) == 0
    assert not (config.paths.concepts / "cat").exists()
    (moved,) = (data / "removed").iterdir()
    assert moved.name.startswith("cat-") and moved.name.endswith("Z")
    assert _snapshot(moved) == photos  # the user's photos, kept
    assert str(moved) in capsys.readouterr().out
    assert read_confirmations(config.paths) == {"cat"}
    # With "mug" going too, 2 of 4 vanish: allowed, because "mug" is confirmed the same way.
    assert main(["remove-concept", "Mug", "--data-dir", str(data), "--no-build"]) == 0
    after = build_registry(config, registry)
    assert sorted(c["key"] for c in after["concepts"]) == ["lamp", "vase"]
    assert {"cat", "mug"} <= set(after["retired_concept_tokens"])
    assert read_confirmations(config.paths) == set()


def test_remove_concept_of_a_folder_already_gone_confirms_it(catalogued):
    config, registry = catalogued
    for key in ("cat", "mug"):
        shutil.rmtree(config.paths.concepts / key)
        assert main(["remove-concept", key, "--data-dir", str(config.paths.data), "--no-build"]) == 0
    assert not (config.paths.data / "removed").exists()
    assert sorted(c["key"] for c in build_registry(config, registry)["concepts"]) == ["lamp", "vase"]


def test_remove_concept_of_an_unknown_name_changes_nothing(catalogued, capsys):
    config, _ = catalogued
    assert main(["remove-concept", "unicorn", "--data-dir", str(config.paths.data), "--no-build"]) == 2
    err = capsys.readouterr().err
    assert "unicorn" in err and "cat" in err
    assert read_confirmations(config.paths) == set()


def test_adding_a_concept_again_withdraws_its_confirmation(catalogued, tmp_path):
    config, _ = catalogued
    data = config.paths.data
    assert main(["remove-concept", "cat", "--data-dir", str(data), "--no-build"]) == 0
    (moved,) = (data / "removed").iterdir()
    assert main(["add-concept", str(moved), "--name", "cat", "--data-dir", str(data), "--no-build"]) == 0
    assert read_confirmations(config.paths) == set()
