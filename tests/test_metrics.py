"""The metric arithmetic with a deterministic fake backend: embeddings and detections chosen here.

Images are made of flat colour regions; the fake CLIP maps an image (or crop) to the vector
the test assigned to its mean colour, so every expected value below is computed by hand.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from gen4gen.metrics import (ConceptReference, Detection, EvalItem, MetricParams, assign_detections, class_prompt,
                             clip_t, evaluate, non_max_suppression, pad_box)

RED, BLUE, GREEN, YELLOW = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)


def halves(left, right, size=(100, 100)) -> Image.Image:
    """Left half one colour, right half another."""
    w, h = size
    array = np.zeros((h, w, 3), np.uint8)
    array[:, : w // 2] = left
    array[:, w // 2:] = right
    return Image.fromarray(array)


def flat(colour, size=(40, 40)) -> Image.Image:
    return Image.new("RGB", size, colour)


class FakeClip:
    """Embedding of an image = the vector assigned to its (floored) mean colour; texts by table."""

    def __init__(self, images: dict, texts: dict):
        self.images, self.texts = images, texts
        self.image_calls = 0

    def embed_images(self, images):
        self.image_calls += 1
        rows = []
        for image in images:
            key = tuple(int(v) for v in np.asarray(image.convert("RGB"), np.float64).reshape(-1, 3).mean(0))
            assert key in self.images, f"test gave no embedding for mean colour {key}"
            rows.append(self.images[key])
        return np.asarray(rows, np.float64).reshape(len(rows), -1)

    def embed_texts(self, texts):
        return np.asarray([self.texts[t] for t in texts], np.float64)


class FakeDetector:
    """Detections by image size (each test image has its own size), per class name."""

    def __init__(self, by_size: dict):
        self.by_size = by_size
        self.queries = []

    def detect(self, images, class_names):
        self.queries.append([list(q) for q in class_names])
        return [{c: list(self.by_size.get(image.size, {}).get(c, [])) for c in names}
                for image, names in zip(images, class_names)]


PURPLE_MEAN = (127, 0, 127)  # mean colour of a red|blue image
IMAGE_VEC = [0.6, 0.0, 0.8]
EMBEDDINGS = {
    RED: [1.0, 0.0, 0.0], BLUE: [0.0, 1.0, 0.0], PURPLE_MEAN: IMAGE_VEC,
    (200, 0, 0): [0.6, 0.8, 0.0],  # second cat reference
    (0, 0, 200): [0.0, 0.6, 0.8],  # the cup reference
}
# Prompt embeddings: cos with IMAGE_VEC is 0.6, 0.8 and -0.6.
TEXTS = {"cat and cup on a lawn": [1.0, 0.0, 0.0], "cat and cup on the moon": [0.0, 0.0, 1.0],
         "a cat": [-1.0, 0.0, 0.0]}


def scenario():
    references = {"cat": ConceptReference("cat", [flat(RED), flat((200, 0, 0))]),
                  "cup": ConceptReference("cup", [flat((0, 0, 200))])}
    cat_box, cup_box = Detection((0, 0, 50, 100), 0.9), Detection((50, 0, 100, 100), 0.7)
    decoy = Detection((50, 0, 100, 100), 0.3)  # a weaker "cat" box on the blue half: not the best box
    items = [
        EvalItem("A", ["cat", "cup"], "cat and cup on a lawn", "train", image=halves(RED, BLUE, (100, 100))),
        EvalItem("B", ["cat", "cup"], "cat and cup on the moon", "held_out", image=halves(RED, BLUE, (100, 120))),
        EvalItem("C", ["cat"], "a cat", "train", image=halves(RED, BLUE, (100, 140))),
    ]
    detector = FakeDetector({(100, 100): {"cat": [decoy, cat_box]},  # the cup is not found in A
                             (100, 120): {"cat": [cat_box], "cup": [cup_box]},
                             (100, 140): {}})  # nothing found in C
    return items, references, detector


def test_hand_computed_cp_clip_ti_clip_clip_t_clip_i():
    items, references, detector = scenario()
    clip = FakeClip(EMBEDDINGS, TEXTS)
    result = evaluate(items, references, clip, detector, params=MetricParams(crop_padding=0.0, missing_score=0.0))
    by_id = {r["image_id"]: r for r in result["images"]}
    # Cat crop (red) vs references red [1,0,0] and [0.6,0.8,0]: cos 1 and 0.6, mean 0.8.
    # Cup crop (blue) vs reference [0,0.6,0.8]: cos 0.6.
    a, b, c = by_id["A"], by_id["B"], by_id["C"]
    assert [s["found"] for s in a["concept_scores"]] == [True, False]
    assert a["concept_scores"][0]["box"] == [0, 0, 50, 100]  # the best box, not the decoy
    assert a["concept_scores"][0]["similarity"] == pytest.approx(0.8)
    assert a["cp_clip"] == pytest.approx((0.8 + 0.0) / 2)
    assert b["cp_clip"] == pytest.approx((0.8 + 0.6) / 2)
    assert c["cp_clip"] == pytest.approx(0.0)
    # TI-CLIP: cos(image, prompt); CLIP-T = 2.5 * max(cos, 0).
    assert (a["ti_clip"], b["ti_clip"], c["ti_clip"]) == pytest.approx((0.6, 0.8, -0.6))
    assert (a["clip_t"], b["clip_t"], c["clip_t"]) == pytest.approx((1.5, 2.0, 0.0))
    # CLIP-I: image [0.6,0,0.8] vs cat refs: 0.6 and 0.36 (mean 0.48); vs cup ref: 0.64.
    assert a["clip_i"] == pytest.approx((0.48 + 0.64) / 2)
    assert c["clip_i"] == pytest.approx(0.48)
    assert a["dino"] is None

    summary = result["summary"]
    assert summary["images"] == 3
    assert summary["cp_clip"] == pytest.approx((0.4 + 0.7 + 0.0) / 3)
    assert summary["detection_rate"] == pytest.approx(3 / 5)
    assert summary["personalisation"] == pytest.approx((0.8 + 0.8 + 0.6) / 3)
    assert summary["ti_clip"]["train"] == pytest.approx((0.6 - 0.6) / 2)
    assert summary["ti_clip"]["held_out"] == pytest.approx(0.8)
    assert summary["ti_clip"]["gap"] == pytest.approx(0.0 - 0.8)
    assert summary["clip_t"] == pytest.approx((1.5 + 2.0 + 0.0) / 3)
    assert summary["clip_i"] == pytest.approx((0.56 + 0.56 + 0.48) / 3)

    counts = result["breakdowns"]["by_concept_count"]
    assert set(counts) == {"1", "2"}
    assert counts["2"]["cp_clip"] == pytest.approx(0.55) and counts["2"]["detection_rate"] == pytest.approx(0.75)
    assert counts["1"]["cp_clip"] == pytest.approx(0.0) and counts["1"]["personalisation"] is None
    comps = result["breakdowns"]["by_composition"]
    assert set(comps) == {"cat", "cat+cup"} and comps["cat+cup"]["images"] == 2
    # Each image asked the detector for its own class names only.
    assert detector.queries == [[["cat", "cup"], ["cat", "cup"], ["cat"]]]


def test_missing_concept_score_is_a_parameter():
    items, references, detector = scenario()
    result = evaluate(items, references, FakeClip(EMBEDDINGS, TEXTS), detector,
                      params=MetricParams(crop_padding=0.0, missing_score=0.1))
    by_id = {r["image_id"]: r for r in result["images"]}
    assert by_id["A"]["cp_clip"] == pytest.approx((0.8 + 0.1) / 2)
    assert by_id["C"]["cp_clip"] == pytest.approx(0.1)
    # Personalisation averages detected crops only; the missing score does not enter it.
    assert result["summary"]["personalisation"] == pytest.approx((0.8 + 0.8 + 0.6) / 3)


def test_crop_padding_changes_the_crop():
    """With padding the cat crop takes in blue pixels, so its mean colour (and embedding) changes."""
    items, references, detector = scenario()
    embeddings = dict(EMBEDDINGS)
    # Box (0,0,50,100) grown by 20% of its width each side: x 0..60 of a 100 px wide image -> 50 red, 10 blue columns.
    embeddings[(212, 0, 42)] = [0.0, 1.0, 0.0]
    result = evaluate(items[:1], references, FakeClip(embeddings, TEXTS), detector,
                      params=MetricParams(crop_padding=0.2))
    cat = result["images"][0]["concept_scores"][0]
    assert cat["similarity"] == pytest.approx((0.0 + 0.8) / 2)  # [0,1,0] vs [1,0,0] and [0.6,0.8,0]


def test_concepts_of_one_class_are_matched_to_distinct_boxes():
    references = {"dog_a": ConceptReference("dog", [flat(GREEN)]), "dog_b": ConceptReference("dog", [flat(YELLOW)])}
    embeddings = {GREEN: [1.0, 0.0], YELLOW: [0.0, 1.0], (127, 255, 0): [0.7, 0.7]}
    green_box, yellow_box = Detection((0, 0, 50, 100), 0.8), Detection((50, 0, 100, 100), 0.9)
    duplicate = Detection((51, 0, 100, 100), 0.85)  # suppressed by NMS
    detector = FakeDetector({(100, 100): {"dog": [green_box, yellow_box, duplicate]}})
    item = EvalItem("D", ["dog_a", "dog_b"], "two dogs", image=halves(GREEN, YELLOW))
    result = evaluate([item], references, FakeClip(embeddings, {"two dogs": [1.0, 0.0]}), detector,
                      params=MetricParams(crop_padding=0.0))
    scores = result["images"][0]["concept_scores"]
    assert [s["box"] for s in scores] == [[0, 0, 50, 100], [50, 0, 100, 100]]
    assert result["images"][0]["cp_clip"] == pytest.approx(1.0)


def test_dino_is_computed_like_clip_i_when_given():
    items, references, _ = scenario()
    dino = FakeClip({RED: [1.0, 0.0], (200, 0, 0): [1.0, 0.0], (0, 0, 200): [0.0, 1.0], PURPLE_MEAN: [1.0, 1.0]}, {})
    result = evaluate(items[:1], references, FakeClip(EMBEDDINGS, TEXTS), None, dino)
    record = result["images"][0]
    assert record["dino"] == pytest.approx(math.sqrt(0.5))  # cos 45 degrees to both concepts' references
    assert record["cp_clip"] is None and record["concept_scores"] == []
    assert result["summary"]["cp_clip"] is None and result["summary"]["detection_rate"] is None


def test_reference_embeddings_are_computed_once():
    items, references, detector = scenario()
    clip = FakeClip(EMBEDDINGS, TEXTS)
    evaluate(items, references, clip, detector, params=MetricParams(crop_padding=0.0))
    # Two concepts' references, one batch of images, one batch of crops.
    assert clip.image_calls == 4


def test_small_pieces():
    assert clip_t(0.3) == pytest.approx(0.75) and clip_t(-0.2) == 0.0
    assert pad_box((10, 10, 30, 50), 0.1, (100, 100)) == (8, 6, 32, 54)
    assert pad_box((0, 0, 100, 100), 0.5, (100, 100)) == (0, 0, 100, 100)
    assert pad_box((99.5, 10, 99.5, 10), 0.0, (100, 100)) == (99, 10, 100, 11)  # at least one pixel
    kept = non_max_suppression([Detection((0, 0, 10, 10), 0.5), Detection((1, 0, 10, 10), 0.9),
                                Detection((50, 50, 60, 60), 0.1)])
    assert [d.score for d in kept] == [0.9, 0.1]
    assert assign_detections(np.array([[0.9, 0.8], [0.95, 0.1]])) == [1, 0]
    assert assign_detections(np.zeros((2, 1))) == [0, None]


@pytest.mark.parametrize("prompt, expected", [
    ("a photo of <new1> cat and <new2> coffee cup in a park", "a photo of cat and coffee cup in a park"),
    ("<new1> on a beach", "cat on a beach"),
    ("a photo of <comp1> with <new1> cat and <new2> coffee cup", "a photo of cat and coffee cup"),
    ("<new1> cat, <new1> cat and <new12> dog", "cat, cat and dog"),
])
def test_class_prompt_replaces_concept_tokens(prompt, expected):
    assert class_prompt(prompt, {"<new1>": "cat", "<new2>": "coffee cup", "<new12>": "dog"}) == expected
