"""The platform's evaluation metrics: plain arithmetic over pluggable model backends.

This module is the executable form of the specification in README.md ("Metrics and
screening"). It never imports torch: a backend is anything with the methods below, so tests
drive it with a deterministic fake whose embeddings and detections they choose, and the
report drives it with open_clip / OWL-ViT / DINO (``gen4gen.models.clip``).

Definitions (per image; ``cos`` is the cosine similarity of L2-normalised embeddings):

- **CP-CLIP**: for each concept ``c`` named by the image's prompt, the detector searches for
  ``c``'s class name; the best box (highest score at or above the detector threshold) is grown
  by ``crop_padding`` of its width/height on each side and cropped; the concept's score is the
  mean over ``c``'s reference images ``r`` of ``cos(CLIP(crop), CLIP(r))``. A concept that is
  not found scores ``missing_score`` (default 0). The image's CP-CLIP is the mean over its
  concepts. When k concepts of one image share a class name, the k best boxes of that class
  (after non-maximum suppression) are matched to them greedily by similarity.
  Reported apart: the **detection rate** (found concepts / concepts; composition) and the mean
  similarity of the **detected** crops (personalisation).
- **TI-CLIP**: ``cos(CLIP(image), CLIP(prompt))`` with the prompt's concept tokens replaced by
  class names (:func:`class_prompt`), averaged separately over training-style prompts and
  held-out prompts; the **gap** (train - held-out) is the overfitting signal.
- **CLIP-T** (CustomConcept101 / CLIPScore convention): ``2.5 * max(cos(image, prompt), 0)``.
- **CLIP-I**: mean over the image's concepts of the mean over that concept's references of
  ``cos(CLIP(image), CLIP(r))`` (for one concept: the mean over generated x reference pairs).
- **DINO**: as CLIP-I with DINO embeddings (final CLS token), when a DINO model is configured.

Dataset figures are means over images (CP-CLIP, TI-CLIP, CLIP-T, CLIP-I, DINO) or pooled over
concept instances (detection rate, personalisation), overall and broken down by the number of
concepts per image and by composition (the sorted set of concepts).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
from PIL import Image


# ------------------------------------------------------------------ backends
@dataclass(frozen=True)
class Detection:
    """One detector box in pixel coordinates of the image it was found in."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float


class ClipBackend(Protocol):
    """Embeds images and texts into one space (rows need not be normalised; they are here)."""

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


class ImageEmbedder(Protocol):
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...


class DetectorBackend(Protocol):
    """For each image, for each class name asked for: the boxes found at or above its threshold."""

    def detect(self, images: Sequence[Image.Image],
               class_names: Sequence[Sequence[str]]) -> list[dict[str, list[Detection]]]: ...


# ------------------------------------------------------------------ arithmetic
def normalise(rows) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float64."""
    array = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)


def cosine(a, b) -> float:
    return float(normalise(a)[0] @ normalise(b)[0])


def mean_reference_similarity(embedding, references) -> float:
    """Mean over reference rows of the cosine between ``embedding`` and each reference."""
    refs = normalise(references)
    if refs.shape[0] == 0:
        raise ValueError("a concept has no reference images")
    return float(np.mean(refs @ normalise(embedding)[0]))


def clip_t(cos: float) -> float:
    """CLIPScore convention used by CustomConcept101: 2.5 * max(cos, 0)."""
    return 2.5 * max(float(cos), 0.0)


def pad_box(box: Sequence[float], padding: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``box`` grown by ``padding`` x its width/height on each side, clipped to ``size`` (w, h), integer."""
    width, height = size
    x0, y0, x1, y1 = (float(v) for v in box)
    dx, dy = padding * (x1 - x0), padding * (y1 - y0)
    left = max(0, int(math.floor(x0 - dx)))
    top = max(0, int(math.floor(y0 - dy)))
    right = min(width, int(math.ceil(x1 + dx)))
    bottom = min(height, int(math.ceil(y1 + dy)))
    # At least one pixel, even for a degenerate box on the edge.
    right, bottom = max(right, min(left + 1, width)), max(bottom, min(top + 1, height))
    left, top = min(left, right - 1), min(top, bottom - 1)
    return left, top, right, bottom


