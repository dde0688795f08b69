"""Bad and unusual user input: every problem names the file and the reason, the rest goes on.

Covers photo loading (corrupt, truncated, odd colour modes, EXIF rotation, tiny, huge),
concept discovery (empty folders, Unicode names, names and links escaping the data
directory, clashing keys, DreamBooth's class file), stable tokens and proposals, atomic
writes, and the whole graph through Dagster with broken files among good ones.
"""
from __future__ import annotations

import json
import os
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gen4gen.concepts import (build_registry, class_from_folder, discover_concepts, propose_compositions,
                              read_class_map, split_composition)
from gen4gen.config import InputConfig, PipelineConfig
from gen4gen.io import BadInput, atomic_write_bytes, check_concept_name, ensure_inside, load_photo, safe_key

from .conftest import SHARED_DATA, make_concepts, object_photo, requires_shared

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 40), (30, 40, 220)


# ---------------------------------------------------------------- helpers
def _solid(mode: str, size, colour) -> Image.Image:
    return Image.new(mode, size, colour)


def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_unreadable(path: Path, seed: int = 0) -> None:
    path.write_bytes(random.Random(seed).randbytes(5000))


def _problems_for(problems: list[dict], suffix: str) -> list[str]:
    """Reasons of the problem records whose path ends with ``suffix``."""
    return [p["reason"] for p in problems if p["path"].endswith(suffix)]


def _discover(concepts_dir: Path, data_dir: Path | None = None, **kwargs):
    return discover_concepts(concepts_dir, data_dir or concepts_dir.parent, InputConfig(), **kwargs)


def _close(pixel, colour, tolerance=6) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(colour, int)) <= tolerance))


