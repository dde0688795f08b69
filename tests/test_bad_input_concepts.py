"""Bad and unusual user input, part 2: concept discovery.

Empty folders, Unicode names, names and links escaping the concepts folder, clashing keys,
non-image files, DreamBooth's class file.
"""
from __future__ import annotations

import unicodedata

import pytest

from gen4gen.concepts import class_from_folder, read_class_map
from gen4gen.io import BadInput, check_concept_name, ensure_inside, safe_key

from .conftest import SHARED_DATA, make_concepts, object_photo, requires_shared
from .test_bad_input import BLUE, GREEN, RED, discover, problems_for, solid, truncate, write_unreadable


def test_empty_concept_folder_is_reported_and_others_discovered(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    make_concepts(concepts_dir, {"red_ball": [("ellipse", RED)], "blue box": [("rect", BLUE)]})
    (concepts_dir / "empty one").mkdir()
    concepts, problems = discover(concepts_dir)
    assert [c.key for c in concepts] == ["blue_box", "red_ball"]
    reasons = problems_for(problems, "empty one")
    assert reasons and "no usable images" in reasons[0]


def test_unicode_and_space_names_get_safe_keys_and_keep_their_names(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    folder = concepts_dir / "café mug"
    folder.mkdir(parents=True)
    object_photo("rect", RED).save(folder / "fötö 1.png")
    object_photo("rect", GREEN, seed=1).save(folder / "fötö 2.png")
    concepts, problems = discover(concepts_dir)
    assert problems == []
    (concept,) = concepts
    assert concept.key == "café_mug" and concept.name == "café mug"
    assert concept.class_name == "café mug"
    assert [p.name for p in concept.photos] == ["fötö 1.png", "fötö 2.png"]
    assert [p.stem for p in concept.photos] == ["fötö_1", "fötö_2"]
    assert safe_key("café mug") == "café_mug"
    # A decomposed (NFD) name gets the same, composed key.
    assert safe_key(unicodedata.normalize("NFD", "café mug")) == "café_mug"


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "a\\b", "", "  "])
def test_concept_names_escaping_the_data_directory_are_refused(name):
    with pytest.raises(BadInput) as info:
        check_concept_name(name)
    assert info.value.reason
    if name.strip():
        assert "escape the data directory" in info.value.reason


def test_plain_concept_names_are_accepted():
    assert check_concept_name("coffee cup") == "coffee_cup"
    assert check_concept_name("café mug") == "café_mug"
    assert check_concept_name("a..b") == "a_b"  # dots inside a name are not a path


