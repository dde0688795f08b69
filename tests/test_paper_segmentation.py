"""The paper's segmentation backends in PyTorch: IS-Net (isnet-general-use keys) and BiRefNet."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gen4gen.config import PROJECT_ROOT, SegmentationConfig
from gen4gen.models.common import MissingWeightsError

from . import paper_models
from .conftest import object_photo

ONNX = PROJECT_ROOT / "weights" / "isnet" / "isnet-medium.onnx"


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "paper_models"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(object_photo("ellipse", (200, 40, 40), size=(120, 90), transparent=False))


def _segmenter(**values):
    from gen4gen.models.segmentation_torch import TorchSegmenter

    return TorchSegmenter(SegmentationConfig(device="cpu", input_size=64, **values), PROJECT_ROOT)


def test_isnet_architecture_has_the_official_module_names():
    from gen4gen.models.isnet_arch import ISNetDIS

    keys = ISNetDIS().state_dict().keys()
    # Spot checks of the official isnet-general-use.pth key names and their shapes' origin.
    for key in ["conv_in.weight", "stage1.rebnconvin.conv_s1.weight", "stage1.rebnconv7.bn_s1.running_var",
                "stage1.rebnconv6d.conv_s1.bias", "stage5.rebnconv4.conv_s1.weight", "stage5d.rebnconv3d.bn_s1.weight",
                "stage1d.rebnconv1d.conv_s1.weight", "side6.bias"]:
        assert key in keys
    assert sum(p.numel() for p in ISNetDIS().parameters()) == pytest.approx(44.0e6, rel=0.01)


def test_isnet_checkpoint_loads_and_segments(models_root, photo):
    checkpoint = paper_models.isnet_checkpoint(models_root)
    segmenter = _segmenter(backend="isnet_torch", isnet_checkpoint=str(checkpoint), rounds=2)
    first = segmenter.segment(photo)
    assert first.alpha.shape == photo.shape[:2] and first.mask.shape == photo.shape[:2]
    assert first.backend == "isnet_torch" and 1 <= first.rounds_run <= 2
    again = _segmenter(backend="isnet_torch", isnet_checkpoint=str(checkpoint), rounds=2).segment(photo)
    assert np.array_equal(first.alpha, again.alpha)  # deterministic (and the model is reused)
    identity = segmenter.identity()
    assert identity["backend"] == "isnet_torch" and len(identity["weights_sha256"]) == 64
    assert identity["device"] == "cpu" and identity["dtype"] == "float32"
    # A photo with real transparency keeps using its own alpha, as in the embedded backend.
    rgba = np.asarray(object_photo("ellipse", (200, 40, 40), size=(120, 90)))
    assert segmenter.segment(rgba[..., :3], rgba[..., 3]).backend == "existing_alpha"


def test_missing_or_foreign_checkpoints_fail_with_names(tmp_path):
    with pytest.raises(MissingWeightsError, match="isnet-general-use.pth.*does not exist.*convert-isnet"):
        _segmenter(backend="isnet_torch", isnet_checkpoint=str(tmp_path / "absent.pth")).load()
    import torch

    foreign = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(RuntimeError, match="not an IS-Net .* checkpoint"):
        _segmenter(backend="isnet_torch", isnet_checkpoint=str(foreign)).load()


@pytest.mark.skipif(not ONNX.is_file(), reason="IS-Net ONNX weights absent (make weights)")
def test_pytorch_isnet_matches_onnxruntime_on_the_real_weights(tmp_path):
    """The strongest check of the architecture: the real IS-Net weights, read out of the ONNX
    export into the PyTorch network, give the ONNX model's output (fp16 weights: small error)."""
    import cv2
    import skimage.data
    import torch

    from gen4gen.models.isnet_arch import ISNetDIS
    from gen4gen.models.isnet_onnx_import import convert_onnx_to_checkpoint
    from gen4gen.segmentation import IsNetOnnx

    checkpoint = convert_onnx_to_checkpoint(ONNX, tmp_path / "isnet.pth")
    model = ISNetDIS().eval()
    model.load_state_dict(torch.load(checkpoint, weights_only=True), strict=True)
    rgb = skimage.data.chelsea()
    expected = IsNetOnnx(ONNX).predict(rgb)
    x = cv2.resize(rgb, (1024, 1024), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    with torch.inference_mode():
        out = model(torch.from_numpy(((x - 128.0) / 256.0).transpose(2, 0, 1)[None].copy()))[0][0, 0].numpy()
    actual = np.clip(cv2.resize(out, rgb.shape[1::-1], interpolation=cv2.INTER_LINEAR), 0, 1)
    assert np.abs(actual - expected).max() < 0.01
    assert ((actual > 0.5) == (expected > 0.5)).mean() > 0.999


def test_birefnet_through_transformers_remote_code(models_root, photo, tmp_path, monkeypatch):
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))  # not ~/.cache
    folder = paper_models.birefnet(models_root)
    segmenter = _segmenter(backend="birefnet", birefnet_model=str(folder), rounds=1)
    result = segmenter.segment(photo)
    assert result.alpha.shape == photo.shape[:2] and result.backend == "birefnet"
    assert segmenter.identity()["weights"] == str(folder)
    with pytest.raises(MissingWeightsError, match="BiRefNet.*lacks config.json"):
        _segmenter(backend="birefnet", birefnet_model=str(tmp_path)).load()


def test_resource_selects_the_backend_by_configuration(models_root, tmp_path, monkeypatch):
    from resources import PipelineSettings, SegmentationResource

    checkpoint = paper_models.isnet_checkpoint(models_root)
    config = tmp_path / "g.toml"
    config.write_text(f'profile = "paper"\n[segmentation]\nisnet_checkpoint = "{checkpoint}"\ninput_size = 64\n'
                      'device = "cpu"\n')
    resource = SegmentationResource(settings=PipelineSettings(config_file=str(config)))
    assert resource.backend.name == "isnet_torch" and resource.backend.fallback_warning is None
    config.write_text('[segmentation]\nbackend = "isnet_onnx"\n')
    resource = SegmentationResource(settings=PipelineSettings(config_file=str(config)))
    assert resource.backend.name in ("isnet_onnx", "grabcut")
