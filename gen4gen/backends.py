"""One interface per model stage: the embedded backend and the paper's backends implement it.

Every backend has a ``name`` (what the stage records as its backend), ``identity()`` (the
details a lineage record needs: model, weights, device) and ``close()`` (drops what it holds,
so a step process frees the model as soon as the step is done). The Dagster resources in
:mod:`resources` build the configured backend and hand it out as ``resource.backend``.

The protocols are ``runtime_checkable``: ``isinstance(backend, Segmenter)`` checks that the
methods exist (not their signatures), which the tests use to hold every backend to its stage.
Only the standard library is imported here; the types named in the signatures are imported
for type checkers alone, so any module may import this one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from .captions import CaptionObject
    from .layout import Layout, ObjectSpec
    from .metrics import Detection
    from .recolour import RepaintRequest
    from .scenes import SceneSpec
    from .segmentation import SegmentationResult


@runtime_checkable
class Segmenter(Protocol):
    """Foreground segmentation (``[segmentation]``): IS-Net ONNX (embedded), IS-Net or BiRefNet in PyTorch."""

    name: str
    # Why this backend is not the configured one (weights missing), or None.
    fallback_warning: str | None

    def identity(self) -> dict: ...

    def segment(self, rgb: np.ndarray, alpha: np.ndarray | None = None) -> SegmentationResult: ...

    def close(self) -> None: ...


@runtime_checkable
class LayoutPlanner(Protocol):
    """Object layouts (``[layout]``): the rule-based planner (embedded) or an LLM endpoint."""

    name: str

    def identity(self) -> dict: ...

    def plan(self, composition: str, objects: list[ObjectSpec], n: int, seed: int, canvas_size: int,
             scenes: list[SceneSpec], first_index: int = 0) -> list[Layout]: ...

    def close(self) -> None: ...


@runtime_checkable
class Repainter(Protocol):
    """Background repainting (``[recolour]``): the scene bank (embedded) or SDXL inpainting + refiner.

    One call takes a batch, the shape both backends need; each result is the repainted HxWx3
    uint8 image and what was done to it.
    """

    name: str

    def identity(self) -> dict: ...

    def repaint(self, requests: list[RepaintRequest]) -> list[tuple[np.ndarray, dict]]: ...

    def close(self) -> None: ...


@runtime_checkable
class Captioner(Protocol):
    """Image retelling (``[caption]``): told from the layout (embedded), a local VLM or a VLM endpoint."""

    name: str

    def identity(self) -> dict: ...

    def describe(self, image: str | Path | Image.Image, objects: list[CaptionObject], background: str,
                 canvas: int) -> str: ...

    def close(self) -> None: ...


@runtime_checkable
class ImageEmbedder(Protocol):
    """Image embeddings (``[dino]``, and CLIP's image side): one row per image."""

    name: str

    def identity(self) -> dict: ...

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def close(self) -> None: ...


@runtime_checkable
class ClipEmbedder(ImageEmbedder, Protocol):
    """CLIP (``[clip]``): images and texts embedded into one space, L2-normalised rows."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class Detector(Protocol):
    """Open-vocabulary detection (``[detector]``): per image, per class name asked for, the
    boxes found at or above the configured threshold, best first."""

    name: str

    def identity(self) -> dict: ...

    def detect(self, images: Sequence[Image.Image],
               class_names: Sequence[Sequence[str]]) -> list[dict[str, list[Detection]]]: ...

    def close(self) -> None: ...
