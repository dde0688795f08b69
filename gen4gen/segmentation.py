"""Object cut-outs: IS-Net (DIS) through onnxruntime, GrabCut when the weights are absent.

Pure functions on numpy arrays; onnxruntime and OpenCV are imported inside functions so
importing this module stays cheap. :class:`IsNetOnnxSegmenter` is the embedded
:class:`~gen4gen.backends.Segmenter`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from gen4gen.config import SegmentationConfig
from gen4gen.io import read_json, sha256_file
from gen4gen.models.common import SharedModels

# Connected components smaller than this fraction of the largest one are specks, dropped.
MIN_COMPONENT_FRACTION = 0.01
# Enclosed holes smaller than this fraction of the object are filled (a mug handle is larger).
MAX_HOLE_FRACTION = 0.01
# GrabCut's cost grows with pixel count; its mask is upscaled back from this long side.
GRABCUT_LONG_SIDE = 512

# IS-Net onnxruntime sessions of this process, shared by the segmenters using the same weights.
ONNX_SESSIONS = SharedModels()


class IsNetOnnx:
    """IS-Net exported to ONNX: 1024x1024 RGB in, sigmoid alpha out."""

    def __init__(self, weights_path: str | Path, threads: int = 2):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.use_deterministic_compute = True
        self.session = ort.InferenceSession(str(weights_path), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = next((i.name for i in inputs if i.name == "input"), inputs[0].name)
        # The first output is the final side-output; the 11 others are deep-supervision maps.
        self.output_name = next((o.name for o in outputs if o.name == "output"), outputs[0].name)
        shape = next(i.shape for i in inputs if i.name == self.input_name)
        static = len(shape) == 4 and all(isinstance(d, int) for d in shape[2:])
        self.size = (shape[3], shape[2]) if static else (1024, 1024)

    def close(self) -> None:
        self.session = None  # the session's memory goes with its last reference

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB -> HxW float32 alpha in [0, 1]."""
        import cv2

        rgb = check_rgb(rgb)
        height, width = rgb.shape[:2]
        resized = cv2.resize(rgb, self.size, interpolation=cv2.INTER_LINEAR).astype(np.float32)
        tensor = ((resized - 128.0) / 256.0).transpose(2, 0, 1)[None]
        (output,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(tensor)})
        alpha = cv2.resize(output[0, 0].astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        return np.clip(alpha, 0.0, 1.0)


def grabcut_mask(rgb: np.ndarray, margin: float = 0.05, iterations: int = 5) -> np.ndarray:
    """GrabCut from a rectangle ``margin`` inside the border: HxW float32 of 0.0 / 1.0."""
    import cv2

    rgb = check_rgb(rgb)
    height, width = rgb.shape[:2]
    scale = min(1.0, GRABCUT_LONG_SIDE / max(height, width))
    small = rgb
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    small_h, small_w = small.shape[:2]
    # At least one pixel of certain background, or GrabCut has no background model.
    dx, dy = max(1, round(small_w * margin)), max(1, round(small_h * margin))
    rect = (dx, dy, max(1, small_w - 2 * dx), max(1, small_h - 2 * dy))
    labels = np.zeros((small_h, small_w), np.uint8)
    background_model = np.zeros((1, 65), np.float64)
    foreground_model = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GMM initialisation uses k-means on OpenCV's global RNG
    cv2.grabCut(np.ascontiguousarray(small), labels, rect, background_model, foreground_model,
                iterations, cv2.GC_INIT_WITH_RECT)
    foreground = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.float32)
    if scale < 1.0:
        foreground = cv2.resize(foreground, (width, height), interpolation=cv2.INTER_LINEAR)
        foreground = (foreground >= 0.5).astype(np.float32)
    return foreground


