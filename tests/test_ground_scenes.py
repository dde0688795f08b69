"""Scenes with a ground plane in the pipeline: scene recipes, objects composed standing in them,
and the embedded repainter keeping such a composite."""
import json
import math

import numpy as np
import pytest

from gen4gen.compose import Cutout, compose
from gen4gen.config import CompositionConfig, RecolourConfig
from gen4gen.ground_plane import GroundScene
from gen4gen.io import BadInput
from gen4gen.recolour import RepaintRequest, SceneBankRepainter, in_scene
from gen4gen.scenes import (BUILTIN_SCENES, TOP_DOWN_TEXTURE_PHOTOS, SceneSpec, discover_scene_bank, ground_scene,
                            plan_ground)


def _recipe(name: str, canvas: int = 256, seed: int = 0) -> dict:
    spec = next(s for s in BUILTIN_SCENES if s.name == name)
    return plan_ground(spec, canvas, np.random.default_rng(seed))


@pytest.mark.parametrize("spec", BUILTIN_SCENES, ids=lambda s: s.name)
def test_every_builtin_scene_has_a_floor_and_no_upright_texture(spec):
    for seed in range(4):
        recipe = plan_ground(spec, 256, np.random.default_rng(seed))
        scene = ground_scene(recipe, 256)
        assert json.loads(json.dumps(recipe)) == recipe  # recorded in the layout as it is
        assert 0 < scene.horizon_y <= scene.floor_top_y < 256
        assert math.hypot(*scene.light_direction) == pytest.approx(1.0, abs=1e-5)
        assert scene.light_direction[1] > 0  # shadows fall a little towards the viewer
        # A top-down texture is only ever the floor: never the scene's upright part.
        assert recipe["photo"] in TOP_DOWN_TEXTURE_PHOTOS or recipe["floor"] in TOP_DOWN_TEXTURE_PHOTOS
        assert recipe["kind"] in ("floor_texture", "backdrop")
        # Same recipe, same pixels (cached renders are not changed by a caller).
        scene.image[:] = 0
        assert np.array_equal(ground_scene(recipe, 256).image, ground_scene(dict(recipe), 256).image)
        assert ground_scene(recipe, 256).image.any()


def test_lawn_is_a_sky_over_a_receding_lawn():
    scene = ground_scene(_recipe("lawn"), 256)
    sky, lawn = scene.image[:scene.horizon_y - 4].astype(int), scene.image[scene.horizon_y + 40:].astype(int)
    assert (sky[..., 2] > sky[..., 1]).mean() > 0.95  # blue above
    assert (lawn[..., 1] > lawn[..., 2]).mean() > 0.95  # green below
    brick = ground_scene(_recipe("brick_wall"), 256)
    assert brick.floor_top_y > brick.horizon_y  # the wall stands on the floor, some way back


def test_scene_bank_sidecar_annotates_a_real_photo_and_guesses_are_recorded(tmp_path):
    from PIL import Image

    for name, sidecar in (("beach", {"horizon": 0.4, "floor_top": 0.5}), ("street", None)):
        folder = tmp_path / "backgrounds" / name
        folder.mkdir(parents=True)
        Image.fromarray(np.full((200, 300, 3), (10, 200, 250), np.uint8)).save(folder / "b.png")
        if sidecar:
            (folder / "scene.json").write_text(json.dumps(sidecar))
    beach, street = discover_scene_bank(tmp_path / "backgrounds", [".png"])
    assert (beach.horizon, beach.floor_top, street.horizon) == (0.4, 0.5, None)
    annotated = plan_ground(beach, 100, np.random.default_rng(0))
    assert annotated["kind"] == "photo" and (annotated["horizon_y"], annotated["floor_top_y"]) == (40, 50)
    assert not any("horizon" in g for g in annotated["guessed"])
    guessed = plan_ground(street, 100, np.random.default_rng(0))
    assert any("horizon at 0.45" in g for g in guessed["guessed"]) and any("not annotated" in g
                                                                           for g in guessed["guessed"])
    assert (ground_scene(guessed, 100).image == (10, 200, 250)).all()
    (tmp_path / "backgrounds" / "street" / "scene.json").write_text('{"horizon": 2}')
    with pytest.raises(BadInput, match=r"scene\.json: horizon must be a fraction"):
        discover_scene_bank(tmp_path / "backgrounds", [".png"])


