"""Paths from outside stay inside their root: links, ``..`` and absolute names are refused, named.

Roots (gen4gen/roots.py): the data folder, the concepts folder, the scene bank, the weights
folder, evaluation.generated_dir, and the folder handed to add-concept.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from gen4gen.cli import main
from gen4gen.config import PipelineConfig
from gen4gen.evaluation import concept_references, generated_items
from gen4gen.scenes import BUILTIN_SCENES, discover_scene_bank

from .conftest import make_concepts, object_photo
from .test_bad_input import BLUE, GREEN, RED, discover, problems_for


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no gen4gen.toml of the checkout is picked up
    for name in ("GEN4GEN_CONFIG", "GEN4GEN_DATA_DIR", "GEN4GEN_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _secret(tmp_path: Path) -> Path:
    """A real photo outside every root: what a link must never smuggle in."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    object_photo("rect", GREEN, seed=5).save(outside / "secret.png")
    return outside / "secret.png"


# ---------------------------------------------------------------- add-concept
def test_add_concept_refuses_a_link_to_a_system_file_and_copies_the_rest(clean_env, capsys):
    data = clean_env / "data"
    source = clean_env / "my photos"
    source.mkdir()
    object_photo("ellipse", RED).save(source / "good.png")
    (source / "x.jpg").symlink_to("/etc/passwd")
    (source / "also_secret.png").symlink_to(_secret(clean_env))
    (source / "inside link.png").symlink_to(source / "good.png")  # stays in the folder: fine
    assert main(["add-concept", str(source), "--name", "mug", "--data-dir", str(data), "--no-build"]) == 0
    copied = data / "concepts" / "mug"
    assert sorted(p.name for p in copied.iterdir()) == ["good.png", "inside link.png"]
    assert not any(p.is_symlink() for p in copied.iterdir())
    assert (copied / "inside link.png").read_bytes() == (source / "good.png").read_bytes()
    err = capsys.readouterr().err
    assert "x.jpg" in err and "/etc/passwd" in err and "outside the source folder" in err
    assert "also_secret.png" in err


def test_add_concept_with_only_outside_links_copies_nothing(clean_env, capsys):
    data = clean_env / "data"
    source = clean_env / "src"
    source.mkdir()
    (source / "x.jpg").symlink_to("/etc/passwd")
    assert main(["add-concept", str(source), "--name", "mug", "--data-dir", str(data), "--no-build"]) == 2
    assert not (data / "concepts" / "mug").exists()
    assert "x.jpg" in capsys.readouterr().err


# ---------------------------------------------------------------- catalogue
def test_external_concepts_dir_is_its_own_root(tmp_path):
    shared = tmp_path / "shared" / "dreambooth"
    make_concepts(shared, {"dog": [("ellipse", RED)]})
    (shared / "dog" / "linked.png").symlink_to(_secret(tmp_path))
    concepts, problems = discover(shared, tmp_path / "data")
    assert [p.name for p in concepts[0].photos] == ["photo 0.png"]
    reasons = problems_for(problems, "linked.png")
    assert reasons and "outside the concepts folder" in reasons[0] and str(shared) in reasons[0]


def test_tampered_catalogue_path_is_refused_by_segmentation(tmp_path):
    from types import SimpleNamespace

    from gen4gen.concepts import ConceptRecord, PhotoRecord
    from gen4gen.stages import segment_concept
    from gen4gen.stages.segmentation import ConceptSegmentationFailed

    data = tmp_path / "data"
    make_concepts(data / "concepts", {"cat": [("ellipse", RED)]})
    secret = _secret(tmp_path)
    photo = PhotoRecord(file=str(secret), name="secret.png", stem="secret", sha256="0" * 64, width=200, height=160)
    concept = ConceptRecord(key="cat", name="cat", class_name="cat", folder=str(data / "concepts" / "cat"),
                            token_index=1, photos=[photo])
    never = SimpleNamespace(fallback_warning=None, identity=lambda: {"backend": "none"},
                            segment=lambda *a: pytest.fail("an outside photo must not reach the segmenter"))
    with pytest.raises(ConceptSegmentationFailed) as info:
        segment_concept(concept, never, data / "build" / "segmented" / "cat", PipelineConfig(data_dir=str(data)))
    assert str(secret) in str(info.value) and "outside the concepts folder" in str(info.value)


# ---------------------------------------------------------------- scene bank
def test_scene_bank_link_leaving_it_is_refused(tmp_path):
    backgrounds = tmp_path / "data" / "backgrounds"
    garden = backgrounds / "a_garden"
    garden.mkdir(parents=True)
    Image.new("RGB", (120, 90), GREEN).save(garden / "real.png")
    (garden / "borrowed.png").symlink_to(_secret(tmp_path))
    elsewhere = backgrounds / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "only.png").symlink_to(_secret(tmp_path))
    problems: list[dict] = []
    scenes = discover_scene_bank(backgrounds, [".png"], problems)
    assert [(s.name, [Path(p).name for p in s.photos]) for s in scenes] == [("a_garden", ["real.png"])]
    for name in ("borrowed.png", "only.png"):
        reasons = problems_for(problems, name)
        assert reasons and "outside the scene bank" in reasons[0], problems


