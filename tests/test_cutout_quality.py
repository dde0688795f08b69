"""Cut-out cleaning and measurements on synthetic alphas: what goes, what stays, what is measured."""
import json

import cv2
import numpy as np
import pytest

from gen4gen.cutout_quality import CutoutQuality, clean_cutout, frame_contact, measure_cutout, rectangularity

SS = 4  # supersampling for anti-aliased shapes


def soft(draw, shape, value=255):
    """An anti-aliased uint8 alpha: ``draw(canvas, scale)`` at SS x resolution, then area-averaged."""
    h, w = shape
    big = np.zeros((h * SS, w * SS), np.uint8)
    draw(big, SS)
    small = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    return np.clip(small * (value / 255.0) + 0.5, 0, 255).astype(np.uint8)


def ellipse(cx, cy, ax, ay):
    return lambda img, s: cv2.ellipse(img, (cx * s, cy * s), (ax * s, ay * s), 0, 0, 360, 255, -1)


def rect(x0, y0, x1, y1):
    return lambda img, s: cv2.rectangle(img, (x0 * s, y0 * s), (x1 * s - 1, y1 * s - 1), 255, -1)


SHAPE = (240, 320)


@pytest.fixture
def messy():
    """A body with a 2 px handle and a 3 px diagonal tail, a detached fragment, a far ghost, a faint shadow."""
    body = soft(ellipse(120, 110, 60, 45), SHAPE)
    handle = soft(rect(170, 100, 222, 102), SHAPE)  # 2 px high, sticks out 43 px from the body
    tail = soft(lambda img, s: cv2.line(img, (85 * s, 135 * s), (35 * s, 185 * s), 255, 3 * s), SHAPE)
    fragment = np.zeros(SHAPE, np.uint8)
    fragment[20:32, 280:292] = 255
    ghost = np.zeros(SHAPE, np.uint8)
    ghost[180:225, 220:300] = 50
    shadow = soft(ellipse(120, 160, 70, 14), SHAPE, value=40)  # faint, touching the body's bottom
    alpha = np.maximum.reduce([body, handle, tail, fragment, ghost, shadow])
    return {"alpha": alpha, "body": body, "handle": handle, "tail": tail, "fragment": fragment,
            "ghost": ghost, "shadow": shadow}


def test_cleaner_drops_fragment_and_ghost_keeps_handle_tail_and_soft_edge(messy):
    alpha = messy["alpha"]
    cleaned, quality = clean_cutout(alpha)
    # Gone: the detached fragment and the faint far region.
    assert cleaned[messy["fragment"] > 0].max() == 0
    assert cleaned[messy["ghost"] > 0].max() == 0
    # Kept exactly: the 2 px handle, the 3 px tail and the body with its anti-aliased edge.
    for part in ("handle", "tail", "body"):
        where = messy[part] > 0
        assert np.array_equal(cleaned[where], alpha[where]), part
    edge = (messy["body"] > 0) & (messy["body"] < 255)
    assert edge.sum() > 200 and cleaned[edge].min() > 0  # the soft edge exists and survived
    # The faint shadow under the body stays only as far as the soft edge reaches (3 px here).
    solid = np.maximum.reduce([messy["body"], messy["handle"], messy["tail"]]) >= 96
    distance = cv2.distanceTransform((~solid).astype(np.uint8), cv2.DIST_L2, 3)
    shadow = messy["shadow"] > 0
    assert (shadow & (distance > 4)).sum() > 500 and cleaned[shadow & (distance > 4)].max() == 0
    near = shadow & (distance <= 2) & ~solid
    assert near.any() and np.array_equal(cleaned[near], alpha[near])
    # What was measured.
    total = alpha.sum(dtype=np.float64)
    assert quality.components == 2  # body+handle+tail, fragment (ghost and shadow are below ghost_alpha)
    assert quality.parts == 1
    assert quality.fragment_fraction == pytest.approx(messy["fragment"].sum() / total, rel=0.05)
    assert quality.ghost_fraction >= messy["ghost"].sum(dtype=np.float64) / total
    assert quality.ghost_fraction < (messy["ghost"].sum(dtype=np.float64) + messy["shadow"].sum()) / total
    x0, y0, x1, y1 = quality.bbox  # tail tip to handle end, body top to tail tip
    assert 33 <= x0 <= 36 and x1 == 222 and y0 == 65 and 185 <= y1 <= 188


