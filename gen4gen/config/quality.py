"""Configuration sections of screening and evaluation (README: "Metrics and screening (specification)")."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .types import (Cosine, Count, Device, DType, Fraction, NonNegativeCount, NonNegativeFloat, Pixels,
                    PositiveFraction, Section, template)


class ClipConfig(Section):
    """CLIP (open_clip) for screening MyCanvas and for the CP-CLIP / TI-CLIP / CLIP-T / CLIP-I metrics."""

    # none: no CLIP; screening is off and the CLIP metrics are reported as not computed.
    backend: Literal["none", "open_clip"] = "none"
    # An open_clip architecture (ViT-L-14, ViT-B-32, ...), or "hf-hub:org/repo" / "local-dir:/path".
    model: str = "ViT-L-14"
    # open_clip pretrained tag (openai, laion2b_s32b_b82k, ...), fetched into the Hugging Face cache.
    # With `weights_path` it names what the local file holds (QuickGELU, normalisation).
    pretrained: str | None = "openai"
    # A local checkpoint file of `model`, or a folder with open_clip_config.json and weights.
    weights_path: str | None = None
    device: Device = "auto"
    dtype: DType = "fp16"
    batch_size: Count = 32


class DetectorConfig(Section):
    """The open-vocabulary detector that finds each concept by its class name (CP-CLIP, screening)."""

    backend: Literal["none", "owlvit", "owlv2"] = "none"
    # A Hugging Face id or a local folder (transformers layout).
    model: str = "google/owlvit-base-patch32"
    # A box counts as finding the class when its score (a probability) for that class query is at least this.
    threshold: Fraction = 0.1
    query_template: Annotated[str, template(required=("class_name",))] = "a photo of a {class_name}"
    device: Device = "auto"
    dtype: DType = "fp32"
    batch_size: Count = 8


class DinoConfig(Section):
    """Optional DINO image similarity (CustomConcept101's third measure)."""

    backend: Literal["none", "transformers"] = "none"
    # A Hugging Face id or a local folder; the embedding is the final CLS token.
    model: str = "facebook/dino-vits16"
    device: Device = "auto"
    dtype: DType = "fp32"
    batch_size: Count = 32


class ScoreThreshold(Section):
    """Keep an image when its score is at least `min` and/or it is in the `top_fraction` (DataComp style)."""

    # Scores are cosine similarities.
    min: Cosine | None = None
    # 0 < f <= 1: keep the ceil(f * n) best-scoring of the n candidates (ties at the cut are kept).
    top_fraction: PositiveFraction | None = None


class ScreeningConfig(Section):
    """Semi-automated screening of MyCanvas candidates (after the geometric checks)."""

    # None: on when a CLIP backend or a detector is configured; false: off even then.
    enabled: bool | None = None
    # Which caption is scored against the image (cosine similarity, as DataComp's CLIP score).
    caption: Literal["detailed", "background_in_text", "global_composition_token"] = "detailed"
    caption_score: ScoreThreshold = Field(default_factory=lambda: ScoreThreshold(min=0.2))
    # An image's concept similarity is its lowest concept: crop from the known box (with
    # evaluation.crop_padding) vs that concept's reference images, mean cosine over references.
    concept_similarity: ScoreThreshold = Field(default_factory=lambda: ScoreThreshold(min=0.5))
    # With a detector: every concept must still be found by its class name ...
    require_detection: bool = True
    # ... by a box overlapping its known box by at least this IoU (0: anywhere in the image).
    detection_min_iou: Fraction = 0.0
    # Review decisions by image id ("cat+cup/003,reject"); default <data_dir>/mycanvas_overrides.csv.
    overrides_file: str | None = None
    # The HTML review sheet (<data_dir>/mycanvas_review/index.html): thumbnail side in pixels.
    review_thumb: Pixels = 224


class EvaluationConfig(Section):
    """What evaluation_report measures, and the metrics' free parameters."""

    # Also evaluate MyCanvas itself (its captions are the training prompts).
    evaluate_mycanvas: bool = True
    # Which MyCanvas caption, tokens replaced by class names, is the image's prompt.
    mycanvas_prompt: Literal["background_in_text", "global_composition_token", "repeated_concept_tokens",
                             "detailed"] = "background_in_text"
    # Generated images (e.g. from a model fine-tuned on MyCanvas) and their prompts JSONL, one
    # line per prompt: {"image": "0001.png", "prompt": "a photo of <new1> cat on a beach",
    # "concepts": ["cat", "coffee_cup"], "kind": "train" | "held_out"}.
    generated_dir: str | None = None
    # Default: <generated_dir>/prompts.jsonl.
    prompts_file: str | None = None
    default_prompt_kind: Literal["train", "held_out"] = "train"
    # Reference images of each concept: its photos, or its segmented cut-outs on white.
    reference_images: Literal["photos", "cutouts"] = "photos"
    # The detected box is grown by this fraction of its width/height on each side before cropping.
    crop_padding: NonNegativeFloat = 0.1
    # CP-CLIP score of a concept the detector does not find (a cosine similarity).
    missing_concept_score: Cosine = 0.0
    # Per-image thumbnails in report.html (the rest are in report.json).
    html_max_images: NonNegativeCount = 200
    html_thumb: Pixels = 160
