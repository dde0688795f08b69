"""Foreground segmentation with the paper's models in PyTorch: IS-Net (DIS) and BiRefNet.

``TorchSegmenter`` is a :class:`gen4gen.backends.Segmenter`, with the same iterative rounds and
mask clean-up as the embedded one; only the model differs. Missing weights raise
:class:`MissingWeightsError` (there is no silent fallback for the paper's backends). Models are
cached for the life of the process: a GPU worker keeps its model between steps by design.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from gen4gen.config import SegmentationConfig
from gen4gen.segmentation import SegmentationResult, check_rgb, segment_photo

from .common import WeightSpec, dtype_name, load_source, require, resolve_device, resolve_dtype

ISNET_HOW = ("download isnet-general-use.pth from the link in the xuebinqin/DIS README (Apache-2.0), or "
             "convert the embedded IS-Net ONNX weights into this file with `gen4gen convert-isnet`")

_CACHE: dict[tuple, object] = {}
_LOCK = threading.Lock()


def weight_specs(config: SegmentationConfig) -> list[WeightSpec]:
    if config.backend == "isnet_torch":
        return [WeightSpec("segmentation", "IS-Net checkpoint (isnet-general-use.pth)", config.isnet_checkpoint,
                           single_file=True, how=ISNET_HOW, config_key="segmentation.isnet_checkpoint")]
    if config.backend == "birefnet":
        return [WeightSpec("segmentation", "BiRefNet", config.birefnet_model, required=("config.json",),
                           config_key="segmentation.birefnet_model")]
    return []


class IsNetTorch:
    """IS-Net from a PyTorch state dict; ``predict`` follows the official DIS inference."""

    def __init__(self, checkpoint: Path, device, dtype, input_size: int = 1024):
        import torch

        from .isnet_arch import ISNetDIS

        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
        model = ISNetDIS()
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise RuntimeError(
                f"{checkpoint} is not an IS-Net (isnet-general-use) checkpoint: "
                f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
                f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})")
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype, self.input_size = device, dtype, input_size

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> HxW float32 in [0, 1]: resize to the input size, x/255 - 0.5, min-max
        normalise the finest side output (as the DIS inference script does), resize back."""
        import torch
        import torch.nn.functional as F

        rgb = check_rgb(rgb)
        height, width = rgb.shape[:2]
        with torch.inference_mode():
            x = torch.from_numpy(rgb.copy()).to(self.device).permute(2, 0, 1)[None].float()
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
            x = (x / 255.0 - 0.5).to(self.dtype)
            out = self.model(x)[0].float()
            out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
            low, high = out.min(), out.max()
            out = (out - low) / (high - low) if float(high - low) > 1e-6 else torch.zeros_like(out)
            return out.clamp(0, 1).cpu().numpy().astype(np.float32)


class BiRefNetModel:
    """BiRefNet through ``AutoModelForImageSegmentation`` (its code ships with the weights)."""

    MEAN = np.array([0.485, 0.456, 0.406], np.float32)
    STD = np.array([0.229, 0.224, 0.225], np.float32)

    def __init__(self, source: str, load_kwargs: dict, device, dtype, input_size: int = 1024):
        from transformers import AutoModelForImageSegmentation

        model = AutoModelForImageSegmentation.from_pretrained(source, trust_remote_code=True, **load_kwargs)
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype, self.input_size = device, dtype, input_size

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """As the model card: resize to the input size, ImageNet normalisation, the last
        prediction through a sigmoid, resized back."""
        import cv2
        import torch
        import torch.nn.functional as F

        rgb = check_rgb(rgb)
        height, width = rgb.shape[:2]
        resized = cv2.resize(rgb, (self.input_size, self.input_size), interpolation=cv2.INTER_LINEAR)
        x = ((resized.astype(np.float32) / 255.0 - self.MEAN) / self.STD).transpose(2, 0, 1)[None]
        with torch.inference_mode():
            preds = self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype))
            logits = preds[-1] if isinstance(preds, (list, tuple)) else getattr(preds, "logits", preds)
            out = torch.sigmoid(logits.float())
            out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
            return out.clamp(0, 1).cpu().numpy().astype(np.float32)


class TorchSegmenter:
    """IS-Net or BiRefNet in PyTorch: the paper profile's :class:`~gen4gen.backends.Segmenter`."""

    fallback_warning = None  # the paper's backends never fall back silently

    def __init__(self, config: SegmentationConfig, project_root: Path):
        if config.backend not in ("isnet_torch", "birefnet"):
            raise ValueError(f"TorchSegmenter does not run backend {config.backend!r}")
        self.config = config
        self.project_root = Path(project_root)
        self._model = None
        self._located = None
        self._device_note = None
        self._digest = None

    @property
    def name(self) -> str:
        return self.config.backend

    def load(self) -> "TorchSegmenter":
        """Build (or reuse, per process) the model; raises MissingWeightsError when absent."""
        if self._model is not None:
            return self
        config = self.config
        (self._located,) = require(weight_specs(config), self.project_root)
        device = resolve_device(config.device)
        dtype, self._device_note = resolve_dtype(config.dtype, device)
        source = str(self._located.path or self._located.spec.source)
        key = (config.backend, source, str(device), str(dtype), config.input_size)
        with _LOCK:
            if key not in _CACHE:
                if config.backend == "isnet_torch":
                    _CACHE[key] = IsNetTorch(self._located.path, device, dtype, config.input_size)
                else:
                    name, kwargs = load_source(self._located)
                    _CACHE[key] = BiRefNetModel(name, kwargs, device, dtype, config.input_size)
            self._model = _CACHE[key]
        return self

    def identity(self) -> dict:
        self.load()
        located = self._located
        identity = {"backend": self.name, "weights": located.hub_id or str(located.path),
                    "device": str(self._model.device), "dtype": dtype_name(self._model.dtype)}
        if self.config.backend == "isnet_torch":
            if self._digest is None:
                from gen4gen.io import sha256_file

                self._digest = sha256_file(located.path)
            identity["weights_sha256"] = self._digest
        if self._device_note:
            identity["note"] = self._device_note
        return identity

    def segment(self, rgb: np.ndarray, alpha: np.ndarray | None = None) -> SegmentationResult:
        return segment_photo(rgb, alpha, self.config, self.config.backend, self._predictor)

    def close(self) -> None:
        """Drop this segmenter's hold on the model (the per-process cache keeps it for the next step)."""
        self._model = None

    def _predictor(self):
        self.load()
        return self._model.predict