def test_part_across_a_thin_seam_is_attached_and_the_gap_setting_matters():
    body = soft(rect(40, 40, 140, 160), SHAPE)
    part = np.zeros(SHAPE, np.uint8)
    part[60:64, 143:200] = 255  # 3 px away from the body: a seam of 0 alpha in between
    alpha = np.maximum(body, part)
    cleaned, quality = clean_cutout(alpha, attach_dilation_px=2)
    assert np.array_equal(cleaned, alpha) and quality.components == 2 and quality.parts == 1
    cleaned, quality = clean_cutout(alpha, attach_dilation_px=1)  # bridges 2 px only
    assert cleaned[part > 0].max() == 0 and quality.fragment_fraction > 0


def test_large_detached_part_is_kept_and_counted():
    left, right = soft(ellipse(80, 120, 50, 60), SHAPE), soft(ellipse(240, 120, 45, 55), SHAPE)
    alpha = np.maximum(left, right)  # a pair of shoes
    cleaned, quality = clean_cutout(alpha)
    assert np.array_equal(cleaned, alpha)
    assert quality.parts == 2 and quality.components == 2 and quality.fragment_fraction == 0


def test_measure_of_a_clean_alpha_removes_nothing(messy):
    cleaned, quality = clean_cutout(messy["alpha"])
    again = measure_cutout(cleaned)
    assert again.fragment_fraction == 0 and again.ghost_fraction == 0
    assert again.rectangularity == quality.rectangularity and again.area_fraction == quality.area_fraction
    assert clean_cutout(cleaned)[0].tobytes() == cleaned.tobytes()


def test_rectangularity_separates_silhouettes_from_rectangles():
    assert rectangularity(soft(rect(50, 40, 250, 200), SHAPE) >= 128) == pytest.approx(1.0)
    assert rectangularity(soft(ellipse(160, 120, 100, 80), SHAPE) >= 128) == pytest.approx(np.pi / 4, abs=0.02)
    assert rectangularity(np.zeros(SHAPE, bool)) == 0.0


def test_frame_contact_per_side():
    alpha = np.zeros(SHAPE, np.uint8)
    alpha[100:, 80:240] = 255  # runs off the bottom over half the width
    contact = frame_contact(alpha >= 128)
    assert contact["bottom"] == pytest.approx(0.5)
    assert contact["top"] == contact["left"] == contact["right"] == 0.0
    alpha[:, 318:] = 0
    alpha[100:220, 318] = 255  # one column from the right edge: within the 2 px band
    assert frame_contact(alpha >= 128)["right"] == pytest.approx(120 / 240)
    quality = measure_cutout(alpha)
    assert quality.frame_contact["bottom"] == pytest.approx(0.5)
    assert quality.max_frame_contact == pytest.approx(0.5)


def test_quality_serialises(messy):
    quality = measure_cutout(messy["alpha"])
    data = json.loads(json.dumps(quality.to_dict()))
    assert CutoutQuality.from_dict(data) == quality
    assert set(data) >= {"area_fraction", "components", "fragment_fraction", "ghost_fraction", "rectangularity",
                         "frame_contact", "parts"}


def test_empty_and_bad_alpha():
    cleaned, quality = clean_cutout(np.zeros(SHAPE, np.uint8))
    assert not cleaned.any() and quality.parts == 0 and quality.bbox is None and quality.rectangularity == 0
    with pytest.raises(ValueError):
        clean_cutout(np.zeros(SHAPE, np.float32))