# ---------------------------------------------------------------- 1. load_photo
def test_unreadable_file_with_jpg_name_is_bad_input_naming_it(tmp_path):
    path = tmp_path / "not really.jpg"
    _write_unreadable(path)
    with pytest.raises(BadInput) as info:
        load_photo(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert "corrupt" in info.value.reason or "not a readable image" in info.value.reason


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_bad_input_naming_it(tmp_path, fmt):
    rng = np.random.default_rng(1)
    path = tmp_path / f"half.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)).save(path, format=fmt)
    load_photo(path)  # the whole file is fine
    _truncate(path)
    with pytest.raises(BadInput) as info:
        load_photo(path)
    assert str(path) in str(info.value)
    assert "truncated" in info.value.reason or "corrupt" in info.value.reason


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    _solid("CMYK", (120, 90), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    loaded = load_photo(path)
    assert loaded.rgb.shape == (90, 120, 3) and loaded.rgb.dtype == np.uint8
    assert _close(loaded.rgb[45, 60], (255, 0, 0))
    assert loaded.alpha is None


def test_greyscale_becomes_rgb(tmp_path):
    path = tmp_path / "grey.png"
    _solid("L", (100, 80), 77).save(path)
    loaded = load_photo(path)
    assert loaded.rgb.shape == (80, 100, 3) and loaded.rgb.dtype == np.uint8
    assert tuple(loaded.rgb[40, 50]) == (77, 77, 77)
    assert loaded.alpha is None


def test_16_bit_png_keeps_its_brightness(tmp_path):
    path = tmp_path / "deep.png"
    values = np.full((80, 100), 0x8080, np.uint16)  # mid grey: 128 in 8 bits
    values[:, :10] = 0
    values[:, -10:] = 0xFFFF
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    loaded = load_photo(path)
    assert loaded.rgb.shape == (80, 100, 3) and loaded.rgb.dtype == np.uint8
    assert tuple(loaded.rgb[40, 50]) == (128, 128, 128)
    assert tuple(loaded.rgb[40, 0]) == (0, 0, 0)
    assert tuple(loaded.rgb[40, 99]) == (255, 255, 255)
    assert any("16-bit" in note and str(path) in note for note in loaded.warnings)


def test_dark_16_bit_png_is_not_stretched_to_white(tmp_path):
    path = tmp_path / "dark.png"
    Image.fromarray(np.full((80, 100), 0x2020, np.uint16)).save(path)
    assert tuple(load_photo(path).rgb[10, 10]) == (32, 32, 32)


def _palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (100, 80), 1)
    palette = [0, 0, 0, *RED, *GREEN] + [0] * (256 * 3 - 9)
    image.putpalette(palette)
    image.paste(2, (0, 0, 50, 80))  # left half green, right half red
    if transparent:
        image.paste(0, (0, 0, 20, 20))  # index 0 is transparent
        image.info["transparency"] = 0
    return image


def test_palette_png_without_transparency(tmp_path):
    path = tmp_path / "palette.png"
    _palette_image(False).save(path)
    assert Image.open(path).mode == "P"
    loaded = load_photo(path)
    assert loaded.rgb.shape == (80, 100, 3) and loaded.rgb.dtype == np.uint8
    assert tuple(loaded.rgb[40, 10]) == GREEN and tuple(loaded.rgb[40, 90]) == RED
    assert loaded.alpha is None


def test_palette_png_with_transparency_returns_alpha(tmp_path):
    path = tmp_path / "palette_alpha.png"
    _palette_image(True).save(path, transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    loaded = load_photo(path)
    assert loaded.rgb.shape == (80, 100, 3)
    assert tuple(loaded.rgb[40, 10]) == GREEN and tuple(loaded.rgb[40, 90]) == RED
    assert loaded.alpha is not None and loaded.alpha.shape == (80, 100)
    assert loaded.alpha[5, 5] == 0 and loaded.alpha[40, 90] == 255


def test_rgba_with_transparency_returns_alpha(tmp_path):
    path = tmp_path / "cutout.png"
    pixels = np.zeros((80, 100, 4), np.uint8)
    pixels[..., :3] = BLUE
    pixels[20:60, 30:70, 3] = 255
    Image.fromarray(pixels, "RGBA").save(path)
    loaded = load_photo(path)
    assert loaded.rgb.shape == (80, 100, 3) and loaded.rgb.dtype == np.uint8
    assert tuple(loaded.rgb[40, 50]) == BLUE
    assert loaded.alpha is not None
    assert loaded.alpha[40, 50] == 255 and loaded.alpha[0, 0] == 0


def test_opaque_rgba_has_no_alpha(tmp_path):
    path = tmp_path / "opaque.png"
    _solid("RGBA", (100, 80), (*GREEN, 255)).save(path)
    loaded = load_photo(path)
    assert loaded.alpha is None
    assert loaded.rgb.shape == (80, 100, 3) and tuple(loaded.rgb[10, 10]) == GREEN


@pytest.mark.parametrize("orientation, red_corner", [(6, "top_right"), (8, "bottom_left")])
def test_exif_rotated_jpeg_is_turned_upright(tmp_path, orientation, red_corner):
    # Stored 160 wide x 96 high, red block in the stored top-left corner, blue elsewhere.
    stored = Image.new("RGB", (160, 96), BLUE)
    stored.paste(RED, (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"rotated_{orientation}.jpg"
    path.write_bytes(_jpeg_bytes(stored, exif=exif.tobytes()))
    loaded = load_photo(path)
    height, width = loaded.rgb.shape[:2]
    assert (width, height) == (96, 160)  # displayed upright: width and height swapped
    corners = {"top_left": loaded.rgb[5, 5], "top_right": loaded.rgb[5, width - 6],
               "bottom_left": loaded.rgb[height - 6, 5], "bottom_right": loaded.rgb[height - 6, width - 6]}
    for name, pixel in corners.items():
        assert _close(pixel, RED if name == red_corner else BLUE, 12), (name, pixel)


@pytest.mark.parametrize("size", [(63, 200), (200, 40), (10, 10)])
def test_tiny_photo_is_bad_input_naming_the_minimum(tmp_path, size):
    path = tmp_path / "tiny.png"
    _solid("RGB", size, RED).save(path)
    with pytest.raises(BadInput) as info:
        load_photo(path)
    assert str(path) in str(info.value)
    assert "64 px minimum" in info.value.reason
    assert f"{size[0]}x{size[1]}" in info.value.reason


def test_photo_at_the_minimum_side_loads(tmp_path):
    path = tmp_path / "small.png"
    _solid("RGB", (64, 64), RED).save(path)
    assert load_photo(path).rgb.shape == (64, 64, 3)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_huge_photo_is_downscaled_with_a_warning(tmp_path, fmt):
    # 7100 x 7100 = 50.4 MP, just above the 50 MP limit; a solid colour keeps the file small.
    path = tmp_path / f"huge.{fmt.lower()}"
    image = Image.new("RGB", (7100, 7100), BLUE)
    image.save(path, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {"quality": 90}))
    del image
    loaded = load_photo(path)
    assert max(loaded.rgb.shape[:2]) <= 2048
    assert loaded.rgb.shape == (2048, 2048, 3) and loaded.rgb.dtype == np.uint8
    assert _close(loaded.rgb[1000, 1000], BLUE, 3)
    assert any(str(path) in note and "50 MP limit" in note for note in loaded.warnings), loaded.warnings


# ---------------------------------------------------------------- 2. concepts
def test_empty_concept_folder_is_reported_and_others_discovered(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    make_concepts(concepts_dir, {"red_ball": [("ellipse", RED)], "blue box": [("rect", BLUE)]})
    (concepts_dir / "empty one").mkdir()
    concepts, problems = _discover(concepts_dir)
    assert [c.key for c in concepts] == ["blue_box", "red_ball"]
    reasons = _problems_for(problems, "empty one")
    assert reasons and "no usable images" in reasons[0]


def test_unicode_and_space_names_get_safe_keys_and_keep_their_names(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    folder = concepts_dir / "café mug"
    folder.mkdir(parents=True)
    object_photo("rect", RED).save(folder / "fötö 1.png")
    object_photo("rect", GREEN, seed=1).save(folder / "fötö 2.png")
    concepts, problems = _discover(concepts_dir)
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
    concepts, problems = _discover(concepts_dir)
    assert [c.key for c in concepts] == ["red_ball"]
    reasons = _problems_for(problems, "linked")
    assert reasons and "outside the data directory" in reasons[0]
    with pytest.raises(BadInput):
        ensure_inside(concepts_dir, concepts_dir / "linked")


def test_symlinked_photo_outside_is_refused(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    make_concepts(concepts_dir, {"red_ball": [("ellipse", RED)]})
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    object_photo("rect", BLUE).save(outside / "secret.png")
    (concepts_dir / "red_ball" / "linked.png").symlink_to(outside / "secret.png")
    concepts, problems = _discover(concepts_dir)
    (concept,) = concepts
    assert [p.name for p in concept.photos] == ["photo 0.png"]
    reasons = _problems_for(problems, "linked.png")
    assert reasons and "outside the data directory" in reasons[0]


def test_symlinked_concepts_root_is_allowed(tmp_path):
    # The concepts folder itself may be a link (e.g. to a shared dataset).
    real = tmp_path / "shared" / "concepts"
    make_concepts(real, {"red_ball": [("ellipse", RED)]})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "concepts").symlink_to(real, target_is_directory=True)
    concepts, problems = _discover(tmp_path / "data" / "concepts")
    assert [c.key for c in concepts] == ["red_ball"] and problems == []


def test_two_folders_with_the_same_key_report_the_second(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    make_concepts(concepts_dir, {"a b": [("rect", RED)], "a_b": [("rect", BLUE)], "c": [("rect", GREEN)]})
    concepts, problems = _discover(concepts_dir)
    assert [(c.key, c.name) for c in concepts] == [("a_b", "a b"), ("c", "c")]
    reasons = _problems_for(problems, "a_b")
    assert reasons and "already used" in reasons[0] and "'a b'" in reasons[0]
    assert not _problems_for(problems, "a b")


def test_non_image_files_are_reported_and_ignored(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    make_concepts(concepts_dir, {"red_ball": [("ellipse", RED)]})
    (concepts_dir / "red_ball" / "notes.txt").write_text("not a photo")
    (concepts_dir / "red_ball" / ".DS_Store").write_bytes(b"\0\1")  # hidden files are skipped silently
    concepts, problems = _discover(concepts_dir)
    assert [p.name for p in concepts[0].photos] == ["photo 0.png"]
    reasons = _problems_for(problems, "notes.txt")
    assert reasons and ".txt" in reasons[0] and "ignored" in reasons[0]
    assert not _problems_for(problems, ".DS_Store")


def test_bad_photos_are_reported_and_the_good_ones_kept(tmp_path):
    concepts_dir = tmp_path / "data" / "concepts"
    make_concepts(concepts_dir, {"red_ball": [("ellipse", RED), ("ellipse", GREEN)], "only_bad": []})
    (concepts_dir / "only_bad").mkdir(exist_ok=True)
    _write_unreadable(concepts_dir / "only_bad" / "junk.jpg")
    _truncate(concepts_dir / "red_ball" / "photo 1.png")
    _solid("RGB", (30, 30), RED).save(concepts_dir / "red_ball" / "tiny.png")
    concepts, problems = _discover(concepts_dir)
    assert [c.key for c in concepts] == ["red_ball"]
    assert [p.name for p in concepts[0].photos] == ["photo 0.png"]
    assert "truncated" in _problems_for(problems, "photo 1.png")[0]
    assert "64 px minimum" in _problems_for(problems, "tiny.png")[0]
    assert "not a readable image" in _problems_for(problems, "junk.jpg")[0]
    assert "no usable images" in _problems_for(problems, "only_bad")[0]


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
    concepts, problems = _discover(concepts_dir)
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


# ---------------------------------------------------------------- 3. tokens and proposals
def _config(data: Path, **proposal) -> PipelineConfig:
    return PipelineConfig(data_dir=str(data), proposal=proposal)


def test_adding_a_concept_keeps_existing_token_indices(tmp_path):
    data = tmp_path / "data"
    make_concepts(data / "concepts", {"cat": [("ellipse", RED)], "mug": [("rect", BLUE)], "vase": [("rect", GREEN)]})
    config = _config(data, max_compositions=3)
    first = build_registry(config, {})
    tokens = {c["key"]: c["token_index"] for c in first["concepts"]}
    assert sorted(tokens.values()) == [1, 2, 3]
    comp_tokens = {c["key"]: c["token_index"] for c in first["compositions"]}
    # A new concept whose name sorts first must not shift anyone's index.
    make_concepts(data / "concepts", {"aardvark": [("triangle", GREEN)]})
    second = build_registry(_config(data, max_compositions=8), first)
    new_tokens = {c["key"]: c["token_index"] for c in second["concepts"]}
    assert {k: new_tokens[k] for k in tokens} == tokens
    assert new_tokens["aardvark"] == 4
    for comp in second["compositions"]:
        if comp["key"] in comp_tokens:
            assert comp["token_index"] == comp_tokens[comp["key"]]
    assert len({c["token_index"] for c in second["compositions"]}) == len(second["compositions"])
    # A removed concept's token is retired, never handed to the next new one.
    for photo in (data / "concepts" / "mug").iterdir():
        photo.unlink()
    (data / "concepts" / "mug").rmdir()
    third = build_registry(_config(data, max_compositions=8), second)
    assert third["retired_concept_tokens"] == {"mug": tokens["mug"]}
    make_concepts(data / "concepts", {"zebra": [("rect", RED)]})
    fourth = build_registry(_config(data, max_compositions=8), third)
    indices = {c["key"]: c["token_index"] for c in fourth["concepts"]}
    assert indices["zebra"] == 5 and indices["cat"] == tokens["cat"] and indices["aardvark"] == 4


def test_propose_compositions_is_deterministic_and_covers_every_concept():
    keys = [f"concept_{i}" for i in range(9)]
    shuffled = keys[:]
    random.Random(3).shuffle(shuffled)
    first = propose_compositions(keys, [2, 3], budget=len(keys))
    assert first == propose_compositions(shuffled, [2, 3], budget=len(keys))
    assert first == propose_compositions(keys + keys[:2], [3, 2], budget=len(keys))
    assert len(first) == len(keys) == len(set(first))
    assert {k for comp in first for k in split_composition(comp)} == set(keys)
    assert {len(split_composition(c)) for c in first} == {2, 3}
    for budget in (1, 3, 5, 20):
        chosen = propose_compositions(keys, [2, 3], budget)
        assert len(chosen) == budget and len(set(chosen)) == budget
        assert all(len(split_composition(c)) in (2, 3) for c in chosen)
    # Fewer possible compositions than the budget: all of them, once.
    assert propose_compositions(["a", "b", "c"], [2, 3], 100) == ["a+b", "a+b+c", "a+c", "b+c"]
    assert propose_compositions(["a"], [2, 3], 5) == []


def test_explicit_compositions_are_honoured_and_unknown_concepts_dropped():
    keys = ["cat", "mug", "vase"]
    chosen = propose_compositions(keys, [2, 3], 1, explicit=["mug+cat", "vase+unicorn", "cat+mug+vase"])
    assert chosen == ["cat+mug", "cat+mug+vase"]


def test_explicit_compositions_through_the_registry(tmp_path):
    data = tmp_path / "data"
    make_concepts(data / "concepts", {"cat": [("ellipse", RED)], "mug": [("rect", BLUE)]})
    registry = build_registry(_config(data, explicit=["mug+cat", "cat+ghost"]), {})
    assert [c["key"] for c in registry["compositions"]] == ["cat+mug"]
    assert registry["compositions"][0]["concepts"] == ["cat", "mug"]


# ---------------------------------------------------------------- 4. atomic writes
@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch, error):
    target = tmp_path / "out" / "manifest.json"
    atomic_write_bytes(target, b"old content")

    def failing_replace(src, dst):
        raise error

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(type(error)):
        atomic_write_bytes(target, b"new content that never lands")
    monkeypatch.undo()
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in target.parent.iterdir()) == ["manifest.json"]


def test_failed_first_atomic_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "new.png"

    def failing_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"x" * 1000)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 5. through Dagster
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
    _truncate(broken)
    (concepts_dir / "empty_concept").mkdir()
    (concepts_dir / "all_bad").mkdir()
    _write_unreadable(concepts_dir / "all_bad" / "junk.jpg")
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
    assert any("truncated" in r for r in _problems_for(problems, "red_ball/broken.png"))
    assert any("no usable images" in r for r in _problems_for(problems, "empty_concept"))
    assert any("no usable images" in r for r in _problems_for(problems, "all_bad"))
    assert any("not a readable image" in r for r in _problems_for(problems, "all_bad/junk.jpg"))
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
    _truncate(concepts_dir / "blue box" / "photo 1.png")

    instance, summary = _run(config_file, instance)  # same instance: the run history goes on
    assert not summary.failed, summary.failed
    assert sorted(instance.get_dynamic_partitions("concepts")) == sorted(good)
    registry = json.loads((data / "build" / "concepts.json").read_text(encoding="utf-8"))
    blue = next(c for c in registry["concepts"] if c["key"] == "blue_box")
    assert [p["name"] for p in blue["photos"]] == ["photo 0.png"]
    assert any("truncated" in r for r in _problems_for(registry["problems"], "blue box/photo 1.png"))
    assert any("truncated" in r for r in _problems_for(registry["problems"], "red_ball/broken.png"))
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
