"""CLIP (open_clip), the open-vocabulary detector (OWL-ViT / OWLv2) and DINO, for screening and metrics.

The backends implement :class:`~gen4gen.backends.ClipEmbedder`, :class:`~gen4gen.backends.Detector`
and :class:`~gen4gen.backends.ImageEmbedder`. Importing this module is cheap: torch, open_clip
and transformers are imported inside the loaders. Loaded models are kept for the life of the
process (keyed by their configuration), so a Dagster step process, a GPU worker or a test
session loads each model once; :func:`clear_cache` drops them. Where the weights come from is
:mod:`gen4gen.models.clip_weights`.

Weights are never downloaded when ``HF_HUB_OFFLINE=1``: a missing model raises
:class:`~gen4gen.models.common.MissingWeightsError` naming it and how to obtain it.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

# Re-exported: the weights preflight and callers locate weights through this module.
from .clip_weights import (OpenClipSource, detector_weight_spec, dino_weight_spec, open_clip_advice,
                           pretrained_table, resolve_open_clip, weight_specs)
from .common import MissingWeightsError, dtype_name, load_source, locate, map_in_batches, resolve_device, resolve_dtype

__all__ = ["DinoEmbedder", "OpenClipBackend", "OpenClipSource", "OwlDetector", "clear_cache", "detector_weight_spec",
           "dino_weight_spec", "load_clip", "load_detector", "load_dino", "pretrained_table", "resolve_open_clip",
           "weight_specs"]

_CACHE: dict[str, object] = {}
_LOCK = threading.Lock()
_OPEN_CLIP_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _cached(kind: str, config, project_root: Path, loader):
    key = json.dumps([kind, config.model_dump(mode="json"), str(project_root)], sort_keys=True)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = loader(config, project_root)
        return _CACHE[key]


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def load_clip(config, project_root: Path):
    """The configured CLIP backend (``[clip]``), or None when ``backend = "none"``."""
    if config.backend == "none":
        return None
    return _cached("clip", config, project_root, _load_open_clip)


def load_detector(config, project_root: Path):
    """The configured detector (``[detector]``), or None when ``backend = "none"``."""
    if config.backend == "none":
        return None
    return _cached("detector", config, project_root, _load_owl)


def load_dino(config, project_root: Path):
    """The configured DINO embedder (``[dino]``), or None when ``backend = "none"``."""
    if config.backend == "none":
        return None
    return _cached("dino", config, project_root, _load_dino)


def _rgb(images):
    return [image.convert("RGB") if image.mode != "RGB" else image for image in images]


# ------------------------------------------------------------------ open_clip
class OpenClipBackend:
    """Image and text embeddings from an open_clip model (L2-normalised float32 rows)."""

    name = "open_clip"

    def __init__(self, model, preprocess, tokenizer, device, dtype, batch_size: int, identity: dict):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self._identity = identity

    def identity(self) -> dict:
        return dict(self._identity)

    def close(self) -> None:
        """Nothing to release here: the model stays in the per-process cache (``clear_cache`` drops it)."""

    def _encode(self, fn, batch):
        import torch

        with torch.inference_mode():
            rows = fn(batch).float()
            rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return list(rows.cpu().numpy())

    def embed_images(self, images: Sequence) -> np.ndarray:
        import torch

        def run(batch):
            pixels = torch.stack([self.preprocess(image) for image in _rgb(batch)]).to(self.device, self.dtype)
            return self._encode(self.model.encode_image, pixels)

        rows, _ = map_in_batches(list(images), run, self.batch_size)
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        def run(batch):
            tokens = self.tokenizer(list(batch)).to(self.device)
            return self._encode(self.model.encode_text, tokens)

        rows, _ = map_in_batches(list(texts), run, self.batch_size)
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)


def _load_open_clip(config, project_root: Path) -> OpenClipBackend:
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - the paper extra is not installed
        raise MissingWeightsError([f"CLIP: open_clip is not installed ({exc}); `pip install -e .[paper]`"]) from exc

    device = resolve_device(config.device)
    dtype, _note = resolve_dtype(config.dtype, device)
    source = resolve_open_clip(config, open_clip)
    identity = {"backend": "open_clip", "model": config.model, "pretrained": config.pretrained,
                "device": str(device), "dtype": dtype_name(dtype)}
    if source.weights:
        identity["weights"] = source.weights
    kwargs = dict(source.kwargs, precision=_OPEN_CLIP_PRECISION[dtype_name(dtype)], device=device)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(source.model_name, pretrained=source.pretrained,
                                                                     **kwargs)
        tokenizer = open_clip.get_tokenizer(source.model_name)
    except Exception as exc:  # download failures, missing files, wrong checkpoints
        raise MissingWeightsError([f"CLIP {source.model_name} (pretrained {source.pretrained or config.pretrained!r}) "
                                   f"could not be loaded: {type(exc).__name__}: {exc}; "
                                   + open_clip_advice(config.model, config.pretrained, source.tag_cfg)]) from exc
    model.eval()
    return OpenClipBackend(model, preprocess, tokenizer, device, dtype, config.batch_size, identity)


# ------------------------------------------------------------------ OWL-ViT / OWLv2
class OwlDetector:
    """Open-vocabulary detection: per image, per class name, the boxes scoring at least ``threshold``.

    Each class name is its own query (``query_template``), and a box's score for a class is the
    sigmoid of its logit for that query, so a class is searched for independently of the others.
    """

    def __init__(self, model, processor, device, dtype, threshold: float, template: str, batch_size: int,
                 square_padded: bool, identity: dict, max_per_class: int = 50):
        self.model, self.processor = model, processor
        self.device, self.dtype = device, dtype
        self.threshold, self.template, self.batch_size = threshold, template, batch_size
        self.square_padded = square_padded  # OWLv2 pads images to a square before resizing
        self.max_per_class = max_per_class
        self._identity = identity
        self.name = identity["backend"]

    def identity(self) -> dict:
        return dict(self._identity)

    def close(self) -> None:
        """Nothing to release here: the model stays in the per-process cache (``clear_cache`` drops it)."""

    def detect(self, images: Sequence, class_names: Sequence[Sequence[str]]):
        from gen4gen.metrics import Detection

        work = list(zip(_rgb(images), [list(q) for q in class_names]))

        def run(batch):
            import torch

            width = max(1, max(len(q) for _, q in batch))
            # Every image gets the same number of queries (repeats are ignored afterwards).
            texts = [[self.template.format(class_name=c) for c in (q + [q[-1] if q else "object"] * width)[:width]]
                     for _, q in batch]
            max_length = getattr(self.model.config.text_config, "max_position_embeddings", 16)
            inputs = self.processor(text=texts, images=[image for image, _ in batch], return_tensors="pt",
                                    padding="max_length", truncation=True, max_length=max_length)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            with torch.inference_mode():
                outputs = self.model(**inputs)
            scores = torch.sigmoid(outputs.logits.float()).cpu().numpy()  # (B, boxes, queries)
            boxes = outputs.pred_boxes.float().cpu().numpy()  # (B, boxes, 4) cx, cy, w, h in [0, 1]
            results = []
            for k, (image, queries) in enumerate(batch):
                w, h = image.size
                sx, sy = (max(w, h), max(w, h)) if self.square_padded else (w, h)
                cx, cy, bw, bh = boxes[k].T
                corners = np.stack([(cx - bw / 2) * sx, (cy - bh / 2) * sy, (cx + bw / 2) * sx, (cy + bh / 2) * sy], 1)
                corners = np.clip(corners, 0, [w, h, w, h])
                found = {}
                for q, class_name in enumerate(queries):
                    column = scores[k, :, q]
                    keep = np.flatnonzero(column >= self.threshold)
                    keep = keep[np.argsort(-column[keep], kind="stable")][:self.max_per_class]
                    found[class_name] = [Detection(tuple(float(v) for v in corners[i]), float(column[i])) for i in keep
                                         if corners[i, 2] > corners[i, 0] and corners[i, 3] > corners[i, 1]]
                results.append(found)
            return results

        results, _ = map_in_batches(work, run, self.batch_size)
        return results


def _load_owl(config, project_root: Path) -> OwlDetector:
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover
        raise MissingWeightsError([f"detector: transformers is not installed ({exc}); `pip install -e .[paper]`"]) from exc
    spec = detector_weight_spec(config)
    what = spec.what
    located = locate(spec, project_root)
    if located.problem:
        raise MissingWeightsError([located.problem])
    source, kwargs = load_source(located)
    if config.backend == "owlvit":
        model_cls, processor_cls = transformers.OwlViTForObjectDetection, transformers.OwlViTProcessor
    else:
        model_cls, processor_cls = transformers.Owlv2ForObjectDetection, transformers.Owlv2Processor
    device = resolve_device(config.device)
    dtype, _note = resolve_dtype(config.dtype, device)
    try:
        model = model_cls.from_pretrained(source, dtype=dtype, **kwargs).to(device).eval()
        processor = processor_cls.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise MissingWeightsError([f"{what}: {source} could not be loaded ({exc})"]) from exc
    identity = {"backend": config.backend, "model": config.model, "threshold": config.threshold,
                "query_template": config.query_template, "device": str(device), "dtype": dtype_name(dtype)}
    return OwlDetector(model, processor, device, dtype, config.threshold, config.query_template, config.batch_size,
                       square_padded=config.backend == "owlv2", identity=identity)


# ------------------------------------------------------------------ DINO
class DinoEmbedder:
    """Image embeddings from a transformers vision model: the final CLS token, L2-normalised."""

    name = "transformers"  # dino.backend

    def __init__(self, model, processor, device, dtype, batch_size: int, identity: dict):
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype
        self.batch_size = batch_size
        self._identity = identity

    def identity(self) -> dict:
        return dict(self._identity)

    def close(self) -> None:
        """Nothing to release here: the model stays in the per-process cache (``clear_cache`` drops it)."""

    def embed_images(self, images: Sequence) -> np.ndarray:
        import torch

        def run(batch):
            pixels = self.processor(images=_rgb(batch), return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
            with torch.inference_mode():
                cls = self.model(pixel_values=pixels).last_hidden_state[:, 0].float()
                cls = cls / cls.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return list(cls.cpu().numpy())

        rows, _ = map_in_batches(list(images), run, self.batch_size)
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)


def _load_dino(config, project_root: Path) -> DinoEmbedder:
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover
        raise MissingWeightsError([f"DINO: transformers is not installed ({exc}); `pip install -e .[paper]`"]) from exc
    spec = dino_weight_spec(config)
    located = locate(spec, project_root)
    if located.problem:
        raise MissingWeightsError([located.problem])
    source, kwargs = load_source(located)
    device = resolve_device(config.device)
    dtype, _note = resolve_dtype(config.dtype, device)
    try:
        model = transformers.AutoModel.from_pretrained(source, dtype=dtype, **kwargs).to(device).eval()
        processor = transformers.AutoImageProcessor.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise MissingWeightsError([f"DINO image encoder: {source} could not be loaded ({exc})"]) from exc
    identity = {"backend": "transformers", "model": config.model, "device": str(device), "dtype": dtype_name(dtype)}
    return DinoEmbedder(model, processor, device, dtype, config.batch_size, identity)