def test_symlinked_concept_folder_outside_is_refused(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    make_concepts(concepts_dir, {"red_ball": [("ellipse", RED)]})
    outside = tmp_path / "elsewhere"
    make_concepts(outside, {"secret": [("rect", BLUE)]})
    (concepts_dir / "linked").symlink_to(outside / "secret", target_is_directory=True)
    concepts, problems = discover(concepts_dir)
    assert [c.key for c in concepts] == ["red_ball"]
    reasons = problems_for(problems, "linked")
    assert reasons and "outside the concepts folder" in reasons[0]
    with pytest.raises(BadInput):
        ensure_inside(concepts_dir, concepts_dir / "linked")


def test_symlinked_photo_outside_is_refused(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    make_concepts(concepts_dir, {"red_ball": [("ellipse", RED)]})
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    object_photo("rect", BLUE).save(outside / "secret.png")
    (concepts_dir / "red_ball" / "linked.png").symlink_to(outside / "secret.png")
    concepts, problems = discover(concepts_dir)
    (concept,) = concepts
    assert [p.name for p in concept.photos] == ["photo 0.png"]
    reasons = problems_for(problems, "linked.png")
    assert reasons and "outside the concepts folder" in reasons[0]


def test_symlinked_concepts_root_is_allowed(tmp_path):
    # The concepts folder itself may be a link (e.g. to a shared dataset).
    real = tmp_path / "shared" / "concepts"
    make_concepts(real, {"red_ball": [("ellipse", RED)]})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "concepts").symlink_to(real, target_is_directory=True)
    concepts, problems = discover(tmp_path / "data" / "concepts")
    assert [c.key for c in concepts] == ["red_ball"] and problems == []


def test_two_folders_with_the_same_key_report_the_second(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    make_concepts(concepts_dir, {"a b": [("rect", RED)], "a_b": [("rect", BLUE)], "c": [("rect", GREEN)]})
    concepts, problems = discover(concepts_dir)
    assert [(c.key, c.name) for c in concepts] == [("a_b", "a b"), ("c", "c")]
    reasons = problems_for(problems, "a_b")
    assert reasons and "already used" in reasons[0] and "'a b'" in reasons[0]
    assert not problems_for(problems, "a b")


def test_non_image_files_are_reported_and_ignored(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    make_concepts(concepts_dir, {"red_ball": [("ellipse", RED)]})
    (concepts_dir / "red_ball" / "notes.txt").write_text("not a photo")
    (concepts_dir / "red_ball" / ".DS_Store").write_bytes(b"\0\1")  # hidden files are skipped silently
    concepts, problems = discover(concepts_dir)
    assert [p.name for p in concepts[0].photos] == ["photo 0.png"]
    reasons = problems_for(problems, "notes.txt")
    assert reasons and ".txt" in reasons[0] and "ignored" in reasons[0]
    assert not problems_for(problems, ".DS_Store")


def test_bad_photos_are_reported_and_the_good_ones_kept(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    make_concepts(concepts_dir, {"red_ball": [("ellipse", RED), ("ellipse", GREEN)], "only_bad": []})
    (concepts_dir / "only_bad").mkdir(exist_ok=True)
    write_unreadable(concepts_dir / "only_bad" / "junk.jpg")
    truncate(concepts_dir / "red_ball" / "photo 1.png")
    solid("RGB", (30, 30), RED).save(concepts_dir / "red_ball" / "tiny.png")
    concepts, problems = discover(concepts_dir)
    assert [c.key for c in concepts] == ["red_ball"]
    assert [p.name for p in concepts[0].photos] == ["photo 0.png"]
    assert "truncated" in problems_for(problems, "photo 1.png")[0]
    assert "64 px minimum" in problems_for(problems, "tiny.png")[0]
    assert "not a readable image" in problems_for(problems, "junk.jpg")[0]
    assert "no usable images" in problems_for(problems, "only_bad")[0]


DREAMBOOTH_STYLE = """Classes

subject_name,class
backpack,backpack
bear_plushie,stuffed animal
dog2,dog

Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} with a city in the background'.format(unique_token, class_token),
'a cube shaped {0} {1}'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} wearing a red hat'.format(unique_token, class_token),
]
"""


def test_dreambooth_class_map(tmp_path):
    path = tmp_path / "prompts_and_classes.txt"
    path.write_text(DREAMBOOTH_STYLE, encoding="utf-8")
    mapping = read_class_map(path)
    assert mapping == {"backpack": "backpack", "bear_plushie": "stuffed animal", "dog2": "dog"}


def test_dreambooth_class_map_names_classes_of_discovered_concepts(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    make_concepts(concepts_dir, {"bear_plushie": [("ellipse", RED)], "coffee_cup": [("rect", BLUE)]})
    (concepts_dir / "prompts_and_classes.txt").write_text(DREAMBOOTH_STYLE, encoding="utf-8")
    concepts, problems = discover(concepts_dir)
    assert {c.key: c.class_name for c in concepts} == {"bear_plushie": "stuffed animal", "coffee_cup": "coffee cup"}
    assert problems == []  # the class file beside the folders is not a concept


def test_class_from_folder():
    assert class_from_folder("dog2") == "dog"
    assert class_from_folder("coffee_cup") == "coffee cup"
    assert class_from_folder("red-cartoon") == "red cartoon"
    assert class_from_folder("cat") == "cat"


@requires_shared(SHARED_DATA / "dreambooth" / "prompts_and_classes.txt")
def test_real_dreambooth_class_file():
    mapping = read_class_map(SHARED_DATA / "dreambooth" / "prompts_and_classes.txt")
    assert mapping["bear_plushie"] == "stuffed animal"
    assert mapping["dog2"] == "dog" and mapping["poop_emoji"] == "toy"
    assert len(mapping) >= 24
    assert "subject_name" not in mapping
    assert not any(set("{}'\"") & set(k + v) for k, v in mapping.items())
