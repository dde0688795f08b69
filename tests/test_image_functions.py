"""Pure image, caption and check functions, without Dagster."""
from __future__ import annotations

import numpy as np
import pytest

from gen4gen.captions import CaptionObject, count_phrase, prompt_strategies, retell, spatial_relations
from gen4gen.compose import compose, crop_cutout
from gen4gen.config import CompositionConfig, FilterConfig, RecolourConfig
from gen4gen.filtering import check_image
from gen4gen.recolour import RepaintRequest, SceneBankRepainter, feather_mask, harmonise_lab
from gen4gen.scenes import BUILTIN_SCENES


def _square_cutout(colour, size=(40, 80)):
    h, w = size
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = 255
    return rgba


NO_AUGMENT = CompositionConfig(flip_probability=0.0, max_rotation_degrees=0.0, max_shift_fraction=0.0)


def test_crop_cutout_crops_to_mask_and_measures_fill():
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[20:60, 30:50] = (10, 20, 30, 255)
    cut = crop_cutout("c", "photo.png", rgba)
    assert cut.rgba.shape == (40, 20, 4) and cut.mask_fill == 1.0 and cut.aspect == pytest.approx(0.5)
    with pytest.raises(ValueError, match="photo.png"):
        crop_cutout("c", "photo.png", np.zeros((10, 10, 4), np.uint8))


def test_compose_places_objects_in_their_boxes_standing_on_the_bottom():
    red = crop_cutout("red", "r.png", _square_cutout((255, 0, 0), (50, 25)))
    blue = crop_cutout("blue", "b.png", _square_cutout((0, 0, 255), (20, 20)))
    boxes = [(10, 40, 60, 140), (150, 160, 190, 200)]
    result = compose([red, blue], boxes, 256, np.random.default_rng(0), NO_AUGMENT)
    red_inst, blue_inst = result.instances
    # Aspect kept (1:2) inside the 50x100 box, centred, bottom edge on the box's bottom.
    assert red_inst.box == (10, 40, 60, 140)
    assert blue_inst.box == (150, 160, 190, 200)
    assert (result.rgb[red_inst.visible_mask] == (255, 0, 0)).all()
    assert (result.rgb[blue_inst.visible_mask] == (0, 0, 255)).all()
    assert result.alpha[~(red_inst.visible_mask | blue_inst.visible_mask)].max() == 0
    assert red_inst.stats["visible_fraction"] == 1.0 and red_inst.stats["inside_fraction"] == 1.0


def test_compose_occlusion_and_truncation_statistics():
    back = crop_cutout("back", "a.png", _square_cutout((0, 255, 0), (60, 60)))
    front = crop_cutout("front", "b.png", _square_cutout((255, 0, 0), (60, 60)))
    edge = crop_cutout("edge", "c.png", _square_cutout((0, 0, 255), (40, 40)))
    # "front" stands lower (nearer), overlapping part of "back"; "edge" hangs off the canvas.
    boxes = [(40, 40, 100, 100), (70, 50, 130, 110), (236, 100, 276, 140)]
    result = compose([back, front, edge], boxes, 256, np.random.default_rng(0), NO_AUGMENT)
    stats = {i.concept: i.stats for i in result.instances}
    assert stats["front"]["visible_fraction"] == 1.0
    # Overlap 30x50 px of the 60x60 back object: 1 - 1500/3600 visible.
    assert stats["back"]["visible_fraction"] == pytest.approx(1 - 1500 / 3600, abs=0.01)
    assert stats["edge"]["inside_fraction"] == pytest.approx(0.5, abs=0.02)


def test_compose_augmentations_are_seeded_and_bounded():
    part = crop_cutout("p", "p.png", _square_cutout((200, 100, 0), (60, 30)))
    config = CompositionConfig()
    first = compose([part], [(100, 100, 130, 160)], 256, np.random.default_rng(5), config)
    again = compose([part], [(100, 100, 130, 160)], 256, np.random.default_rng(5), config)
    other = compose([part], [(100, 100, 130, 160)], 256, np.random.default_rng(6), config)
    assert np.array_equal(first.rgb, again.rgb)
    aug = first.instances[0].augmentation
    assert abs(aug.rotation) <= 5.0 and all(abs(s) <= 0.01 * 256 + 0.5 for s in aug.shift)
    assert (first.instances[0].augmentation != other.instances[0].augmentation) or not np.array_equal(first.rgb, other.rgb)


def test_feather_mask_follows_the_paper():
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 255
    weight = feather_mask(mask, radius=5, low=127.5)
    assert weight[20, 20] == 1.0 and weight[0, 0] == 0.0
    # The edge fades inside the object (rescaling from 127.5 removes the outer half of the blur).
    assert 0.0 <= weight[10, 20] < 0.5 and weight[9, 20] == 0.0


