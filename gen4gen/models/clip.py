"""CLIP (open_clip), the open-vocabulary detector (OWL-ViT / OWLv2) and DINO, for screening and metrics.

The backends implement the protocols of :mod:`gen4gen.metrics`. Importing this module is cheap:
torch, open_clip and transformers are imported inside the loaders. Loaded models are kept per
process (keyed by their configuration), so a Dagster step process or a test session loads each
model once.

Weights are never downloaded when ``HF_HUB_OFFLINE=1``: a missing model raises
:class:`~gen4gen.models.common.MissingWeightsError` naming it and how to obtain it.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .common import (MissingWeightsError, WeightSpec, dtype_name, hf_offline, load_source, locate, map_in_batches,
                     resolve_device, resolve_dtype)

_CACHE: dict[str, object] = {}
_LOCK = threading.Lock()
_OPEN_CLIP_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
# Weight files open_clip looks for in a folder, in its order of preference.
_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                    "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "model.pth")


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


def _open_clip_how(model: str, tag: str | None, tag_cfg: dict | None) -> str:
    hub = (tag_cfg or {}).get("hf_hub", "")
    parts = []
    if hub:
        repo, filename = hub.rstrip("/"), "open_clip_pytorch_model.bin"
        if not hub.endswith("/"):
            repo, filename = hub.rsplit("/", 1)
        parts.append(f"on a machine with internet run `hf download {repo} {filename}` and copy the Hugging Face "
                     f"cache here, or point clip.weights_path at that file (keeping clip.model = {model!r} and "
                     f"clip.pretrained = {tag!r})")
    elif (tag_cfg or {}).get("url"):
        parts.append(f"download {tag_cfg['url']} and point clip.weights_path at it")
    parts.append("see README.md, 'Metrics and screening' for the supported backbones")
    return "; ".join(parts)


@dataclass
class OpenClipSource:
    """Where configured CLIP weights come from, as ``open_clip.create_model_and_transforms`` takes them."""

    model_name: str
    pretrained: str | None
    kwargs: dict  # force_quick_gelu / force_preprocess_cfg matching the weights
    tag_cfg: dict | None
    weights: str | None = None  # a local file or folder, when configured
    will_download: bool = False  # online and not cached: open_clip fetches it on first use


def pretrained_table():
    """open_clip's table of pretrained tags (``get_pretrained_cfg``, ``list_pretrained_tags_by_model``).

    Loaded without open_clip's package init, which imports every model (≈ 6 s here), so the
    weights preflight stays fast; the whole package is the fallback.
    """
    name = "_gen4gen_open_clip_tables"
    if name + ".pretrained" in sys.modules:
        return sys.modules[name + ".pretrained"]
    try:
        spec = importlib.util.find_spec("open_clip")
        package = types.ModuleType(name)
        package.__path__ = [str(Path(spec.origin).parent)]
        sys.modules[name] = package
        return importlib.import_module(name + ".pretrained")
    except Exception:  # pragma: no cover - open_clip laid out differently: import it whole
        sys.modules.pop(name, None)
        import open_clip

        return open_clip


def resolve_open_clip(config, table) -> OpenClipSource:
    """The configured CLIP weights, located without loading them; MissingWeightsError if absent."""
    from gen4gen.config import resolve_path

    model_name, tag = config.model, config.pretrained
    tag_cfg = table.get_pretrained_cfg(model_name, tag) if tag and ":" not in model_name else None
    matching = {}
    if tag_cfg:  # a known tag's weights: its activation and normalisation must be used with them
        matching = {"force_quick_gelu": bool(tag_cfg.get("quick_gelu", False)),
                    "force_preprocess_cfg": {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
                                             if k in tag_cfg}}
    if config.weights_path:
        path = resolve_path(config.weights_path)
        if not path.exists():
            raise MissingWeightsError([f"CLIP ({model_name}): clip.weights_path {path} does not exist; "
                                       + _open_clip_how(model_name, tag, tag_cfg)])
        if path.is_dir() and (path / "open_clip_config.json").is_file():
            return OpenClipSource(f"local-dir:{path}", None, {}, tag_cfg, str(path))
        weights = path
        if path.is_dir():
            weights = next((path / f for f in _OPEN_CLIP_FILES if (path / f).is_file()), None)
            if weights is None:
                raise MissingWeightsError([f"CLIP ({model_name}): folder {path} (clip.weights_path) has neither "
                                           f"open_clip_config.json nor a weight file ({', '.join(_OPEN_CLIP_FILES)})"])
        return OpenClipSource(model_name, str(weights), matching, tag_cfg, str(path))
    if model_name.startswith("local-dir:"):
        folder = resolve_path(model_name.split(":", 1)[1])
        if not (folder / "open_clip_config.json").is_file():
            raise MissingWeightsError([f"CLIP: {folder} (clip.model) has no open_clip_config.json"])
        return OpenClipSource(model_name, None, {}, None, str(folder))
    if model_name.startswith("hf-hub:"):
        spec = WeightSpec(stage="clip", what="CLIP", source=model_name.split(":", 1)[1],
                          required=("open_clip_config.json",), config_key="clip.model")
        located = locate(spec, Path.cwd())
        if located.problem:
            raise MissingWeightsError([located.problem])
        return OpenClipSource(model_name, None, {}, None, will_download=located.will_download)
    if not tag:
        raise MissingWeightsError([f"CLIP ({model_name}): no weights configured; set clip.pretrained to a tag "
                                   f"(e.g. 'openai') or clip.weights_path to a local checkpoint"])
    if not tag_cfg:
        if Path(tag).is_file():
            return OpenClipSource(model_name, tag, {}, None, tag)
        known = table.list_pretrained_tags_by_model(model_name)
        raise MissingWeightsError([f"CLIP: {tag!r} is not a pretrained tag of {model_name!r} (known: "
                                   f"{', '.join(known) or 'none; check clip.model'}), and not a file"])
    cached = _cached_tag_file(tag_cfg["hf_hub"]) if tag_cfg.get("hf_hub") else None
    if cached is not None:
        return OpenClipSource(model_name, cached, matching, tag_cfg)
    if hf_offline():
        raise MissingWeightsError([f"CLIP {model_name}/{tag}: not in the Hugging Face cache and "
                                   f"HF_HUB_OFFLINE=1; " + _open_clip_how(model_name, tag, tag_cfg)])
    # Online: open_clip downloads the tag. It only warns when a tag was trained with QuickGELU
    # (OpenAI's) and the architecture name lacks it; the activation must match the weights.
    return OpenClipSource(model_name, tag, {"force_quick_gelu": matching["force_quick_gelu"]}, tag_cfg,
                          will_download=True)


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
                                   + _open_clip_how(config.model, config.pretrained, source.tag_cfg)]) from exc
    model.eval()
    return OpenClipBackend(model, preprocess, tokenizer, device, dtype, config.batch_size, identity)


def _cached_tag_file(hub: str) -> str | None:
    from huggingface_hub import hf_hub_download

    repo, filename = (hub.rstrip("/"), "open_clip_pytorch_model.bin") if hub.endswith("/") else hub.rsplit("/", 1)
    for name in ([filename] if not hub.endswith("/") else ["open_clip_model.safetensors", filename]):
        try:
            return hf_hub_download(repo, name, local_files_only=True)
        except Exception:  # not cached
            continue
    return None


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


def detector_weight_spec(config) -> WeightSpec:
    what = {"owlvit": "OWL-ViT detector", "owlv2": "OWLv2 detector"}.get(config.backend, "detector")
    return WeightSpec(stage="detector", what=what, source=config.model, required=("config.json",),
                      config_key="detector.model",
                      how="OWL-ViT: google/owlvit-base-patch32 (Apache-2.0); OWLv2: google/owlv2-base-patch16-ensemble")


def dino_weight_spec(config) -> WeightSpec:
    return WeightSpec(stage="dino", what="DINO image encoder", source=config.model, required=("config.json",),
                      config_key="dino.model", how="CustomConcept101 uses facebook/dino-vits16 (Apache-2.0)")


def weight_specs(config) -> list[WeightSpec]:
    """The detector's and DINO's weights, where configured (``config``: the whole PipelineConfig).
    CLIP's are located by :func:`resolve_open_clip` (open_clip names them by tag)."""
    return (([detector_weight_spec(config.detector)] if config.detector.backend != "none" else [])
            + ([dino_weight_spec(config.dino)] if config.dino.backend != "none" else []))


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

    name = "dino"

    def __init__(self, model, processor, device, dtype, batch_size: int, identity: dict):
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype
        self.batch_size = batch_size
        self._identity = identity

    def identity(self) -> dict:
        return dict(self._identity)

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