def test_scene_bank_of_only_outside_links_falls_back_to_the_builtin_scenes(tmp_path):
    backgrounds = tmp_path / "backgrounds"
    (backgrounds / "beach").mkdir(parents=True)
    (backgrounds / "beach" / "sand.png").symlink_to(_secret(tmp_path))
    assert discover_scene_bank(backgrounds, [".png"]) == list(BUILTIN_SCENES)


# ---------------------------------------------------------------- evaluation inputs
def _registry(data: Path) -> dict:
    make_concepts(data / "concepts", {"cat": [("ellipse", RED)]})
    return {"concepts": [{"key": "cat", "name": "cat", "class_name": "cat", "folder": str(data / "concepts" / "cat"),
                          "token_index": 1, "photos": []}], "compositions": [], "problems": []}


def test_generated_images_named_with_dotdot_absolute_or_outside_links_are_refused(tmp_path):
    data, generated = tmp_path / "data", tmp_path / "generated"
    generated.mkdir()
    secret = _secret(tmp_path)
    for name in ("ok.png", "also ok.png"):
        Image.new("RGB", (64, 64), BLUE).save(generated / name)
    (generated / "link.png").symlink_to(secret)
    lines = [
        {"image": "ok.png", "prompt": "a photo of <new1> cat", "concepts": ["cat"]},
        {"image": "../outside/secret.png", "prompt": "p", "concepts": ["cat"]},
        {"image": str(secret), "prompt": "p", "concepts": ["cat"]},
        {"images": ["also ok.png", "sub/../../outside/secret.png", "link.png"], "prompt": "p", "concepts": ["cat"]},
    ]
    (generated / "prompts.jsonl").write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    config = PipelineConfig(data_dir=str(data), evaluation={"generated_dir": str(generated)})
    problems: list[dict] = []
    items = generated_items(config, _registry(data), problems)
    assert sorted(item.path.name for item in items) == ["also ok.png", "ok.png"]
    text = json.dumps(problems)
    assert "prompts.jsonl:2" in text and "prompts.jsonl:3" in text and "prompts.jsonl:4" in text
    assert "'..'" in text and "absolute path" in text and "outside the generated-images folder" in text
    assert "link.png" in text


def test_default_prompts_file_linked_out_of_the_generated_folder_is_refused(tmp_path):
    data, generated = tmp_path / "data", tmp_path / "generated"
    generated.mkdir()
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(json.dumps({"image": "x.png", "prompt": "p", "concepts": ["cat"]}), encoding="utf-8")
    (generated / "prompts.jsonl").symlink_to(elsewhere)
    config = PipelineConfig(data_dir=str(data), evaluation={"generated_dir": str(generated)})
    problems: list[dict] = []
    assert generated_items(config, _registry(data), problems) == []
    assert problems and "outside the generated-images folder" in problems[0]["reason"]


def test_cutout_named_by_a_manifest_outside_the_build_is_refused(tmp_path):
    data = tmp_path / "data"
    registry = _registry(data)
    folder = data / "build" / "segmented" / "cat"
    folder.mkdir(parents=True)
    _secret(tmp_path)
    (folder / "manifest.json").write_text(json.dumps({"photos": [{"cutout": "../../../../outside/secret.png"}]}),
                                          encoding="utf-8")
    config = PipelineConfig(data_dir=str(data), evaluation={"reference_images": "cutouts"})
    problems: list[dict] = []
    assert concept_references(registry, config, ["cat"], problems) == {}
    assert any("'..'" in p["reason"] for p in problems), problems


# ---------------------------------------------------------------- the roots themselves
def test_roots_are_named_in_one_place_with_their_settings(tmp_path):
    from gen4gen.roots import OutsideRoot, generated_root, project_roots

    config = PipelineConfig(data_dir=str(tmp_path / "data"), evaluation={"generated_dir": str(tmp_path / "gen")})
    roots = {root.name: root for root in project_roots(config)}
    assert set(roots) == {"data folder", "concepts folder", "scene bank", "weights folder", "generated-images folder"}
    assert roots["concepts folder"].setting == "concepts_dir" and roots["scene bank"].setting is None
    root = generated_root(tmp_path / "gen")
    for hostile in ("../x.png", "/etc/passwd", "a/../../x.png", "C:\\x.png", ""):
        with pytest.raises(OutsideRoot):
            root.join(hostile)
    assert root.join("sub/ok.png") == tmp_path / "gen" / "sub" / "ok.png"