def test_lab_harmonisation_moves_objects_towards_the_background():
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = (60, 60, 200)
    background = np.full((64, 64, 3), (230, 170, 60), np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    out = harmonise_lab(image, background, [mask], strength=0.5)
    before = np.abs(image[mask].astype(int) - background[mask]).mean()
    after = np.abs(out[mask].astype(int) - background[mask]).mean()
    assert after < before * 0.85
    assert np.array_equal(out[~mask], image[~mask])
    assert np.array_equal(harmonise_lab(image, background, [mask], strength=0.0), image)


def test_scene_bank_fills_background_and_keeps_objects():
    size = 128
    image = np.zeros((size, size, 3), np.uint8)
    image[40:90, 40:90] = (250, 10, 10)
    mask = np.zeros((size, size), np.uint8)
    mask[40:90, 40:90] = 255
    config = RecolourConfig(harmonisation="none")
    repainter = SceneBankRepainter(list(BUILTIN_SCENES), config)
    request = RepaintRequest(image, mask, "a realistic photo of a lawn", "", seed=3, scene="lawn")
    (out, info), = repainter.repaint([request])
    assert info["background_photo"] == "pkg:skimage_grass"
    assert (out[60:70, 60:70] == (250, 10, 10)).all()  # object interior untouched
    assert out[:20, :20].std() > 3 and not (out[:20, :20] == 0).all()  # background is a photo, not black
    (again, _), = repainter.repaint([request])
    assert np.array_equal(out, again)


def test_user_scene_bank_is_used(tmp_path):
    from PIL import Image

    from gen4gen.scenes import discover_scene_bank

    folder = tmp_path / "backgrounds" / "sunny_beach"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((80, 120, 3), (10, 200, 250), np.uint8)).save(folder / "b.png")
    scenes = discover_scene_bank(tmp_path / "backgrounds", [".png"])
    assert [(s.name, s.prompt, s.setting) for s in scenes] == [("sunny_beach", "sunny beach", "outdoor")]
    repainter = SceneBankRepainter(scenes, RecolourConfig())
    background, source = repainter.background_for("sunny_beach", 64, np.random.default_rng(0))
    assert source.endswith("b.png") and (background == (10, 200, 250)).all()
    assert discover_scene_bank(tmp_path / "none", [".png"]) == list(BUILTIN_SCENES)


def _objects():
    return [CaptionObject("cat", "cat", "<new1>", (50, 500, 300, 900)),
            CaptionObject("mug", "coffee cup", "<new2>", (700, 600, 850, 800))]


def test_captions_name_every_concept_with_relations():
    caption = retell(_objects(), "a sunny lawn in a park", 1024)
    assert caption.startswith("A photo of a cat and a coffee cup in a sunny lawn in a park.")
    assert "The cat is on the left" in caption and "the coffee cup is on the right" in caption
    assert "The cat is the largest object" in caption
    tokens = retell(_objects(), "a park", 1024, use_tokens=True)
    assert "<new1> cat" in tokens and "<new2> coffee cup" in tokens


def test_depth_relation_and_counts():
    objects = [CaptionObject("a", "dog", "<new1>", (100, 300, 500, 700)),
               CaptionObject("b", "dog", "<new2>", (300, 400, 700, 950))]
    sentences = spatial_relations(objects, 1024)
    assert "The second dog is in front of the first dog." in sentences
    assert count_phrase(["dog", "dog", "cup"]) == "two dogs and a cup"
    assert count_phrase(["glass", "box", "puppy"]) == "a glass, a box and a puppy"


def test_prompt_strategies():
    prompts = prompt_strategies(_objects(), "a sunny lawn", "<comp3>")
    assert prompts["global_composition_token"] == "a photo of <comp3> with <new1> cat and <new2> coffee cup"
    assert prompts["repeated_concept_tokens"].count("<new1> cat") == 2
    assert prompts["repeated_concept_tokens"].count("<new2> coffee cup") == 2
    assert prompts["background_in_text"].endswith("in a sunny lawn")
    assert "lawn" not in prompts["global_composition_token"] and "lawn" not in prompts["repeated_concept_tokens"]


def _obj(name, **stats):
    base = {"visible_fraction": 1.0, "inside_fraction": 1.0, "area_fraction": 0.05, "mask_fill": 0.6,
            "frame_fraction": 0.3}
    base.update(stats)
    return {"concept": name, "stats": base}


@pytest.mark.parametrize("stats, code", [
    ({"visible_fraction": 0.3}, "occluded"),
    ({"inside_fraction": 0.8}, "truncated"),
    ({"area_fraction": 0.001}, "too_small"),
    ({"frame_fraction": 0.995}, "degenerate_mask"),
    ({"mask_fill": 0.01}, "degenerate_mask"),
])
def test_checks_reject_with_reasons(stats, code):
    outcome = check_image([_obj("ok"), _obj("bad", **stats)], FilterConfig())
    assert not outcome.accepted and outcome.codes == [code]
    assert outcome.reasons[0].startswith("bad:")
    assert outcome.scores["bad"][next(iter(stats))] == next(iter(stats.values()))


def test_checks_accept_good_images_and_follow_thresholds():
    assert check_image([_obj("a"), _obj("b")], FilterConfig()).accepted
    # A box seen head-on fills its bounding box completely and is still a good object.
    assert check_image([_obj("box", mask_fill=1.0, frame_fraction=0.4)], FilterConfig()).accepted
    strict = FilterConfig(min_area_fraction=0.1)
    assert check_image([_obj("a")], strict).codes == ["too_small"]
    assert check_image([], FilterConfig()).codes == ["no_objects"]
