"""Realism checks: each fires on a case made for it and stays quiet on a clean object."""
import dataclasses

import cv2
import numpy as np
import pytest

from gen4gen.cutout_quality import measure_cutout
from gen4gen.realism_checks import (
    DEFAULT_THRESHOLDS, Finding, cutout_findings, floating, fragments, implausible_scale,
    photo_findings, rectangular_cutout, truncated_source,
)
from gen4gen.size_priors import real_world_size

SHAPE = (300, 400)


def draw(*shapes):
    """A uint8 alpha from OpenCV drawing calls, each ``fn(image)``, anti-aliased by 4x supersampling."""
    big = np.zeros((SHAPE[0] * 4, SHAPE[1] * 4), np.uint8)
    for shape in shapes:
        shape(big)
    return cv2.resize(big, (SHAPE[1], SHAPE[0]), interpolation=cv2.INTER_AREA)


def ell(cx, cy, ax, ay, thickness=-1):
    return lambda im: cv2.ellipse(im, (cx * 4, cy * 4), (ax * 4, ay * 4), 0, 0, 360, 255,
                                  thickness if thickness < 0 else thickness * 4)


def poly(*points):
    return lambda im: cv2.fillPoly(im, [np.array(points, np.int32) * 4], 255)


def box(x0, y0, x1, y1):
    return lambda im: cv2.rectangle(im, (x0 * 4, y0 * 4), (x1 * 4 - 1, y1 * 4 - 1), 255, -1)


# Clean objects well inside their photos.
_TAIL = poly((125, 140), (40, 95), (50, 88), (130, 125))
DOG = draw(ell(200, 140, 90, 45), ell(290, 90, 32, 28), _TAIL,
           *[box(x, 170, x + 16, 250) for x in (130, 160, 240, 265)])
TEAPOT = draw(ell(200, 170, 85, 65), ell(200, 100, 28, 12), poly((280, 160), (345, 105), (352, 112), (285, 190)),
              ell(112, 165, 34, 40, thickness=9))
# A close-up "cat face" cut as a near-rectangle: clipped corners, slightly wavy sides.
_wave = [(60 + int(3 * np.sin(i / 3)), 40 + i * 10) for i in range(22)]
NEAR_RECT = draw(poly(*([(70, 40), (330, 40)] + [(340 - int(3 * np.sin(i / 4)), 45 + i * 10) for i in range(21)]
                        + [(330, 260), (70, 260)] + _wave[::-1])))
# A dog photographed close, its chest running off the bottom of the photo.
DOG_CUT = draw(ell(200, 140, 90, 45), ell(290, 90, 32, 28), _TAIL, box(110, 150, 290, 300))


def test_silhouettes_and_near_rectangles_are_where_the_threshold_assumes():
    """Calibration: a dog and a teapot are below 0.8, a near-rectangular crop above 0.95 (the
    threshold, 0.85, sits above IS-Net cut-outs of DreamBooth's animals, bags and toys, 0.3-0.83)."""
    assert measure_cutout(DOG).rectangularity <= 0.8
    assert measure_cutout(TEAPOT).rectangularity <= 0.8
    assert measure_cutout(NEAR_RECT).rectangularity >= 0.95
    assert DEFAULT_THRESHOLDS.max_rectangularity == pytest.approx(0.85)


@pytest.mark.parametrize("alpha", [DOG, TEAPOT], ids=["dog", "teapot"])
def test_clean_objects_raise_no_photo_finding(alpha):
    quality = measure_cutout(alpha)
    assert quality.parts == 1 and quality.components == 1 and quality.max_frame_contact == 0
    assert cutout_findings(quality, "dog") == []


def test_rectangular_cutout_fires_on_a_near_rectangle_unless_the_class_is_boxy():
    quality = measure_cutout(NEAR_RECT)
    found = rectangular_cutout(quality, "cat")
    assert isinstance(found, Finding) and found.code == "rectangular_cutout"
    assert found.value >= 0.95 and found.threshold == 0.85 and "cat" in found.detail
    assert rectangular_cutout(quality, "old_book") is None  # a book is a rectangle
    assert rectangular_cutout(measure_cutout(DOG), "cat") is None


