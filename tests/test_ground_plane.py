"""Ground-plane scenes: floor warping, depth-consistent placement, shadows and per-object finishing."""
import math

import cv2
import numpy as np
import pytest

from gen4gen.compositing import (contact_shadow, decontaminate_edges, estimate_blur_sigma, estimate_noise_sigma,
                                 harmonise_local, match_blur_noise, paste_object)
from gen4gen.ground_plane import GroundScene, depth_scale, perspective_floor_scene, place_on_floor
from gen4gen.realism_checks import floating, implausible_scale
from gen4gen.size_priors import min_box_area, real_world_size

RED, YELLOW = (220, 40, 40), (230, 210, 40)


def striped_texture(size=256, period=64):
    """A top-down texture of red and yellow bands across (rows alternate every period / 2).

    Shifted by a quarter period, so bands keep their width across the mirror-tiling folds.
    """
    rows = ((np.arange(size) + period // 4) // (period // 2)) % 2
    texture = np.where(rows[:, None, None] == 0, np.array(RED, np.uint8), np.array(YELLOW, np.uint8))
    return np.ascontiguousarray(np.broadcast_to(texture, (size, size, 3)))


def flat_scene(size=512, horizon=200, floor_top=None, grey=150, light=(1.0, 0.0)):
    image = np.full((size, size, 3), grey, np.uint8)
    return GroundScene(image=image, horizon_y=horizon, floor_top_y=horizon if floor_top is None else floor_top,
                       light_direction=light, source="test", guessed=[])


# ---------------------------------------------------------------- the floor
def test_top_down_texture_becomes_a_receding_floor():
    scene = perspective_floor_scene(striped_texture(), None, size=512, horizon_frac=0.45, seed=3)
    image, horizon = scene.image, scene.horizon_y
    assert horizon == round(0.45 * 512) and scene.floor_top_y == horizon
    # Above the horizon nothing comes from the texture (red/yellow have blue 40; the sky is blue).
    assert image[:horizon, :, 2].min() > 150
    # The near floor is the texture (little haze there).
    near = image[horizon + 150:]
    assert near[..., 2].max() < 90 and near[..., 0].min() > 180
    # Bands are compressed towards the horizon: along a column, the gaps between colour changes
    # shrink going up (distance grows as 1 / (y - horizon)).
    green = image[horizon:, 256, 1].astype(int)  # 40 in a red band, 210 in a yellow one
    rows = np.flatnonzero((green < 90) | (green > 160))  # resolved rows (far bands blur to orange)
    colour = green[rows] > 160
    changes = rows[1:][colour[1:] != colour[:-1]] + horizon
    gaps = np.diff(changes)
    assert len(gaps) >= 5
    assert gaps[-1] >= 4 * gaps[0]  # bottom band at least 4x taller than the top resolved one
    assert np.all(np.diff(gaps) >= -1)  # never taller further up (1 px rounding)


def test_backdrop_fills_above_the_horizon_and_a_wall_stands_on_the_floor():
    blue = np.zeros((100, 150, 3), np.uint8)
    blue[..., 2] = 200
    scene = perspective_floor_scene(striped_texture(), blue, size=256, horizon_frac=0.4, seed=0)
    assert np.all(scene.image[:scene.horizon_y] == (0, 0, 200))
    assert np.all(scene.image[scene.horizon_y + 40:, :, 2] < 120)
    walled = perspective_floor_scene(striped_texture(), blue, size=256, horizon_frac=0.4, seed=0, wall_gap_frac=0.25)
    assert walled.floor_top_y == walled.horizon_y + round(0.25 * (256 - walled.horizon_y))
    assert np.all(walled.image[:walled.floor_top_y] == (0, 0, 200))
    assert np.all(walled.image[walled.floor_top_y:, :, 2] < 120)


def test_floor_scene_is_a_pure_function_of_its_inputs():
    texture = cv2.resize(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8), (256, 256))
    a = perspective_floor_scene(texture, None, size=256, seed=5)
    b = perspective_floor_scene(texture, None, size=256, seed=5)
    c = perspective_floor_scene(texture, None, size=256, seed=6)
    assert np.array_equal(a.image, b.image) and a.light_direction == b.light_direction
    assert not np.array_equal(a.image, c.image)
    assert math.hypot(*a.light_direction) == pytest.approx(1.0, abs=1e-5)
    assert a.guessed and a.describe()["horizon_y"] == a.horizon_y


# ---------------------------------------------------------------- depth and placement
def test_depth_scale_pinhole():
    assert depth_scale(1024, 461, 1024) == 1.0
    values = [depth_scale(y, 461, 1024) for y in range(462, 1025)]
    assert all(b > a for a, b in zip(values, values[1:]))
    assert depth_scale(461 + (1024 - 461) / 2, 461, 1024) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        depth_scale(461, 461, 1024)
    with pytest.raises(ValueError):
        depth_scale(300, 461, 1024)


@pytest.mark.parametrize("floor_top", [None, 300])
def test_placement_obeys_the_floor_over_many_seeds(floor_top):
    canvas = 512
    scene = flat_scene(canvas, horizon=230, floor_top=floor_top)
    classes = ["dog", "cat", "dog", "backpack"]
    heights = [real_world_size(c) for c in classes]
    aspects = [1.3, 0.9, 1.3, 0.8]
    min_px = math.sqrt(min_box_area(len(classes), canvas))
    for seed in range(150):
        placements = place_on_floor(heights, aspects, scene, canvas, np.random.default_rng(seed), min_box_px=min_px)
        assert [p.index for p in placements] == [0, 1, 2, 3]
        k = placements[0].scale / (placements[0].base_y - scene.horizon_y)
        for p in placements:
            x0, y0, x1, y1 = p.box
            assert y1 == p.base_y and scene.floor_top_y < p.base_y <= canvas  # standing on the floor
            assert 0 <= x0 < x1 <= canvas and y0 >= 0
            assert (x1 - x0) * (y1 - y0) >= min_px ** 2 - 1e-6
            # One camera for all: px per metre proportional to the distance below the horizon.
            assert p.scale / (p.base_y - scene.horizon_y) == pytest.approx(k, rel=1e-9)
            assert abs((y1 - y0) - p.scale * p.height_m) <= 0.5 + 1e-9
            assert p.depth_scale == pytest.approx(depth_scale(p.base_y, scene.horizon_y, canvas), abs=1e-6)
            assert floating(p.box, scene.floor_top_y) is None
        for a in placements:
            for b in placements:
                if a.base_y < b.base_y:  # a further back: fewer px per metre
                    assert a.scale < b.scale
                    if a.height_m == b.height_m:  # the two dogs: the one further back is not taller
                        assert a.box[3] - a.box[1] <= b.box[3] - b.box[1]
        # The realism check agrees: sizes match the priors after depth.
        observations = [(c, p.box[3] - p.box[1], h, p.depth_scale) for c, h, p in zip(classes, heights, placements)]
        assert implausible_scale(observations) is None


def test_placement_puts_small_objects_forward_when_sizes_differ_a_lot():
    canvas = 512
    scene = flat_scene(canvas, horizon=230)
    heights = [real_world_size("mug"), real_world_size("bicycle")]
    min_px = math.sqrt(min_box_area(2, canvas))
    for seed in range(30):
        mug, bike = place_on_floor(heights, [1.1, 1.6], scene, canvas, np.random.default_rng(seed),
                                   min_box_px=min_px, min_camera_height=0.1)
        assert mug.base_y > bike.base_y  # the mug is nearer: that is how it can be as big as the bicycle


def test_impossible_placement_is_refused():
    scene = flat_scene(512, horizon=230)
    with pytest.raises(ValueError, match="minimum box size"):
        place_on_floor([0.1, 12.0], [1.0, 1.5], scene, 512, np.random.default_rng(0),
                       min_box_px=math.sqrt(min_box_area(2, 512)))
    with pytest.raises(ValueError):
        place_on_floor([1.0], [1.0, 2.0], scene, 512, np.random.default_rng(0))


# ---------------------------------------------------------------- shadows
def _standing_object(canvas, box):
    """A box-sized alpha: an ellipse body standing on the box's bottom edge."""
    x0, y0, x1, y1 = box
    alpha = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.ellipse(alpha, ((x1 - x0) // 2, (y1 - y0) // 2), ((x1 - x0) // 2 - 1, (y1 - y0) // 2 - 1), 0, 0, 360, 255, -1)
    rgb = np.full(alpha.shape + (3,), (200, 60, 50), np.uint8)
    return paste_object(canvas, rgb, alpha, box), alpha


@pytest.mark.parametrize("light", [(1.0, 0.25), (-1.0, 0.25)])
def test_contact_shadow_lies_under_the_object_on_the_floor(light):
    scene = flat_scene(512, horizon=200, floor_top=260, light=light)
    box = (200, 250, 300, 400)
    canvas, alpha = _standing_object(scene.image, box)
    shaded, record = contact_shadow(canvas, alpha, box, scene.light_direction, floor_top_y=scene.floor_top_y)
    cx, cy = record.centre
    a, b = record.axes
    assert record.base_y == box[3]  # the ellipse touches the box's bottom row
    assert abs(cy - record.base_y) <= b + abs(record.offset[1]) + 1e-6  # hangs from the base
    assert box[0] - abs(record.offset[0]) <= cx <= box[2] + abs(record.offset[0])
    assert np.sign(cx - 250) == np.sign(light[0])  # shifted along the scene's one light direction
    changed = np.any(shaded != canvas, axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 100
    assert ys.min() >= scene.floor_top_y  # on the floor only
    assert not changed[250:400, 200:300][alpha == 255].any()  # the object itself is untouched
    # Darkest just below the base, nothing far away.
    below = shaded[400:404, 215:285].astype(int).sum() < canvas[400:404, 215:285].astype(int).sum() - 500
    assert below and not changed[:, :100].any() and not changed[470:].any()
    # Mass of the darkening on the light's side of the footprint centre.
    darkening = (canvas.astype(int) - shaded.astype(int)).sum(axis=2)[changed]
    assert np.sign((xs * darkening).sum() / darkening.sum() - 250) == np.sign(light[0])


def test_contact_shadow_spares_rows_above_the_floor():
    scene = flat_scene(512, horizon=200, floor_top=300)
    box = (200, 150, 300, 302)  # stands right at the wall's foot
    canvas, alpha = _standing_object(scene.image, box)
    shaded, record = contact_shadow(canvas, alpha, box, (0.0, 1.0), floor_top_y=300)
    assert record.region[1] >= 300
    assert np.array_equal(shaded[:300], canvas[:300])
    assert np.any(shaded[300:] != canvas[300:])


# ---------------------------------------------------------------- colour, edges, camera
def test_harmonise_local_follows_the_surroundings_not_the_whole_scene():
    scene = np.zeros((400, 800, 3), np.uint8)
    scene[:, :400] = 40  # a dark half
    scene[:, 400:] = 215  # a bright half
    rng = np.random.default_rng(0)
    obj = np.clip(128 + rng.normal(0, 20, (80, 60, 3)), 0, 255).astype(np.uint8)
    alpha = np.full((80, 60), 255, np.uint8)

    def lightness(rgb):
        return cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)[..., 0].mean()

    dark_box, bright_box = (150, 160, 210, 240), (590, 160, 650, 240)
    before = lightness(obj)
    in_dark = lightness(harmonise_local(obj, alpha, scene, dark_box, strength=0.5))
    in_bright = lightness(harmonise_local(obj, alpha, scene, bright_box, strength=0.5))
    dark_l, bright_l = lightness(scene[:10, :10]), lightness(scene[:10, -10:])
    assert in_dark < before < in_bright
    # Partial: about half-way to the surroundings (strength 0.5), not all the way.
    assert in_dark - before == pytest.approx(0.5 * (dark_l - before), rel=0.1)
    assert in_bright - before == pytest.approx(0.5 * (bright_l - before), rel=0.1)


def test_harmonise_keeps_the_object_colour():
    grass = np.zeros((300, 300, 3), np.uint8)
    grass[...] = (60, 160, 50)
    red = np.full((60, 60, 3), (200, 40, 40), np.uint8)
    out = harmonise_local(red, np.full((60, 60), 255, np.uint8), grass, (120, 120, 180, 180), strength=0.5,
                          colour_strength=0.15)
    r, g, b = out.reshape(-1, 3).mean(0)
    assert r > g + 80 and r > b + 80  # still clearly red on green grass


def test_decontamination_removes_a_green_screen_fringe():
    size, red, green = 160, np.array([200, 40, 40], np.float32), np.array([0, 255, 0], np.float32)
    big = np.zeros((size * 4, size * 4), np.uint8)
    cv2.circle(big, (size * 2, size * 2), size * 2 - 40, 255, -1)
    alpha = cv2.GaussianBlur(cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA), (0, 0), 1.5)
    a = alpha[..., None].astype(np.float32) / 255
    rgb = np.clip(a * red + (1 - a) * green + 0.5, 0, 255).astype(np.uint8)  # matted on a green screen
    fringe = (alpha > 10) & (alpha < 250)
    assert fringe.sum() > 300

    def green_excess(image):
        f = image.astype(np.float32)
        excess = np.clip(f[..., 1] - (f[..., 0] + f[..., 2]) / 2, 0, None)
        return float((excess * alpha / 255)[fringe].sum())

    clean = decontaminate_edges(rgb, alpha)
    assert green_excess(clean) < 0.2 * green_excess(rgb)
    assert np.array_equal(clean[alpha >= 250], rgb[alpha >= 250])  # the opaque interior is untouched
    # Composited onto grey, the edge no longer glows green.
    grey = np.full_like(rgb, 128)
    before = rgb * a + grey * (1 - a)
    after = clean * a + grey * (1 - a)
    ring = fringe & (alpha < 128)
    assert (after[ring, 1] - after[ring, 0]).mean() < (before[ring, 1] - before[ring, 0]).mean() - 30


def _textured(shape, sigma_noise, rng, blur=0.0):
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    base = (((x // 24) + (y // 24)) % 2 * 120 + 60).astype(np.float32)
    image = np.dstack([base, base * 0.8, base * 0.6])
    if blur:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    image = image + rng.normal(0, sigma_noise, image.shape) if sigma_noise else image
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def test_match_noise_brings_a_clean_object_to_the_scene_noise():
    rng = np.random.default_rng(0)
    scene = _textured((400, 400), 6.0, rng)
    obj = np.full((120, 100, 3), (150, 120, 90), np.uint8)
    alpha = np.full((120, 100), 255, np.uint8)
    assert estimate_noise_sigma(scene) == pytest.approx(6.0, rel=0.1)
    out = match_blur_noise(obj, alpha, scene, (150, 200, 250, 320), np.random.default_rng(1))
    assert estimate_noise_sigma(out) == pytest.approx(6.0, rel=0.15)
    assert np.abs(out.reshape(-1, 3).mean(0) - (150, 120, 90)).max() < 1.0  # colour unchanged on average
    # A clean, sharp scene leaves a clean, sharp object exactly as it was.
    clean_scene = _textured((400, 400), 0.0, rng)
    sharp_obj = _textured((120, 100), 0.0, rng)
    assert np.array_equal(match_blur_noise(sharp_obj, alpha, clean_scene, (150, 200, 250, 320)), sharp_obj)


def test_match_blur_softens_a_sharp_object_in_a_soft_scene_lightly():
    rng = np.random.default_rng(0)
    scene = _textured((400, 400), 0.0, rng, blur=2.0)
    obj = _textured((120, 120), 0.0, rng)
    alpha = np.full((120, 120), 255, np.uint8)
    assert estimate_blur_sigma(scene) == pytest.approx(2.0, abs=0.25)
    assert estimate_blur_sigma(obj) < 0.3
    out = match_blur_noise(obj, alpha, scene, (150, 200, 270, 320), max_blur_sigma=1.2)
    assert estimate_blur_sigma(out) == pytest.approx(1.2, abs=0.25)  # capped: a light touch
