"""The real open_clip, OWL-ViT / OWLv2 and DINO code paths, with tiny random-weight models on disk."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("transformers")

from gen4gen.config import PROJECT_ROOT, ClipConfig, DetectorConfig, DinoConfig  # noqa: E402
from gen4gen.metrics import ConceptReference, EvalItem, MetricParams, evaluate  # noqa: E402
from gen4gen.models import clip as clip_models  # noqa: E402
from gen4gen.models.common import MissingWeightsError  # noqa: E402

from gen4gen.tiny_scoring_models import dino_dir, open_clip_dir, owlv2_dir, owlvit_dir, register_tiny_clip_name  # noqa: E402

CPU = {"device": "cpu", "dtype": "fp32"}


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_clip_models")


@pytest.fixture(scope="module")
def clip_backend(tiny_root):
    return clip_models.load_clip(ClipConfig(backend="open_clip", weights_path=str(open_clip_dir(tiny_root)),
                                            batch_size=2, **CPU), PROJECT_ROOT)


@pytest.fixture(scope="module")
def owlvit(tiny_root):
    return clip_models.load_detector(DetectorConfig(backend="owlvit", model=str(owlvit_dir(tiny_root)), threshold=0.0,
                                                    batch_size=2, **CPU), PROJECT_ROOT)


def photos(n=3, size=(96, 80)):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def test_open_clip_folder_embeds_images_and_texts(clip_backend):
    images = photos(3)
    rows = clip_backend.embed_images(images)
    assert rows.shape == (3, 32) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    # Batching (batch_size 2: batches of 2 and 1) does not change the embeddings.
    assert np.allclose(clip_backend.embed_images(images[2:]), rows[2:], atol=1e-5)
    texts = clip_backend.embed_texts(["a photo of a cat", "a photo of a coffee cup", "x " * 200])  # long: truncated
    assert texts.shape == (3, 32) and not np.allclose(texts[0], texts[1])
    assert clip_backend.identity()["backend"] == "open_clip"
    # Loaded once per process: the same configuration gives the same object.
    again = clip_models.load_clip(ClipConfig(backend="open_clip", weights_path=clip_backend.identity()["weights"],
                                             batch_size=2, **CPU), PROJECT_ROOT)
    assert again is clip_backend


def test_open_clip_checkpoint_file_with_a_model_name(tiny_root, clip_backend):
    name = register_tiny_clip_name(tiny_root)
    checkpoint = open_clip_dir(tiny_root) / "open_clip_pytorch_model.bin"
    backend = clip_models.load_clip(ClipConfig(backend="open_clip", model=name, pretrained=None,
                                               weights_path=str(checkpoint), **CPU), PROJECT_ROOT)
    image = photos(1)
    assert np.allclose(backend.embed_images(image), clip_backend.embed_images(image), atol=1e-5)


def test_missing_clip_weights_name_them_and_how_to_get_them(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "ViT-L-14.pt"
    with pytest.raises(MissingWeightsError) as info:
        clip_models.load_clip(ClipConfig(backend="open_clip", weights_path=str(missing), **CPU), PROJECT_ROOT)
    assert str(missing) in str(info.value) and "hf download timm/vit_large_patch14_clip_224.openai" in str(info.value)
    with pytest.raises(MissingWeightsError, match="not a pretrained tag of 'ViT-B-32'"):
        clip_models.load_clip(ClipConfig(backend="open_clip", model="ViT-B-32", pretrained="no-such-tag", **CPU),
                              PROJECT_ROOT)
    # Offline, a tag that is not in the Hugging Face cache fails at once (nothing is downloaded).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(MissingWeightsError, match="HF_HUB_OFFLINE=1"):
        clip_models.load_clip(ClipConfig(backend="open_clip", model="ViT-B-32", pretrained="openai", **CPU),
                              PROJECT_ROOT)


def _threshold_between_scores(detections_by_image, gap: float) -> float:
    """A threshold some boxes clear and some do not, with no score within ``gap`` of it."""
    scores = sorted({d.score for found in detections_by_image for boxes in found.values() for d in boxes})
    middle = len(scores) // 2
    for k in sorted(range(1, len(scores)), key=lambda k: abs(k - middle)):  # nearest the median first
        if scores[k] - scores[k - 1] > 2 * gap:
            return (scores[k - 1] + scores[k]) / 2
    pytest.fail(f"no two detector scores are {2 * gap} apart: {scores[:10]}...")


def _same_detections(a, b, atol: float) -> bool:
    """The same boxes with the same scores, within ``atol`` (boxes in pixels: 100x that); two
    boxes whose scores differ by rounding may come in either order."""
    unmatched = list(b)
    for x in a:
        match = next((y for y in unmatched if abs(x.score - y.score) <= atol
                      and np.allclose(x.box, y.box, atol=atol * 100)), None)
        if match is None:
            return False
        unmatched.remove(match)
    return not unmatched


def test_owlvit_detects_per_class_name_above_the_threshold(owlvit, tiny_root):
    images = photos(3, size=(120, 90))
    queries = [["cat", "coffee cup"], ["cat"], ["dog", "cat", "stuffed animal"]]
    found = owlvit.detect(images, queries)
    assert [sorted(f) for f in found] == [sorted(q) for q in queries]
    for result in found:
        for detections in result.values():
            assert detections, "threshold 0 keeps every box"
            scores = [d.score for d in detections]
            assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
            for d in detections:
                x0, y0, x1, y1 = d.box
                assert 0 <= x0 < x1 <= 120 and 0 <= y0 < y1 <= 90
    # The threshold only filters: a detector at a higher threshold (a second model instance,
    # another batch size) keeps exactly the boxes that score at least that much. Scores of two
    # runs agree to float32 rounding, not bit for bit, so the threshold sits between scores and
    # scores and boxes are compared within a tolerance.
    atol = 1e-4
    threshold = _threshold_between_scores(found, gap=atol)
    strict = clip_models.load_detector(DetectorConfig(backend="owlvit", model=str(owlvit_dir(tiny_root)),
                                                      threshold=threshold, batch_size=3, **CPU), PROJECT_ROOT)
    kept = strict.detect(images, queries)
    for loose, tight in zip(found, kept):
        assert sorted(tight) == sorted(loose)
        for name in loose:
            assert all(d.score >= threshold for d in tight[name])
            expected = [d for d in loose[name] if d.score >= threshold]
            assert _same_detections(expected, tight[name], atol), (name, expected, tight[name])
    kept_boxes = sum(len(d) for r in kept for d in r.values())
    assert 0 < kept_boxes < sum(len(d) for r in found for d in r.values())


def test_owlv2_boxes_are_in_image_coordinates(tiny_root):
    detector = clip_models.load_detector(DetectorConfig(backend="owlv2", model=str(owlv2_dir(tiny_root)),
                                                        threshold=0.0, **CPU), PROJECT_ROOT)
    found = detector.detect(photos(1, size=(128, 64)), [["cat"]])[0]["cat"]
    assert found and all(0 <= d.box[0] < d.box[2] <= 128 and 0 <= d.box[1] < d.box[3] <= 64 for d in found)


def test_missing_detector_and_dino_weights(tmp_path, monkeypatch):
    with pytest.raises(MissingWeightsError, match="detector.model"):
        clip_models.load_detector(DetectorConfig(backend="owlvit", model=str(tmp_path / "no_owl"), **CPU), PROJECT_ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(MissingWeightsError, match="google/owlvit-base-patch32.*HF_HUB_OFFLINE=1"):
        clip_models.load_detector(DetectorConfig(backend="owlvit", **CPU), PROJECT_ROOT)
    with pytest.raises(MissingWeightsError, match="facebook/dino-vits16"):
        clip_models.load_dino(DinoConfig(backend="transformers", **CPU), PROJECT_ROOT)


def test_backends_none_load_nothing():
    assert clip_models.load_clip(ClipConfig(), PROJECT_ROOT) is None
    assert clip_models.load_detector(DetectorConfig(), PROJECT_ROOT) is None
    assert clip_models.load_dino(DinoConfig(), PROJECT_ROOT) is None


def test_metrics_run_end_to_end_on_the_real_backends(clip_backend, owlvit, tiny_root):
    dino = clip_models.load_dino(DinoConfig(backend="transformers", model=str(dino_dir(tiny_root)), **CPU), PROJECT_ROOT)
    refs = photos(4, size=(64, 64))
    references = {"cat": ConceptReference("cat", refs[:2]), "cup": ConceptReference("coffee cup", refs[2:])}
    items = [EvalItem(f"img{k}", ["cat", "cup"], "a cat and a coffee cup", kind, image=image)
             for k, (image, kind) in enumerate(zip(photos(2, size=(100, 100)), ["train", "held_out"]))]
    result = evaluate(items, references, clip_backend, owlvit, dino, MetricParams(crop_padding=0.1))
    summary = result["summary"]
    assert summary["detection_rate"] == 1.0  # threshold 0: every class has a box
    for key in ("cp_clip", "personalisation", "clip_t", "clip_i", "dino"):
        assert summary[key] is not None and np.isfinite(summary[key])
    assert -1.0 <= summary["ti_clip"]["gap"] <= 2.0 and summary["ti_clip"]["held_out_images"] == 1
