"""One IS-Net session per process, shared by the segmentation resources, freed at their teardown.

The onnxruntime session is about 1.9 GB: a resource must not keep it until the garbage
collector reaches it. The checks run with the collector off, so only reference counting can
free the session.
"""
from __future__ import annotations

import gc
import weakref
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from gen4gen import segmentation
from gen4gen.models.common import SharedModels

ISNET_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "isnet" / "isnet-medium.onnx"
PHOTO = np.full((48, 64, 3), 200, np.uint8)


class FakeIsNet:
    """Stands in for IsNetOnnx: a centred square, and a ``session`` whose lifetime is observed."""

    loads = 0

    class Session:
        pass

    def __init__(self, weights_path, threads=2):
        FakeIsNet.loads += 1
        self.session = FakeIsNet.Session()

    def predict(self, rgb):
        alpha = np.zeros(rgb.shape[:2], np.float32)
        alpha[8:40, 16:48] = 1.0
        return alpha

    def close(self):
        self.session = None


@contextmanager
def _collector_off():
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _settings(tmp_path: Path, weights: Path):
    from resources import PipelineSettings

    config = tmp_path / "gen4gen.toml"
    config.write_text(f'[segmentation]\nbackend = "isnet_onnx"\nweights_path = "{weights}"\nrounds = 1\n')
    return PipelineSettings(config_file=str(config), data_dir=str(tmp_path / "data"))


@pytest.fixture
def fake_isnet(tmp_path, monkeypatch):
    weights = tmp_path / "fake-isnet.onnx"
    weights.write_bytes(b"not read: the fake model stands in")
    monkeypatch.setattr(segmentation, "IsNetOnnx", FakeIsNet)
    monkeypatch.setattr(segmentation, "ONNX_SESSIONS", SharedModels())
    FakeIsNet.loads = 0
    return weights


def test_two_resources_share_one_session_and_the_last_teardown_frees_it(tmp_path, fake_isnet):
    from resources import SegmentationResource

    settings = _settings(tmp_path, fake_isnet)
    first, second = SegmentationResource(settings=settings), SegmentationResource(settings=settings)
    with _collector_off():
        assert first.backend.segment(PHOTO).backend == "isnet_onnx"
        assert second.backend.segment(PHOTO).backend == "isnet_onnx"
        assert FakeIsNet.loads == 1, "the second resource reuses the first one's session"
        session = weakref.ref(segmentation.ONNX_SESSIONS.get(first.backend.session_key).session)
        first.teardown_after_execution(None)
        assert session() is not None, "still in use by the second resource"
        second.teardown_after_execution(None)
        assert session() is None, "freed at the last teardown, not by the garbage collector"
    # A later step loads it again.
    SegmentationResource(settings=settings).backend.segment(PHOTO)
    assert FakeIsNet.loads == 2


def test_dagster_tears_the_resource_down_after_the_step(tmp_path, fake_isnet):
    from dagster import build_resources

    from resources import SegmentationResource

    with _collector_off():
        with build_resources({"segmentation": SegmentationResource(settings=_settings(tmp_path, fake_isnet))}) as built:
            backend = built.segmentation.backend
            backend.segment(PHOTO)
            session = weakref.ref(segmentation.ONNX_SESSIONS.get(backend.session_key).session)
            del backend
            assert session() is not None
        assert session() is None


@pytest.mark.skipif(not ISNET_WEIGHTS.is_file(), reason="IS-Net weights absent (weights/isnet/): run `make weights`")
def test_the_real_onnx_session_is_freed_at_teardown(tmp_path):
    from resources import SegmentationResource

    resource = SegmentationResource(settings=_settings(tmp_path, ISNET_WEIGHTS))
    with _collector_off():
        resource.backend.segment(PHOTO)
        key = resource.backend.session_key
        session = weakref.ref(segmentation.ONNX_SESSIONS.get(key).session)
        assert session() is not None and segmentation.ONNX_SESSIONS.users(key) == 1
        resource.teardown_after_execution(None)
        assert session() is None and segmentation.ONNX_SESSIONS.users(key) == 0