def crop(image: Image.Image, box: Sequence[float], padding: float) -> Image.Image:
    return image.crop(pad_box(box, padding, image.size))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def non_max_suppression(detections: Iterable[Detection], iou: float = 0.5) -> list[Detection]:
    """Highest score first; a box overlapping a kept one by more than ``iou`` is dropped."""
    kept: list[Detection] = []
    for det in sorted(detections, key=lambda d: -d.score):
        if all(box_iou(det.box, k.box) <= iou for k in kept):
            kept.append(det)
    return kept


def class_prompt(prompt: str, token_classes: Mapping[str, str]) -> str:
    """The prompt with concept tokens replaced by class names (TI-CLIP, CLIP-T).

    ``<new1> cat`` becomes ``cat`` (a token followed by its class name is dropped), a bare
    ``<new1>`` becomes its class name, and any other ``<...>`` token (a composition token,
    with a following "with") is removed.
    """
    text = prompt
    for token, class_name in sorted(token_classes.items(), key=lambda kv: -len(kv[0])):
        text = re.sub(re.escape(token) + r"\s+(?=" + re.escape(class_name) + r"\b)", "", text)
        text = text.replace(token, class_name)
    text = re.sub(r"<[^<>\s]+>(\s+with\b)?\s*", "", text)
    return re.sub(r"\s+", " ", text).strip()


def assign_detections(similarities: np.ndarray) -> list[int | None]:
    """Greedy matching of concepts (rows) to candidate boxes (columns) by highest similarity."""
    rows, cols = similarities.shape
    result: list[int | None] = [None] * rows
    taken_rows, taken_cols = set(), set()
    order = sorted(((similarities[i, j], i, j) for i in range(rows) for j in range(cols)), key=lambda t: (-t[0], t[1], t[2]))
    for _, i, j in order:
        if i in taken_rows or j in taken_cols:
            continue
        result[i] = j
        taken_rows.add(i)
        taken_cols.add(j)
    return result


# ------------------------------------------------------------------ evaluation sets
@dataclass
class EvalItem:
    """One image to evaluate: its concepts (keys), its prompt (class names, no tokens), its kind."""

    image_id: str
    concepts: list[str]
    prompt: str
    kind: str = "train"  # "train" or "held_out"
    composition: str | None = None  # defaults to the sorted concepts joined by "+"
    path: Path | None = None
    image: Image.Image | None = None

    def load(self) -> Image.Image:
        if self.image is not None:
            return self.image.convert("RGB")
        with Image.open(self.path) as handle:
            return handle.convert("RGB")

    @property
    def composition_key(self) -> str:
        return self.composition or "+".join(sorted(self.concepts))


@dataclass
class ConceptReference:
    class_name: str
    images: list[Image.Image] = field(default_factory=list)


