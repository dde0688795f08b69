"""Segmentation backends, the iterative DIS rounds, and the offline IS-Net weight assembly."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from gen4gen import weights
from gen4gen.config import SegmentationConfig
from gen4gen.segmentation import (IsNetOnnxSegmenter, grabcut_mask, iterative_segment, make_cutout,
                                  mask_bbox)
from gen4gen.weights import fetch_isnet

ROOT = Path(__file__).resolve().parents[1]
ISNET_WEIGHTS = ROOT / "weights" / "isnet" / "isnet-medium.onnx"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def _textured_ellipse_on_grass(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """320x240 orange-red textured ellipse on a noisy green background, and its true mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:240, 0:320]
    truth = ((xx - 150) / 95.0) ** 2 + ((yy - 130) / 70.0) ** 2 <= 1.0
    background = np.array([60, 110, 70], np.float32) + rng.normal(0, 8, (240, 320, 3))
    obj = np.stack([220 + 20 * np.sin(xx / 9.0), 120 + 30 * yy / 240.0, 60 + 15 * np.cos(yy / 7.0)], axis=-1)
    obj = obj + rng.normal(0, 6, (240, 320, 3))
    image = np.where(truth[..., None], obj, background)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def _shaded_ball_on_paper(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """320x240 shaded, textured orange ball off-centre on near-white paper (a salient object).

    Off-centre so a transposed or flipped alpha would fail the IoU check.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:240, 0:320]
    truth = ((xx - 130) / 85.0) ** 2 + ((yy - 110) / 80.0) ** 2 <= 1.0
    background = np.array([235, 235, 230], np.float32) + rng.normal(0, 2, (240, 320, 3))
    shade = np.clip(1.05 - 0.45 * (((xx - 110) / 85.0) ** 2 + ((yy - 90) / 80.0) ** 2), 0.4, 1.1)
    obj = np.array([240, 130, 30], np.float32) * shade[..., None]
    obj = obj + (10 * np.sin(xx / 5.0) * np.sin(yy / 5.0))[..., None] + rng.normal(0, 4, (240, 320, 3))
    image = np.where(truth[..., None], obj, background)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def _check_mask(mask: np.ndarray, truth: np.ndarray, min_iou: float) -> None:
    mask = mask > 0
    assert _iou(mask, truth) >= min_iou
    assert np.count_nonzero(mask & truth) / np.count_nonzero(truth) >= 0.95
    assert np.count_nonzero(mask & ~truth) / np.count_nonzero(~truth) < 0.02


# ---------------------------------------------------------------- backends
def test_grabcut_separates_object_from_background():
    image, truth = _textured_ellipse_on_grass()
    mask = grabcut_mask(image, margin=0.05, iterations=5)
    assert mask.shape == truth.shape and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    _check_mask(mask, truth, min_iou=0.9)  # measured 1.000
    np.testing.assert_array_equal(mask, grabcut_mask(image, margin=0.05, iterations=5))


@pytest.mark.skipif(not ISNET_WEIGHTS.is_file(), reason="IS-Net weights absent: run `make weights`")
def test_isnet_segments_salient_object():
    image, truth = _shaded_ball_on_paper()
    segmenter = IsNetOnnxSegmenter(SegmentationConfig(rounds=1), ROOT)
    result = segmenter.segment(image)
    assert (result.backend, result.rounds_run, result.warnings) == ("isnet_onnx", 1, [])
    assert result.alpha.dtype == np.uint8 and result.alpha.shape == truth.shape
    _check_mask(result.mask, truth, min_iou=0.9)  # measured 0.999
    sidecar = json.loads(ISNET_WEIGHTS.with_suffix(".json").read_text())
    assert segmenter.identity() == {"backend": "isnet_onnx", "weights_path": str(ISNET_WEIGHTS),
                                    "weights_sha256": sidecar["sha256"]}


def test_missing_weights_fall_back_to_grabcut_loudly(tmp_path):
    missing = tmp_path / "nowhere" / "isnet.onnx"
    segmenter = IsNetOnnxSegmenter(SegmentationConfig(weights_path=str(missing)), ROOT)
    assert segmenter.name == "grabcut"
    assert str(missing) in segmenter.fallback_warning and "make weights" in segmenter.fallback_warning
    assert segmenter.identity() == {"backend": "grabcut", "weights_path": str(missing), "weights_sha256": None}
    image, truth = _textured_ellipse_on_grass()
    result = segmenter.segment(image)
    assert result.backend == "grabcut" and result.warnings == [segmenter.fallback_warning]
    _check_mask(result.mask, truth, min_iou=0.9)


def test_relative_weights_path_resolves_under_project_root(tmp_path):
    segmenter = IsNetOnnxSegmenter(SegmentationConfig(weights_path="w/m.onnx"), tmp_path)
    assert segmenter.weights_path == tmp_path / "w" / "m.onnx"


def test_existing_alpha_is_used_and_cleaned(tmp_path):
    image, truth = _textured_ellipse_on_grass()
    alpha = truth.astype(np.uint8) * 200
    alpha[5:8, 5:8] = 255  # a speck far from the object
    alpha[128:131, 148:151] = 0  # a pinhole inside it
    config = SegmentationConfig(weights_path=str(tmp_path / "absent.onnx"))
    result = IsNetOnnxSegmenter(config, ROOT).segment(image, alpha=alpha)
    assert (result.backend, result.rounds_run, result.warnings) == ("existing_alpha", 0, [])
    np.testing.assert_array_equal(result.mask > 0, truth)
    assert result.alpha[6, 6] == 0 and result.alpha[129, 149] == 255 and result.alpha[130, 100] == 200

    ignored = IsNetOnnxSegmenter(config.model_copy(update={"use_existing_alpha": False}), ROOT).segment(image, alpha=alpha)
    assert ignored.backend == "grabcut"


def test_empty_result_is_reported(tmp_path):
    image, _ = _textured_ellipse_on_grass()
    config = SegmentationConfig(weights_path=str(tmp_path / "absent.onnx"))
    result = IsNetOnnxSegmenter(config, ROOT).segment(image, alpha=np.zeros(image.shape[:2], np.uint8))
    assert not result.mask.any() and "no foreground" in result.warnings[0]
    assert mask_bbox(result.mask) is None


# ---------------------------------------------------------------- iterative rounds
class _ScriptedPredict:
    """Returns the given alphas in turn and records the images it was shown."""

    def __init__(self, *alphas: np.ndarray):
        self.alphas, self.seen = list(alphas), []

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        self.seen.append(rgb.copy())
        return self.alphas[min(len(self.seen), len(self.alphas)) - 1]


def _columns(*values: float) -> np.ndarray:
    return np.tile(np.array(values, np.float32), (4, 1))


def test_iterative_segment_keeps_minimum_and_stops_on_convergence():
    rgb = np.full((4, 6, 3), (10, 20, 30), np.uint8)
    first = _columns(0.9, 0.9, 0.9, 0.9, 0.0, 0.0)
    second = _columns(0.6, 0.2, 1.0, 1.0, 1.0, 1.0)  # drops column 1, cannot add columns 4-5
    predict = _ScriptedPredict(first, second, second)
    alpha, rounds_run = iterative_segment(rgb, predict, rounds=5, converge_iou=0.99, threshold=0.5)
    # Round 2 changed the mask (IoU 0.75), round 3 did not: stop there.
    assert rounds_run == 3 and len(predict.seen) == 3
    np.testing.assert_allclose(alpha, _columns(0.6, 0.2, 0.9, 0.9, 0.0, 0.0))
    assert alpha.dtype == np.float32
    # Round 2 saw the first cut-out composited onto white.
    np.testing.assert_array_equal(predict.seen[1][0, 0], [35, 44, 53])  # 0.9 * rgb + 0.1 * 255
    np.testing.assert_array_equal(predict.seen[1][0, 5], [255, 255, 255])


def test_iterative_segment_respects_round_limit():
    rgb = np.zeros((4, 6, 3), np.uint8)
    shrinking = [_columns(*([1.0] * (6 - k) + [0.0] * k)) for k in range(4)]
    predict = _ScriptedPredict(*shrinking)
    _, rounds_run = iterative_segment(rgb, predict, rounds=2, converge_iou=0.99, threshold=0.5)
    assert rounds_run == 2 and len(predict.seen) == 2
    predict = _ScriptedPredict(*shrinking)
    assert iterative_segment(rgb, predict, rounds=1, converge_iou=0.99, threshold=0.5)[1] == 1
    assert len(predict.seen) == 1
    with pytest.raises(ValueError):
        iterative_segment(rgb, predict, rounds=0, converge_iou=0.99, threshold=0.5)


# ---------------------------------------------------------------- small helpers
def test_make_cutout_and_mask_bbox():
    rgb = np.zeros((10, 12, 3), np.uint8)
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:9] = 255
    cutout = make_cutout(rgb, mask)
    assert cutout.shape == (10, 12, 4) and cutout.dtype == np.uint8
    np.testing.assert_array_equal(cutout[..., 3], mask)
    assert mask_bbox(mask) == (3, 2, 9, 5)
    with pytest.raises(ValueError):
        make_cutout(rgb, mask[:5])


# ---------------------------------------------------------------- weights
def _fake_package(folder: Path, chunks: list[bytes], tamper=None) -> Path:
    """An npm-style tarball holding one chunked model under /models/medium.

    ``tamper(entry, files)`` may edit the resources.json entry and the chunk files first.
    """
    entry, files, offset = {"chunks": [], "size": sum(map(len, chunks)), "mime": "application/octet-steam"}, {}, 0
    for data in chunks:
        digest = hashlib.sha256(data).hexdigest()
        entry["chunks"].append({"hash": digest, "offsets": [offset, offset + len(data)]})
        files[f"package/dist/{digest}"] = data
        offset += len(data)
    entry["chunks"].reverse()  # the assembler must sort by offset, not trust the listing order
    if tamper:
        tamper(entry, files)
    files["package/dist/resources.json"] = json.dumps({"/models/medium": entry}).encode()
    files["package/package.json"] = json.dumps({"name": "@imgly/background-removal-data",
                                                "version": "1.4.5"}).encode()
    path = folder / "package.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


CHUNKS = [b"first chunk of onnx ", b"second, ", b"and the last one"]


def test_fetch_isnet_reassembles_chunks_and_writes_sidecar(tmp_path, monkeypatch):
    tarball = _fake_package(tmp_path, CHUNKS)
    dest = tmp_path / "weights" / "isnet-medium.onnx"
    assert fetch_isnet(dest, tarball=tarball) == dest
    assert dest.read_bytes() == b"".join(CHUNKS)
    sidecar = json.loads(dest.with_suffix(".json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    assert (sidecar["package"], sidecar["version"], sidecar["variant"]) == (
        "@imgly/background-removal-data", "1.4.5", "medium")
    assert sidecar["size"] == len(b"".join(CHUNKS)) and "AGPL-3.0" in sidecar["licence"]

    # Up to date: neither npm nor the tarball is touched again.
    monkeypatch.setattr(weights, "_npm_pack", lambda *a: pytest.fail("npm called for current weights"))
    assert fetch_isnet(dest) == dest


def _corrupt(entry, files):
    victim = entry["chunks"][1]["hash"]
    files[f"package/dist/{victim}"] = b"SECOND, "


def _gap(entry, files):
    entry["chunks"][1]["offsets"] = [offset + 1 for offset in entry["chunks"][1]["offsets"]]


def _truncate(entry, files):
    victim = entry["chunks"][1]["hash"]
    files[f"package/dist/{victim}"] = files[f"package/dist/{victim}"][:-1]


def _escape(entry, files):
    entry["chunks"][1]["hash"] = "../../../etc/passwd"


@pytest.mark.parametrize("tamper, message", [
    (_corrupt, "sha256 is"), (_gap, "not contiguous"), (_truncate, "bytes, expected"),
    (_escape, "not a sha256"),
])
def test_fetch_isnet_rejects_bad_chunks_without_writing(tmp_path, tamper, message):
    tarball = _fake_package(tmp_path, CHUNKS, tamper)
    listed = json.loads(tarfile.open(tarball).extractfile("package/dist/resources.json").read())
    victim = listed["/models/medium"]["chunks"][1]["hash"]
    dest = tmp_path / "weights" / "isnet-medium.onnx"
    with pytest.raises(RuntimeError, match=message) as failure:
        fetch_isnet(dest, tarball=tarball)
    assert victim in str(failure.value)
    assert not dest.parent.exists() or not any(dest.parent.iterdir())