def test_truncated_source_fires_on_a_frame_cut_object():
    quality = measure_cutout(DOG_CUT)
    assert quality.frame_contact["bottom"] > 0.4
    found = truncated_source(quality, "dog")
    assert found is not None and found.code == "truncated_source"
    assert "bottom" in found.detail and found.value == pytest.approx(quality.frame_contact["bottom"], abs=1e-3)
    assert found.threshold == DEFAULT_THRESHOLDS.max_frame_contact
    # Classes that are normally framed, and a side the caller hides (standing on the canvas edge).
    assert truncated_source(quality, "brick_wall") is None
    assert truncated_source(quality, "trees") is None
    assert truncated_source(quality, "dog", allowed_sides={"bottom"}) is None
    # A paw grazing the frame is not a cut.
    grazing = DOG.copy()
    grazing[250:, 130:146] = 255
    assert 0 < measure_cutout(grazing).frame_contact["bottom"] < 0.1
    assert truncated_source(measure_cutout(grazing), "dog") is None
    with pytest.raises(ValueError):
        truncated_source(quality, "dog", allowed_sides={"floor"})


def test_fragments_fires_when_several_parts_remain():
    two = np.maximum(DOG, draw(ell(60, 240, 45, 40)))  # a second big blob, detached
    quality = measure_cutout(two)
    assert quality.parts == 2
    found = fragments(quality, class_name="dog")
    assert found is not None and found.code == "fragments" and found.value == 2 and found.threshold == 1
    speck = DOG.copy()
    speck[10:14, 10:14] = 255  # a speck is cleaned away, not a part
    assert fragments(measure_cutout(speck)) is None
    assert fragments(measure_cutout(DOG)) is None


def test_implausible_scale():
    mug, moto = real_world_size("mug"), real_world_size("motorcycle")
    # A mug as tall as a motorcycle next to it: 11x off.
    found = implausible_scale([("mug", 300, mug, 1.0), ("motorcycle", 300, moto, 1.0)])
    assert found is not None and found.code == "implausible_scale"
    assert found.value == pytest.approx(moto / mug, rel=1e-3) and "mug" in found.detail
    # True ratio at equal depth: quiet.
    assert implausible_scale([("mug", 30, mug, 1.0), ("motorcycle", 330, moto, 1.0)]) is None
    # Depth accounted for: a dog twice as far back is half as tall.
    dog = real_world_size("dog")
    assert implausible_scale([("dog", 100, dog, 0.5), ("dog", 200, dog, 1.0)]) is None
    far_big = implausible_scale([("dog", 200, dog, 0.5), ("dog", 100, dog, 1.0)])
    assert far_big is not None and far_big.value == pytest.approx(4.0)
    # Within the factor, unknown priors ignored, the threshold is the dataclass's.
    assert implausible_scale([("dog", 100, dog, 1.0), ("dog", 190, dog, 1.0)]) is None
    assert implausible_scale([("dog", 100, dog, 1.0), ("thing", 900, None, 1.0)]) is None
    strict = dataclasses.replace(DEFAULT_THRESHOLDS, max_scale_contradiction=1.5)
    assert implausible_scale([("dog", 100, dog, 1.0), ("dog", 190, dog, 1.0)], strict) is not None


def test_floating():
    found = floating((100, 200, 180, 300), floor_top_y=400)
    assert found is not None and found.code == "floating" and found.value == 100
    assert floating((100, 300, 180, 420), floor_top_y=400) is None  # base on the floor
    assert floating((100, 300, 180, 399), floor_top_y=400) is None  # within tolerance
    table = (50, 290, 300, 500)
    assert floating((100, 200, 180, 300), floor_top_y=400, supports=[table]) is None
    assert floating((100, 200, 180, 300), floor_top_y=400, supports=[(400, 290, 500, 500)]) is not None


def test_photo_findings_reports_a_photo_once_when_it_fails_in_every_use():
    cut = truncated_source(measure_cutout(DOG_CUT), "dog")
    float_a = floating((0, 0, 10, 100), 400)
    float_b = floating((0, 0, 10, 390), 400)
    uses = [[cut, float_a], [cut], [float_b, cut]]
    reported = photo_findings("dog/IMG_1.jpg", uses)
    assert [f.code for f in reported] == ["truncated_source"]
    assert "dog/IMG_1.jpg" in reported[0].detail and "all 3" in reported[0].detail
    assert "choose another photo" in reported[0].detail
    # Floating in every use: reported with the mildest value (it fails even there).
    both = photo_findings("p", [[float_a], [float_b]])
    assert [f.code for f in both] == ["floating"] and both[0].value == float_b.value
    assert photo_findings("p", []) == []
    assert photo_findings("p", [[cut], []]) == []


def test_findings_and_thresholds_are_plain_data():
    found = floating((0, 0, 10, 100), 400)
    assert found.to_dict() == {"code": "floating", "detail": found.detail, "value": 300.0, "threshold": 2.0}
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_THRESHOLDS.max_parts = 3