@dataclass
class MetricParams:
    crop_padding: float = 0.1
    missing_score: float = 0.0
    nms_iou: float = 0.5


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def evaluate(items: Sequence[EvalItem], references: Mapping[str, ConceptReference], clip: ClipBackend,
             detector: DetectorBackend | None = None, dino: ImageEmbedder | None = None,
             params: MetricParams | None = None, chunk: int = 32,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Per-image scores and dataset summaries (overall, by concept count, by composition)."""
    params = params or MetricParams()
    needed = sorted({c for item in items for c in item.concepts})
    missing = [c for c in needed if c not in references or not references[c].images]
    if missing:
        raise ValueError(f"no reference images for concept(s) {', '.join(missing)}")
    ref_clip = {c: normalise(clip.embed_images(references[c].images)) for c in needed}
    ref_dino = {c: normalise(dino.embed_images(references[c].images)) for c in needed} if dino is not None else {}
    prompts = sorted({item.prompt for item in items})
    text_rows = normalise(clip.embed_texts(prompts)) if prompts else np.zeros((0, 1))
    text_of = dict(zip(prompts, text_rows))
    records = []
    for start in range(0, len(items), chunk):
        batch = list(items[start:start + chunk])
        images = [item.load() for item in batch]
        image_rows = normalise(clip.embed_images(images))
        dino_rows = normalise(dino.embed_images(images)) if dino is not None else None
        found = _find_concepts(batch, images, references, ref_clip, clip, detector, params) if detector else None
        for k, item in enumerate(batch):
            cos = float(image_rows[k] @ text_of[item.prompt])
            record = {
                "image_id": item.image_id, "composition": item.composition_key, "concepts": list(item.concepts),
                "kind": item.kind, "prompt": item.prompt, "file": str(item.path) if item.path else None,
                "ti_clip": cos, "clip_t": clip_t(cos),
                "clip_i": _mean(mean_reference_similarity(image_rows[k], ref_clip[c]) for c in item.concepts),
                "dino": (_mean(mean_reference_similarity(dino_rows[k], ref_dino[c]) for c in item.concepts)
                         if dino_rows is not None else None),
                "cp_clip": None, "concept_scores": [],
            }
            if found is not None:
                record["concept_scores"] = found[k]
                record["cp_clip"] = _mean(s["score"] for s in found[k])
            records.append(record)
        if progress is not None:
            progress(min(start + chunk, len(items)), len(items))
    return {"images": records, "summary": summarise(records), "breakdowns": breakdowns(records),
            "parameters": {"crop_padding": params.crop_padding, "missing_concept_score": params.missing_score,
                           "nms_iou": params.nms_iou}}


def _find_concepts(batch, images, references, ref_clip, clip, detector, params) -> list[list[dict]]:
    """Per image, per concept: the detection matched to it, its crop's similarity and its score."""
    queries = [sorted({references[c].class_name for c in item.concepts}) for item in batch]
    detections = detector.detect(images, queries)
    # Candidates: per image, per class, the k best boxes after NMS (k = concepts of that class).
    plans = []
    crops: list[Image.Image] = []
    for item, image, found in zip(batch, images, detections):
        groups: dict[str, list[str]] = {}
        for concept in item.concepts:
            groups.setdefault(references[concept].class_name, []).append(concept)
        plan = {}
        for class_name, members in groups.items():
            candidates = non_max_suppression(found.get(class_name, []), params.nms_iou)[:len(members)]
            first = len(crops)
            crops.extend(crop(image, d.box, params.crop_padding) for d in candidates)
            plan[class_name] = (members, candidates, first)
        plans.append(plan)
    crop_rows = normalise(clip.embed_images(crops)) if crops else np.zeros((0, 1))
    results = []
    for item, plan in zip(batch, plans):
        per_concept: dict[str, dict] = {}
        for class_name, (members, candidates, first) in plan.items():
            sims = np.array([[mean_reference_similarity(crop_rows[first + j], ref_clip[m])
                              for j in range(len(candidates))] for m in members]).reshape(len(members), len(candidates))
            match = assign_detections(sims) if candidates else [None] * len(members)
            for i, member in enumerate(members):
                j = match[i]
                if j is None:
                    per_concept[member] = {"concept": member, "class_name": class_name, "found": False,
                                           "detection_score": None, "box": None, "similarity": None,
                                           "score": params.missing_score}
                else:
                    det = candidates[j]
                    per_concept[member] = {"concept": member, "class_name": class_name, "found": True,
                                           "detection_score": float(det.score),
                                           "box": [round(float(v), 2) for v in det.box],
                                           "similarity": float(sims[i, j]), "score": float(sims[i, j])}
        results.append([per_concept[c] for c in item.concepts])
    return results


def summarise(records: Sequence[dict]) -> dict:
    """Dataset figures over per-image records (see the module docstring)."""
    concepts = [c for r in records for c in r["concept_scores"]]
    detected = [c for c in concepts if c["found"]]
    train = [r["ti_clip"] for r in records if r["kind"] == "train"]
    held_out = [r["ti_clip"] for r in records if r["kind"] == "held_out"]
    ti_train, ti_held = _mean(train), _mean(held_out)
    has_cp = any(r["cp_clip"] is not None for r in records)
    return {
        "images": len(records),
        "cp_clip": _mean(r["cp_clip"] for r in records) if has_cp else None,
        "detection_rate": (len(detected) / len(concepts)) if concepts else None,
        "personalisation": _mean(c["similarity"] for c in detected),
        "ti_clip": {"train": ti_train, "held_out": ti_held,
                    "gap": (ti_train - ti_held) if ti_train is not None and ti_held is not None else None,
                    "train_images": len(train), "held_out_images": len(held_out)},
        "clip_t": _mean(r["clip_t"] for r in records),
        "clip_i": _mean(r["clip_i"] for r in records),
        "dino": _mean(r["dino"] for r in records),
    }


def breakdowns(records: Sequence[dict]) -> dict:
    by_count: dict[int, list[dict]] = {}
    by_comp: dict[str, list[dict]] = {}
    for record in records:
        by_count.setdefault(len(record["concepts"]), []).append(record)
        by_comp.setdefault(record["composition"], []).append(record)
    return {"by_concept_count": {str(k): summarise(v) for k, v in sorted(by_count.items())},
            "by_composition": {k: summarise(v) for k, v in sorted(by_comp.items())}}