def iterative_segment(rgb: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], rounds: int,
                      converge_iou: float, threshold: float) -> tuple[np.ndarray, int]:
    """Re-run ``predict`` on the cut-out composited onto white; alpha only ever shrinks.

    Returns the alpha (HxW float32) and the number of rounds run, fewer than ``rounds`` when
    two successive binary masks reach ``converge_iou``.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    rgb = check_rgb(rgb)
    alpha = np.asarray(predict(rgb), dtype=np.float32)
    rounds_run = 1
    while rounds_run < rounds:
        weight = alpha[..., None]
        composite = rgb.astype(np.float32) * weight + 255.0 * (1.0 - weight)
        composite = np.clip(composite + 0.5, 0, 255).astype(np.uint8)
        refined = np.minimum(alpha, np.asarray(predict(composite), dtype=np.float32))
        rounds_run += 1
        converged = _iou(alpha >= threshold, refined >= threshold) >= converge_iou
        alpha = refined
        if converged:
            break
    return alpha, rounds_run


@dataclass
class SegmentationResult:
    alpha: np.ndarray  # HxW uint8, 0..255
    mask: np.ndarray  # HxW uint8, 0 or 255: specks dropped, small holes filled
    backend: str  # "isnet_onnx" | "grabcut" | "existing_alpha"
    rounds_run: int
    warnings: list[str] = field(default_factory=list)


class IsNetOnnxSegmenter:
    """The embedded :class:`~gen4gen.backends.Segmenter`: IS-Net on onnxruntime, GrabCut without its weights.

    Chooses once, from whether the weights file exists. The onnxruntime session (about 1.9 GB)
    is loaded on the first photo and shared with every other segmenter of the process that
    uses the same weights; :meth:`close` gives it back, and the last one out frees it.
    """

    def __init__(self, config: SegmentationConfig, project_root: Path):
        self.config = config
        weights = Path(config.weights_path)
        self.weights_path = weights if weights.is_absolute() else Path(project_root) / weights
        # Fixed at construction so identity() and segment() can never disagree.
        self._has_weights = self.weights_path.is_file()
        self._model: IsNetOnnx | None = None
        self._weights_sha256: str | None = None

    @property
    def name(self) -> str:
        return "isnet_onnx" if self._has_weights else "grabcut"

    @property
    def fallback_warning(self) -> str | None:
        if self._has_weights:
            return None
        return (f"IS-Net weights not found at {self.weights_path}: falling back to OpenCV GrabCut, "
                "which is much less accurate. Run `make weights` (gen4gen fetch-weights) to obtain them.")

    def identity(self) -> dict:
        return {
            "backend": self.name,
            "weights_path": str(self.weights_path),
            "weights_sha256": self._weights_digest() if self._has_weights else None,
        }

    def segment(self, rgb: np.ndarray, alpha: np.ndarray | None = None) -> SegmentationResult:
        return segment_photo(rgb, alpha, self.config, "isnet_onnx",
                             self._predictor if self._has_weights else None, self.fallback_warning)

    def close(self) -> None:
        """Give the shared onnxruntime session back (freed when no other segmenter uses it)."""
        if self._model is not None:
            self._model = None
            ONNX_SESSIONS.release(self.session_key)

    @property
    def session_key(self) -> tuple:
        """This segmenter's key in ``ONNX_SESSIONS``: segmenters with the same key share a session."""
        return (str(self.weights_path.resolve()), self.config.threads)

    def _predictor(self):
        if self._model is None:
            self._model = ONNX_SESSIONS.acquire(self.session_key,
                                                lambda: IsNetOnnx(self.weights_path, threads=self.config.threads))
        return self._model.predict

    def _weights_digest(self) -> str:
        if self._weights_sha256 is None:
            sidecar = self.weights_path.with_suffix(".json")
            recorded = read_json(sidecar).get("sha256") if sidecar.is_file() else None
            self._weights_sha256 = recorded or sha256_file(self.weights_path)
        return self._weights_sha256




def segment_photo(rgb: np.ndarray, alpha: np.ndarray | None, config, backend: str, load_predict=None,
                  fallback_warning: str | None = None) -> SegmentationResult:
    """What every segmenter does: the photo's own alpha if it has one, else iterative rounds of
    the model (``load_predict()`` returns its predict function, loaded on first need), else
    GrabCut; then the mask clean-up."""
    rgb = check_rgb(rgb)
    notes: list[str] = []
    if alpha is not None and config.use_existing_alpha:
        soft, backend, rounds_run = _unit_alpha(alpha, rgb.shape[:2]), "existing_alpha", 0
    elif load_predict is not None:
        soft, rounds_run = iterative_segment(rgb, load_predict(), config.rounds, config.converge_iou,
                                             config.mask_threshold)
    else:
        soft = grabcut_mask(rgb, config.grabcut_margin, config.grabcut_iterations)
        backend, rounds_run = "grabcut", 1
        notes.append(fallback_warning)
    alpha8, mask = _finish(soft, config.mask_threshold)
    if not mask.any():
        notes.append(f"{backend} found no foreground object (no pixel at or above alpha {config.mask_threshold:g})")
    return SegmentationResult(alpha=alpha8, mask=mask, backend=backend, rounds_run=rounds_run, warnings=notes)


def make_cutout(rgb: np.ndarray, alpha_uint8: np.ndarray) -> np.ndarray:
    """HxWx4 uint8 RGBA from RGB and its alpha."""
    rgb = check_rgb(rgb)
    if alpha_uint8.shape != rgb.shape[:2]:
        raise ValueError(f"alpha is {alpha_uint8.shape}, image is {rgb.shape[:2]}")
    return np.dstack([rgb, alpha_uint8.astype(np.uint8)])


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), end-exclusive, of the nonzero pixels; None for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` itself, after checking that it is an HxWx3 uint8 image."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}")
    return rgb


def _unit_alpha(alpha: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if alpha.shape != shape:
        raise ValueError(f"alpha is {alpha.shape}, image is {shape}")
    if np.issubdtype(alpha.dtype, np.floating):
        return np.clip(alpha, 0.0, 1.0).astype(np.float32)
    return alpha.astype(np.float32) / 255.0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def _finish(soft: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """uint8 alpha and clean binary mask; the alpha follows the mask's clean-up."""
    binary = soft >= threshold
    mask = _clean_mask(binary)
    alpha = np.clip(soft * 255.0 + 0.5, 0, 255).astype(np.uint8)
    alpha[binary & ~mask] = 0  # dropped specks vanish from the cut-out too
    alpha[mask & ~binary] = 255  # filled holes become opaque
    return alpha, mask.astype(np.uint8) * 255


def _clean_mask(binary: np.ndarray) -> np.ndarray:
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    if count <= 1:
        return binary.copy()
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= MIN_COMPONENT_FRACTION * areas.max()) + 1
    mask = np.isin(labels, keep)
    # Holes are background components (4-connected, dual of 8) that do not touch the border.
    count, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    limit = MAX_HOLE_FRACTION * np.count_nonzero(mask)
    holes = [label for label in range(1, count)
             if label not in border and stats[label, cv2.CC_STAT_AREA] < limit]
    if holes:
        mask |= np.isin(labels, holes)
    return mask