def _object(height: int, width: int, colour) -> Cutout:
    import cv2

    alpha = np.zeros((height, width), np.uint8)
    cv2.ellipse(alpha, (width // 2, height // 2), (width // 2 - 1, height // 2 - 1), 0, 0, 360, 255, -1)
    rgb = np.full((height, width, 3), colour, np.uint8)
    return Cutout("c", "c/p.png", np.dstack([rgb, alpha]), 0.78)


def test_objects_stand_in_the_scene_with_shadows_on_the_floor():
    canvas = 256
    image = np.full((canvas, canvas, 3), 150, np.uint8)
    image[:100] = (120, 160, 220)
    scene = GroundScene(image, horizon_y=90, floor_top_y=100, light_direction=(0.8, 0.6), source="test")
    cutouts = [_object(60, 50, (200, 40, 40)), _object(90, 70, (40, 40, 200))]
    boxes = [(30, 60, 80, 120), (120, 150, 190, 240)]  # a far one (base 120), a near one (base 240)
    config = CompositionConfig(max_rotation_degrees=0.0, max_shift_fraction=0.0, flip_probability=0.0)
    result = compose(cutouts, boxes, canvas, np.random.default_rng(3), config, scene)
    again = compose(cutouts, boxes, canvas, np.random.default_rng(3), config, scene)
    assert np.array_equal(result.rgb, again.rgb)
    assert np.array_equal(scene.image, image)  # the scene itself is not painted on
    for inst, box in zip(result.instances, boxes):
        shadow = inst.shadow
        assert inst.pasted_box == box and shadow["base_y"] == box[3]  # standing on its box's bottom edge
        assert shadow["region"][1] >= scene.floor_top_y  # on the floor only
        assert shadow["offset"][0] > 0 and shadow["offset"][1] > 0  # along the one light direction
        cx, cy = shadow["centre"]
        assert box[0] <= cx <= box[2] + shadow["offset"][0] and abs(cy - box[3]) <= shadow["axes"][1] + shadow["offset"][1]
        below = result.rgb[box[3]:box[3] + 2, box[0] + 10:box[2] - 10].astype(int).mean()
        assert below < 150 - 10  # darker than the bare floor just under the base
    untouched = np.ones((canvas, canvas), bool)
    for inst in result.instances:
        x0, y0, x1, y1 = inst.shadow["region"]
        untouched[y0:y1, x0:x1] = False
        untouched &= ~inst.visible_mask
    assert np.array_equal(result.rgb[untouched], image[untouched])  # the rest of the scene as it was


def test_the_embedded_repainter_keeps_a_composite_in_its_scene_and_fills_objects_on_black():
    size = 128
    on_black = np.zeros((size, size, 3), np.uint8)
    on_black[40:90, 40:90] = (250, 10, 10)
    mask = np.zeros((size, size), np.uint8)
    mask[40:90, 40:90] = 255
    repainter = SceneBankRepainter(list(BUILTIN_SCENES), RecolourConfig())
    black = RepaintRequest(on_black, mask, "p", "", seed=3, scene="lawn")
    in_its_scene = ground_scene(_recipe("lawn", size), size).image
    in_its_scene[40:90, 40:90] = (250, 10, 10)
    composed = RepaintRequest(in_its_scene, mask, "p", "", seed=3, scene="lawn")
    assert not in_scene(black) and in_scene(composed)
    (kept, info), (filled, filled_info) = repainter.repaint([composed, black])
    assert info["background_photo"] is None and info["harmonisation"] == "lab (local, in scene)"
    # The scene is kept; the object is harmonised locally: a little greener on the lawn, still red.
    outside = np.ones((size, size), bool)
    outside[38:92, 38:92] = False
    assert np.array_equal(kept[outside], in_its_scene[outside])
    r, g, b = kept[50:80, 50:80].reshape(-1, 3).mean(0)
    assert r > g + 100 and g > 10
    (unchanged, _), = SceneBankRepainter(list(BUILTIN_SCENES), RecolourConfig(harmonisation="none")).repaint([composed])
    assert np.array_equal(unchanged, in_its_scene)
    assert filled_info["background_photo"] == "pkg:skimage_grass"
    # The background drawn for objects on black is an upright scene: sky above, lawn below.
    assert filled[:10, :, 2].mean() > filled[:10, :, 1].mean() and filled[-10:, :, 1].mean() > filled[-10:, :, 2].mean()


def test_a_user_scene_without_photos_is_refused_with_its_name():
    with pytest.raises(ValueError, match="'empty' has no photo"):
        plan_ground(SceneSpec("empty", "an empty scene"), 64, np.random.default_rng(0))
