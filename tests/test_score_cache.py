"""The score cache: only new or changed images are embedded or detected, and scores do not change.

Backends here count what they are asked to compute (by image content key), so each test can
say exactly which images reached the model. The screening and evaluation tests run over the
small project that tests/test_screening.py builds (its fixture, imported).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from gen4gen.concepts import load_registry
from gen4gen.config import load_config
from gen4gen.evaluation import run_evaluation
from gen4gen.metrics import Detection, pad_box
from gen4gen.report import write_report
from gen4gen.score_cache import CachedClip, CachedDetector, CachedEmbedder, image_key, score_cache_root
from gen4gen.screening import ScreeningModels, screen_mycanvas
from gen4gen.stages import built_images

from .test_screening import PERMISSIVE, HashClip, project  # noqa: F401 - project is a fixture

ON = {"clip": {"backend": "open_clip"}, "detector": {"backend": "owlvit"}, "screening": PERMISSIVE}


class CountingClip(HashClip):
    """HashClip (float64 rows) that records the key of every image and every text it embeds."""

    def __init__(self, model: str = "a"):
        self.model, self.images, self.texts = model, [], []

    def embed_images(self, images):
        self.images += [image_key(image) for image in images]
        return super().embed_images(images)

    def embed_texts(self, texts):
        self.texts += list(texts)
        return super().embed_texts(texts)

    def identity(self):
        return {"backend": "counting", "model": self.model}


class CountingDetector:
    """One box per class, inside the image, with a score that depends on the pixels (and the class)."""

    def __init__(self, threshold: float = 0.1):
        self.threshold, self.images = threshold, []

    def identity(self):
        return {"backend": "counting", "threshold": self.threshold}

    def detect(self, images, class_names):
        self.images += [image_key(image) for image in images]
        out = []
        for image, names in zip(images, class_names):
            w, h = image.size
            seed = hashlib.sha256(image.tobytes()).digest()
            out.append({c: [Detection((w / 7, h / 9, w * 5 / 7, h - 0.1), int.from_bytes(seed[:4], "big") / 2 ** 32
                                      + len(c) / 1e9)] for c in names})
        return out


def _config(project):
    config = load_config(project[2], **ON)
    shutil.rmtree(score_cache_root(config), ignore_errors=True)
    return config


def _screen(config, clip, detector, score_cache=True):
    registry = load_registry(config.paths.registry)
    return screen_mycanvas(registry, config, ScreeningModels(clip, detector), [], score_cache=score_cache)


def _computed(clip, detector) -> int:
    return len(clip.images) + len(clip.texts) + len(detector.images)


def test_second_screening_embeds_nothing_and_decides_the_same(project):
    config = _config(project)
    plain_clip, plain_detector = CountingClip(), CountingDetector()
    plain = _screen(config, plain_clip, plain_detector, score_cache=False)
    assert plain.summary["cache"]["uncached"] == ["clip", "detector"] and not score_cache_root(config).exists()
    assert plain.summary["cache"]["misses"] == _computed(plain_clip, plain_detector) > 0

    clip, detector = CountingClip(), CountingDetector()
    first = _screen(config, clip, detector)
    cold = first.summary["cache"]
    assert cold["misses"] == _computed(clip, detector) and cold["corrupt"] == 0 and cold["uncached"] == []
    # Same items as without the cache (the concepts' references are embedded once either way).
    assert sorted(clip.images) == sorted(set(plain_clip.images)) and len(detector.images) == len(plain_detector.images)

    clip, detector = CountingClip(), CountingDetector()
    second = _screen(config, clip, detector)
    assert clip.images == [] and clip.texts == [] and detector.images == []
    assert second.summary["cache"]["misses"] == 0
    assert second.summary["cache"]["hits"] == cold["hits"] + cold["misses"]
    scored = [d for d in plain.decisions.values() if d.caption_score is not None]
    assert len({d.caption_score for d in scored}) == len(scored) >= 4
    assert all(any(d.detected) for d in scored)
    # Bit for bit: float64 rows through .npy, detection scores through JSON.
    assert second.decisions == first.decisions == plain.decisions
    summary = json.loads((config.paths.review / "summary.json").read_text())
    assert summary["cache"]["misses"] == 0 and summary["cache"]["hits"] == second.summary["cache"]["hits"]


def test_one_changed_image_is_the_only_one_embedded_again(project):
    config = _config(project)
    before = _screen(config, CountingClip(), CountingDetector())
    registry = load_registry(config.paths.registry)
    built = next(b for b in built_images(registry, config) if before.decisions[b.image_id].caption_score is not None)
    path = config.paths.recoloured(built.composition) / built.recoloured["image"]
    original = path.read_bytes()
    with Image.open(path) as handle:
        changed = handle.convert("RGB")
    box = built.entry["objects"][0]["box"]
    x, y = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)  # inside the first object
    changed.putpixel((x, y), tuple(255 - v for v in changed.getpixel((x, y))))
    try:
        tmp = path.with_name(path.name + ".changed.png")
        changed.save(tmp)
        os.replace(tmp, path)  # a new file, not a write through a link the export may share
        clip, detector = CountingClip(), CountingDetector()
        after = _screen(config, clip, detector)
    finally:
        tmp = path.with_name(path.name + ".restore")
        tmp.write_bytes(original)
        os.replace(tmp, path)
    # The crops that hold the changed pixel (the first object's, and any other whose padded box does).
    boxes = [pad_box(o["box"], config.evaluation.crop_padding, changed.size) for o in built.entry["objects"]]
    crops = [changed.crop(b) for b in boxes if b[0] <= x < b[2] and b[1] <= y < b[3]]
    assert clip.images == [image_key(changed)] + [image_key(c) for c in crops] and len(crops) >= 1
    assert clip.texts == [] and detector.images == [image_key(changed)]
    assert after.summary["cache"]["misses"] == 2 + len(crops)
    assert after.decisions[built.image_id].caption_score != before.decisions[built.image_id].caption_score
    others = [k for k in before.decisions if k != built.image_id]
    assert [after.decisions[k] for k in others] == [before.decisions[k] for k in others]


def test_another_model_identity_does_not_reuse_entries(project):
    config = _config(project)
    clip, detector = CountingClip("a"), CountingDetector(0.1)
    _screen(config, clip, detector)
    images, detected = len(clip.images), len(detector.images)
    other_clip, other_detector = CountingClip("b"), CountingDetector(0.2)
    _screen(config, other_clip, other_detector)
    assert len(other_clip.images) == images and len(other_detector.images) == detected
    identities = sorted((json.loads(p.read_text())["identity"] for p in score_cache_root(config).glob("*/identity.json")),
                        key=json.dumps)
    assert identities == [{"backend": "counting", "model": "a"}, {"backend": "counting", "model": "b"},
                          {"backend": "counting", "threshold": 0.1}, {"backend": "counting", "threshold": 0.2}]


def test_corrupt_entries_are_misses_and_are_rewritten(project):
    config = _config(project)
    first = _screen(config, CountingClip(), CountingDetector())
    root = score_cache_root(config)
    image_entry = sorted(root.glob("*/images/*/*.npy"))[0]
    text_entry = sorted(root.glob("*/texts/*/*.npy"))[0]
    detection_entry = sorted(root.glob("*/detections/*/*.json"))[0]
    good = {p: p.read_bytes() for p in (image_entry, text_entry, detection_entry)}
    image_entry.write_bytes(good[image_entry][:-5])  # truncated
    text_entry.write_bytes(b"")
    detection_entry.write_bytes(good[detection_entry][:len(good[detection_entry]) // 2])
    clip, detector = CountingClip(), CountingDetector()
    again = _screen(config, clip, detector)
    assert len(clip.images) == 1 and len(clip.texts) == 1 and len(detector.images) == 1
    assert again.summary["cache"]["corrupt"] == 3 and again.summary["cache"]["misses"] == 3
    assert again.decisions == first.decisions
    assert {p: p.read_bytes() for p in good} == good


def test_second_evaluation_embeds_nothing_and_reports_the_same(project):
    config = load_config(project[2])
    shutil.rmtree(score_cache_root(config), ignore_errors=True)
    registry = load_registry(config.paths.registry)

    def evaluate(score_cache=True):
        clip, detector, dino = CountingClip(), CountingDetector(), CountingClip("dino")
        result = run_evaluation(config, registry, config.paths.mycanvas, clip, detector, dino, score_cache=score_cache)
        return result, len(clip.images) + len(clip.texts) + len(detector.images) + len(dino.images)

    plain, plain_count = evaluate(score_cache=False)
    first, first_count = evaluate()
    second, second_count = evaluate()
    assert plain["sets"]["mycanvas"]["summary"]["images"] >= 4
    assert first["cache"]["misses"] == first_count > 0 and plain["cache"]["misses"] == plain_count
    assert second_count == 0 and second["cache"]["misses"] == 0
    assert second["cache"]["hits"] == first["cache"]["hits"] + first["cache"]["misses"]
    assert second["sets"] == first["sets"] == plain["sets"]
    write_report(config.paths.mycanvas, config.paths.reports, config.report, second)
    report = json.loads((config.paths.reports / "report.json").read_text())
    assert report["evaluation"]["cache"]["hits"] == second["cache"]["hits"]


# ------------------------------------------------------------------ the wrappers alone
class RandomRows:
    """Rows from a table by image colour / text; records every batch it is given."""

    def __init__(self, dtype=np.float32):
        self.dtype, self.batches = dtype, []

    def identity(self):
        return {"backend": "rows", "dtype": np.dtype(self.dtype).name}

    def _row(self, data: bytes):
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(data).digest()[:8], "big"))
        return rng.normal(size=8)

    def embed_images(self, images):
        self.batches.append([image.getpixel((0, 0)) for image in images])
        return np.array([self._row(image.tobytes()) for image in images], dtype=self.dtype)

    def embed_texts(self, texts):
        self.batches.append(list(texts))
        return np.array([self._row(t.encode()) for t in texts], dtype=self.dtype)


def _flat(colour):
    return Image.new("RGB", (6, 4), colour)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_come_back_bit_identical_in_order(tmp_path, dtype):
    backend = RandomRows(dtype)
    cached = CachedClip(backend, tmp_path)
    red, green, blue, grey = _flat((255, 0, 0)), _flat((0, 255, 0)), _flat((0, 0, 255)), _flat((9, 9, 9))
    first = cached.embed_images([red, green])
    mixed = cached.embed_images([blue, green, _flat((255, 0, 0)), blue, grey])
    assert backend.batches == [[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (9, 9, 9)]]  # misses only, once each
    expected = RandomRows(dtype).embed_images([blue, green, red, blue, grey])
    assert mixed.dtype == first.dtype == np.dtype(dtype) and mixed.shape == (5, 8)
    assert np.array_equal(mixed, expected) and np.array_equal(first, expected[[2, 1]])
    assert (cached.hits, cached.misses) == (3, 4)
    again = CachedClip(RandomRows(dtype), tmp_path).embed_images([grey, red])
    assert again.tobytes() == expected[[4, 2]].tobytes()


def test_texts_are_cached(tmp_path):
    backend = RandomRows()
    cached = CachedClip(backend, tmp_path)
    first = cached.embed_texts(["a cat", "a dog"])
    rows = CachedClip(backend, tmp_path).embed_texts(["a dog", "a cow", "a cat", "a cow"])
    assert backend.batches == [["a cat", "a dog"], ["a cow"]]
    assert np.array_equal(rows, RandomRows().embed_texts(["a dog", "a cow", "a cat", "a cow"]))
    assert np.array_equal(rows[[2, 0]], first)
    assert len(list(tmp_path.glob("*/texts/*/*.npy"))) == 3


def test_detections_round_trip_exactly(tmp_path):
    class Fixed:
        def __init__(self):
            self.calls = 0

        def identity(self):
            return {"backend": "fixed", "threshold": 0.25}

        def detect(self, images, class_names):
            self.calls += 1
            return [{"cat": [Detection((0.1 + 0.2, 1, 2.5, np.float32(3.3)), np.float32(0.7)),
                             Detection((1e-17, 0, 1 / 3, 2 / 3), 0.30000000000000004)], "dog": []}
                    for _ in images]

    backend = Fixed()
    image = _flat((1, 2, 3))
    fresh = CachedDetector(backend, tmp_path).detect([image], [["dog", "cat"]])
    cached = CachedDetector(backend, tmp_path)
    stored = cached.detect([image.copy()], [["cat", "dog"]])
    assert backend.calls == 1 and (cached.hits, cached.misses) == (1, 0)
    assert list(stored[0]) == ["cat", "dog"] and stored == fresh
    boxes = [d.box for d in stored[0]["cat"]]
    assert boxes[0] == (0.30000000000000004, 1, 2.5, float(np.float32(3.3))) and type(boxes[0][1]) is int
    assert stored[0]["cat"][0].score == float(np.float32(0.7)) and stored[0]["cat"][1].score == 0.30000000000000004
    # Other class names are another entry.
    CachedDetector(backend, tmp_path).detect([image], [["cat"]])
    assert backend.calls == 2


def test_what_is_not_cached_and_delegation(tmp_path):
    class Anonymous(RandomRows):
        identity = None  # no identity(), and object.__repr__ names an address

    class Named(Anonymous):
        def __repr__(self):
            return "Named(v1)"

    image = _flat((5, 5, 5))
    anonymous = CachedEmbedder(Anonymous(), tmp_path)
    anonymous.embed_images([image])
    anonymous.embed_images([image])
    assert not anonymous.caching and (anonymous.hits, anonymous.misses) == (0, 2) and not any(tmp_path.iterdir())
    off = CachedClip(RandomRows(), tmp_path, enabled=False)
    off.embed_images([image])
    off.embed_images([image])
    assert off.misses == 2 and not any(tmp_path.iterdir())
    named = CachedEmbedder(Named(), tmp_path)
    named.embed_images([image])
    assert CachedEmbedder(Named(), tmp_path).embed_images([image]).shape == (1, 8)
    assert json.loads(next(tmp_path.glob("*/identity.json")).read_text())["identity"] == {"repr": "Named(v1)"}
    wrapped = CachedClip(RandomRows(np.float64), tmp_path)
    assert wrapped.identity() == {"backend": "rows", "dtype": "float64"} and wrapped.dtype is np.float64


def test_image_keys_follow_content():
    base = _flat((10, 20, 30))
    assert image_key(base) == image_key(base.copy()) != image_key(base.convert("RGBA"))
    assert image_key(base) != image_key(Image.new("RGB", (4, 6), (10, 20, 30)))
    one, two = Image.new("P", (3, 3), 0), Image.new("P", (3, 3), 0)
    one.putpalette([255, 0, 0] * 256)
    two.putpalette([0, 255, 0] * 256)
    assert one.tobytes() == two.tobytes() and image_key(one) != image_key(two)
