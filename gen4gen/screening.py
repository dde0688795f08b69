"""Semi-automated screening of MyCanvas candidates (the paper's curation), after the geometric checks.

When a CLIP backend or a detector is configured (``[screening]``), every candidate that passes
the geometric checks is scored:

- **caption score**: cosine similarity of CLIP's image and caption embeddings (DataComp's CLIP
  score) for the caption named by ``screening.caption``;
- **concept similarity**: per concept, the crop of its *known* box (grown by
  ``evaluation.crop_padding``) against that concept's reference images, mean cosine over the
  references; the image's figure is its lowest concept;
- **detection**: per concept, the best detector score for its class name among boxes that
  overlap its known box by at least ``screening.detection_min_iou`` (0: anywhere).

Thresholds are absolute (``min``) or a top fraction of the candidates (``top_fraction``,
DataComp style), or both. Decisions are made for all candidates up front (a top fraction needs
every score), then :meth:`Screening.apply` merges them into the export loop. A review file of
accept/reject decisions by image id (``mycanvas_overrides.csv``) has the last word, and an HTML
review sheet beside the export shows every candidate with its scores and decision (both in
:mod:`gen4gen.screening_review`). Every
rejection keeps its reasons, reason codes and scores in ``rejected.jsonl``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .config import PipelineConfig
from .filtering import CheckOutcome, check_image
from .io import read_json
from .metrics import box_iou, crop, mean_reference_similarity, normalise
from .score_cache import ScoreCache, score_cache_root
# Re-exported: the review side of screening is used through this module.
from .screening_review import load_overrides, write_review_sheet

__all__ = ["SCREENING_CODES", "Candidate", "Decision", "Screening", "ScreeningConfigError", "ScreeningModels",
           "load_overrides", "screen_mycanvas", "screening_enabled", "screening_summary", "top_fraction_cutoff",
           "write_review_sheet"]

SCREENING_CODES = ("low_clip_score", "low_concept_similarity", "not_detected", "review_rejected")


class ScreeningConfigError(ValueError):
    """The screening configuration cannot work with the configured backends."""


@dataclass
class ScreeningModels:
    """The backends screening uses (either may be None): CLIP embeddings and the detector."""

    clip: object | None = None
    detector: object | None = None

    @classmethod
    def from_config(cls, config: PipelineConfig) -> "ScreeningModels":
        from .config import PROJECT_ROOT
        from .models.clip import load_clip, load_detector

        return cls(load_clip(config.clip, PROJECT_ROOT), load_detector(config.detector, PROJECT_ROOT))


def screening_enabled(config: PipelineConfig) -> bool:
    """``screening.enabled``, or (when unset) whether a CLIP backend or a detector is configured."""
    configured = config.clip.backend != "none" or config.detector.backend != "none"
    if config.screening.enabled is None:
        return configured
    if config.screening.enabled and not configured:
        raise ScreeningConfigError('screening.enabled = true, but neither clip.backend nor detector.backend is '
                                   'configured (both are "none")')
    return config.screening.enabled


# ------------------------------------------------------------------ thresholds
def top_fraction_cutoff(scores, fraction: float) -> float | None:
    """The lowest score kept when keeping the ceil(fraction * n) best (ties at the cut are kept too)."""
    values = sorted((float(s) for s in scores), reverse=True)
    if not values:
        return None
    keep = max(1, math.ceil(fraction * len(values) - 1e-9))
    return values[min(keep, len(values)) - 1]


@dataclass
class Candidate:
    image_id: str
    composition: str
    path: Path
    caption: str
    objects: list[dict]  # concept, class_name, box
    geometric: CheckOutcome


@dataclass
class Decision:
    accepted: bool  # the final decision
    reasons: list[str] = field(default_factory=list)  # screening reasons (not the geometric ones)
    codes: list[str] = field(default_factory=list)
    review: str | None = None  # "accept" / "reject" from the overrides file
    review_note: str = ""
    caption_score: float | None = None
    concept_similarity: list[float] = field(default_factory=list)
    detected: list[bool] = field(default_factory=list)
    detection_score: list[float | None] = field(default_factory=list)


class Screening:
    """Screening decisions for every candidate; :meth:`apply` merges one into the export loop."""

    def __init__(self, decisions: dict[str, Decision] | None = None, summary: dict | None = None,
                 overrides_file: Path | None = None):
        self.decisions = decisions
        self.summary = summary or {"enabled": False}
        self.overrides_file = overrides_file

    @property
    def noop(self) -> bool:
        return self.decisions is None

    def apply(self, image_id: str, record: dict, outcome: CheckOutcome) -> CheckOutcome:
        """The final outcome for one image; adds a ``screening`` field to its record (same shape in every row)."""
        if self.decisions is None:
            return outcome
        decision = self.decisions.get(image_id) or Decision(accepted=outcome.accepted)
        reasons = outcome.reasons + decision.reasons
        codes = outcome.codes + decision.codes
        record["screening"] = {
            "caption_score": _round(decision.caption_score),
            "concept_similarity": [_round(v) for v in decision.concept_similarity],
            "detected": list(decision.detected),
            "detection_score": [_round(v) for v in decision.detection_score],
            "review": decision.review,
            "review_note": decision.review_note,
            # What the automatic checks said when a review decision overrode them.
            "overridden_reasons": reasons if decision.review == "accept" else [],
        }
        if decision.review == "accept":
            return CheckOutcome(True, [], outcome.scores, [],
                                outcome.warnings + [f"accepted in review over: {r}" for r in reasons])
        if decision.review == "reject":
            note = f" ({decision.review_note})" if decision.review_note else ""
            return CheckOutcome(False, reasons + [f"rejected in review ({self.overrides_file.name}){note}"],
                                outcome.scores, codes + ["review_rejected"], outcome.warnings)
        return CheckOutcome(not reasons, reasons, outcome.scores, codes, outcome.warnings)


def _round(value):
    return None if value is None else round(float(value), 5)


# ------------------------------------------------------------------ candidates and scores
def _candidates(registry: dict, config: PipelineConfig) -> list[Candidate]:
    """Every built image, as export_mycanvas sees it (images it cannot export are left to it to report)."""
    from .stages import built_images

    paths = config.paths
    out = []
    for built in built_images(registry, config):
        caption = built.caption
        text = caption["detailed"] if config.screening.caption == "detailed" else caption[config.screening.caption]
        out.append(Candidate(
            image_id=built.image_id, composition=built.composition,
            path=paths.recoloured(built.composition) / built.recoloured["image"], caption=text,
            objects=[{"concept": o["concept"], "class_name": o["class_name"], "box": o["box"]}
                     for o in built.entry["objects"]],
            geometric=check_image(built.entry["objects"], config.filter, config.recolour.backend)))
    return out


def _score(candidates: list[Candidate], models: ScreeningModels, registry: dict, config: PipelineConfig,
           problems: list[dict]) -> dict[str, Decision]:
    from .evaluation import concept_references

    padding = config.evaluation.crop_padding
    min_iou = config.screening.detection_min_iou
    clip, detector = models.clip, models.detector
    decisions: dict[str, Decision] = {}
    ref_rows = {}
    if clip is not None:
        concepts = {o["concept"] for c in candidates for o in c.objects}
        references = concept_references(registry, config, concepts, problems)
        ref_rows = {k: normalise(clip.embed_images(r.images)) for k, r in references.items()}
    chunk = 32
    for start in range(0, len(candidates), chunk):
        batch = candidates[start:start + chunk]
        images = []
        for cand in batch:
            with Image.open(cand.path) as handle:
                images.append(handle.convert("RGB"))
        if clip is not None:
            image_rows = normalise(clip.embed_images(images))
            text_rows = normalise(clip.embed_texts([c.caption for c in batch]))
            crops = [crop(image, o["box"], padding) for cand, image in zip(batch, images) for o in cand.objects]
            crop_rows = normalise(clip.embed_images(crops))
        found = detector.detect(images, [sorted({o["class_name"] for o in c.objects}) for c in batch]) if detector else None
        position = 0
        for k, cand in enumerate(batch):
            decision = Decision(accepted=cand.geometric.accepted)
            if clip is not None:
                decision.caption_score = float(image_rows[k] @ text_rows[k])
                for o in cand.objects:
                    row = crop_rows[position]
                    position += 1
                    refs = ref_rows.get(o["concept"])
                    decision.concept_similarity.append(mean_reference_similarity(row, refs) if refs is not None else 0.0)
            if found is not None:
                for o in cand.objects:
                    boxes = [d for d in found[k].get(o["class_name"], []) if box_iou(d.box, o["box"]) >= min_iou]
                    best = max((d.score for d in boxes), default=None)
                    decision.detected.append(best is not None)
                    decision.detection_score.append(best)
            decisions[cand.image_id] = decision
    return decisions


def _decide(candidates: list[Candidate], decisions: dict[str, Decision], models: ScreeningModels,
            config: PipelineConfig) -> dict:
    """Apply the thresholds; returns the resolved cut-offs."""
    settings = config.screening
    pool = [c for c in candidates if c.geometric.accepted and c.image_id in decisions]
    cutoffs: dict[str, float | None] = {"caption_score": None, "concept_similarity": None}
    if models.clip is not None:
        if settings.caption_score.top_fraction is not None:
            cutoffs["caption_score"] = top_fraction_cutoff(
                [decisions[c.image_id].caption_score for c in pool], settings.caption_score.top_fraction)
        if settings.concept_similarity.top_fraction is not None:
            cutoffs["concept_similarity"] = top_fraction_cutoff(
                [min(decisions[c.image_id].concept_similarity, default=0.0) for c in pool],
                settings.concept_similarity.top_fraction)
    for cand in candidates:
        decision = decisions.get(cand.image_id)
        if decision is None:
            continue
        if models.clip is not None:
            score = decision.caption_score
            threshold = settings.caption_score
            if threshold.min is not None and score < threshold.min:
                decision.reasons.append(f"caption-image CLIP score {score:.3f} is below caption_score.min "
                                        f"{threshold.min:g} ({settings.caption} caption)")
                decision.codes.append("low_clip_score")
            cut = cutoffs["caption_score"]
            if cut is not None and score < cut:
                decision.reasons.append(f"caption-image CLIP score {score:.3f} is below the top "
                                        f"{threshold.top_fraction:.0%} cut-off {cut:.3f} (caption_score.top_fraction)")
                decision.codes.append("low_clip_score")
            threshold = settings.concept_similarity
            for obj, sim in zip(cand.objects, decision.concept_similarity):
                if threshold.min is not None and sim < threshold.min:
                    decision.reasons.append(f"{obj['concept']}: crop similarity {sim:.3f} to its reference images is "
                                            f"below concept_similarity.min {threshold.min:g}")
                    decision.codes.append("low_concept_similarity")
            cut = cutoffs["concept_similarity"]
            lowest = min(decision.concept_similarity, default=0.0)
            if cut is not None and lowest < cut:
                decision.reasons.append(f"lowest concept crop similarity {lowest:.3f} is below the top "
                                        f"{threshold.top_fraction:.0%} cut-off {cut:.3f} "
                                        f"(concept_similarity.top_fraction)")
                decision.codes.append("low_concept_similarity")
        if models.detector is not None and settings.require_detection:
            for obj, detected in zip(cand.objects, decision.detected):
                if not detected:
                    where = "anywhere" if settings.detection_min_iou <= 0 else \
                        f"overlapping its box by IoU >= {settings.detection_min_iou:g}"
                    decision.reasons.append(f"{obj['concept']}: the detector does not find a '{obj['class_name']}' "
                                            f"{where} (detector.threshold {config.detector.threshold:g})")
                    decision.codes.append("not_detected")
        decision.accepted = cand.geometric.accepted and not decision.reasons
    return cutoffs


def screen_mycanvas(registry: dict, config: PipelineConfig, models: ScreeningModels | None = None,
                    problems: list[dict] | None = None, score_cache: bool = True) -> Screening:
    """Score and decide every MyCanvas candidate up front; write the review sheet.

    Returns a no-op :class:`Screening` (the export is exactly the geometric one) when screening
    is off and there is no overrides file. Scores come from the score cache where it has them
    (:mod:`gen4gen.score_cache`; ``score_cache=False`` computes every one).
    """
    problems = problems if problems is not None else []
    enabled = screening_enabled(config)
    overrides_path = config.paths.screening_overrides
    overrides = load_overrides(overrides_path, problems)
    if not enabled and not overrides:
        return Screening()
    if enabled and models is None:
        models = ScreeningModels.from_config(config)
    models = models if enabled else ScreeningModels()
    if enabled and config.clip.backend != "none" and models.clip is None:
        raise ScreeningConfigError('clip.backend is configured but no CLIP model was given to screening')
    if enabled and config.detector.backend != "none" and models.detector is None:
        raise ScreeningConfigError('detector.backend is configured but no detector was given to screening')
    candidates = _candidates(registry, config)
    known = {c.image_id for c in candidates}
    scored = [c for c in candidates if c.geometric.accepted or c.image_id in overrides] if enabled else []
    cache = ScoreCache(score_cache_root(config), enabled=score_cache)
    cached = ScreeningModels(cache.clip(models.clip), cache.detector(models.detector))
    decisions = _score(scored, cached, registry, config, problems) if scored else {}
    cutoffs = _decide(candidates, decisions, models, config) if enabled else {}
    for cand in candidates:
        decision = decisions.setdefault(cand.image_id, Decision(accepted=cand.geometric.accepted))
        review = overrides.get(cand.image_id)
        if review:
            decision.review, decision.review_note = review["decision"], review["note"]
            decision.accepted = review["decision"] == "accept"
    unknown = sorted(set(overrides) - known)
    for image_id in unknown:
        problems.append({"path": overrides[image_id]["where"],
                         "reason": f"review override for {image_id!r}, which is not a built image"})
    summary = _summary(config, enabled, models, candidates, decisions, cutoffs, overrides, overrides_path, unknown)
    summary["cache"] = cache.summary()
    write_review_sheet(config, candidates, decisions, summary)
    return Screening(decisions, summary, overrides_path)


def _summary(config, enabled, models, candidates, decisions, cutoffs, overrides, overrides_path, unknown) -> dict:
    settings = config.screening
    codes: dict[str, int] = {}
    for cand in candidates:
        for code in set(decisions[cand.image_id].codes):
            codes[code] = codes.get(code, 0) + 1
    identity = {name: (m.identity() if hasattr(m, "identity") else type(m).__name__) if m is not None else None
                for name, m in (("clip", models.clip), ("detector", models.detector))}
    return {
        "enabled": enabled,
        "models": identity,
        "caption": settings.caption,
        "thresholds": {
            "caption_score": {**settings.caption_score.model_dump(), "top_fraction_cutoff": cutoffs.get("caption_score")},
            "concept_similarity": {**settings.concept_similarity.model_dump(),
                                   "top_fraction_cutoff": cutoffs.get("concept_similarity")},
            "require_detection": settings.require_detection,
            "detection_min_iou": settings.detection_min_iou,
            "detector_threshold": config.detector.threshold if models.detector is not None else None,
            "crop_padding": config.evaluation.crop_padding,
            "reference_images": config.evaluation.reference_images,
        },
        "candidates": len(candidates),
        "geometric_rejected": sum(not c.geometric.accepted for c in candidates),
        "screened_out": sum(c.geometric.accepted and bool(decisions[c.image_id].reasons) for c in candidates),
        "accepted": sum(decisions[c.image_id].accepted for c in candidates),
        "screening_reason_counts": dict(sorted(codes.items())),
        "overrides": {"file": str(overrides_path), "entries": len(overrides), "unknown_image_ids": unknown,
                      "accept": sum(d["decision"] == "accept" for d in overrides.values()),
                      "reject": sum(d["decision"] == "reject" for d in overrides.values())},
    }


def screening_summary(config: PipelineConfig) -> dict:
    """The last screening run's summary (for asset metadata), or why screening did not run."""
    summary_file = config.paths.review / "summary.json"
    if (screening_enabled(config) or config.paths.screening_overrides.is_file()) and summary_file.is_file():
        return read_json(summary_file)
    return {"enabled": False, "why": 'no CLIP backend or detector is configured (clip.backend and detector.backend '
                                     'are "none", or screening.enabled = false) and there is no overrides file '
                                     f'({config.paths.screening_overrides})'}
