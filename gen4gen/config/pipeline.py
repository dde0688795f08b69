"""The whole configuration (``PipelineConfig``), the profiles layered under it, and the paths
derived from it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StrictInt

from .errors import ConfigError
from .operations import DvcConfig, RayConfig, RegenerationConfig
from .quality import ClipConfig, DetectorConfig, DinoConfig, EvaluationConfig, ScreeningConfig
from .stages import (CaptionConfig, CompositionConfig, FilterConfig, InputConfig, LayoutConfig, ProposalConfig,
                     RecolourConfig, ReportConfig, SegmentationConfig)
from .training import SamplingConfig, TrainingConfig
from .types import Section

# Relative paths in the configuration resolve against the project checkout, so the CLI, the
# Dagster UI and its step processes agree wherever they were started from.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class PipelineConfig(Section):
    # A named set of backends (PROFILES below); values set by the user override the profile's.
    profile: Literal["embedded", "paper"] = "embedded"
    data_dir: Annotated[str, Field(min_length=1)] = "data"
    # Defaults to <data_dir>/concepts; may point at a DreamBooth-style folder elsewhere.
    concepts_dir: str | None = None
    # Optional "subject,class" mapping; looked for in the concepts folder, then the data folder.
    class_map_file: str | None = None
    # numpy's generators take non-negative seeds only.
    seed: Annotated[StrictInt, Field(ge=0)] = 0
    input: InputConfig = Field(default_factory=InputConfig)
    proposal: ProposalConfig = Field(default_factory=ProposalConfig)
    segmentation: SegmentationConfig = Field(default_factory=SegmentationConfig)
    layout: LayoutConfig = Field(default_factory=LayoutConfig)
    composition: CompositionConfig = Field(default_factory=CompositionConfig)
    recolour: RecolourConfig = Field(default_factory=RecolourConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    dino: DinoConfig = Field(default_factory=DinoConfig)
    screening: ScreeningConfig = Field(default_factory=ScreeningConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    dvc: DvcConfig = Field(default_factory=DvcConfig)
    regeneration: RegenerationConfig = Field(default_factory=RegenerationConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @property
    def single_writer(self) -> bool:
        """Whether only the publish step commits to DVC and ingests lineage (``[regeneration] single_writer``)."""
        configured = self.regeneration.single_writer
        return self.ray.cluster if configured is None else configured

    @property
    def paths(self) -> "ProjectPaths":
        return ProjectPaths(self)


class ProjectPaths:
    """Where every artifact lives, derived from the configuration (never stored twice)."""

    def __init__(self, config: PipelineConfig):
        self.data = resolve_path(config.data_dir)
        self.concepts = resolve_path(config.concepts_dir) if config.concepts_dir else self.data / "concepts"
        self.backgrounds = self.data / "backgrounds"
        self.build = self.data / "build"
        self.class_map_file = resolve_path(config.class_map_file) if config.class_map_file else None
        self.segmentation_weights = resolve_path(config.segmentation.weights_path)
        # Review decisions (accept/reject by image id) that screening honours.
        explicit = config.screening.overrides_file
        self.screening_overrides = resolve_path(explicit) if explicit else self.data / "mycanvas_overrides.csv"

    @property
    def registry(self) -> Path:
        return self.build / "concepts.json"

    def segmented(self, concept: str) -> Path:
        return self.build / "segmented" / concept

    def layouts(self, composition: str) -> Path:
        """One JSON per image (exact per-image lineage) plus ``manifest.json`` with all of them."""
        return self.build / "layouts" / composition

    def composed(self, composition: str) -> Path:
        return self.build / "composed" / composition

    def recoloured(self, composition: str) -> Path:
        return self.build / "recoloured" / composition

    def captions(self, composition: str) -> Path:
        """One JSON per image plus ``manifest.json`` with all captions and the token map."""
        return self.build / "captions" / composition

    @property
    def mycanvas(self) -> Path:
        return self.data / "mycanvas"

    @property
    def reports(self) -> Path:
        return self.data / "reports"

    def personalised(self, run: str) -> Path:
        """A trained model (Custom Diffusion weights, token embeddings, training log, training set)."""
        return self.data / "personalised" / run

    def generated(self, run: str) -> Path:
        """A trained model's samples and their prompts.jsonl."""
        return self.data / "generated" / run

    @property
    def review(self) -> Path:
        """The screening review sheet (HTML) and its summary, beside the export."""
        return self.data / "mycanvas_review"


def resolve_path(value: str | os.PathLike) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


# Profiles as data: each names configuration values applied UNDER the user's, so any single
# value (a section's backend, a model path) can still be overridden in the TOML file.
PROFILES: dict[str, dict] = {
    # CPU, offline: IS-Net ONNX, rule-based layouts, scene-bank recolouring, layout retelling.
    "embedded": {},
    # The paper's models (GPU): IS-Net in PyTorch, LLM layouts, SDXL inpainting + refiner, LLaVA
    # captions; CLIP ViT-L/14 and OWL-ViT for the CP-CLIP / TI-CLIP metrics and the screening.
    "paper": {
        "segmentation": {"backend": "isnet_torch"},
        # The paper's size ratios: the second object 0.4-1.0 of the largest (the embedded default keeps real ones).
        "layout": {"backend": "llm", "size_ratio_range": [0.4, 1.0]},
        "recolour": {"backend": "sdxl"},
        "caption": {"backend": "vlm"},
        "clip": {"backend": "open_clip"},
        "detector": {"backend": "owlvit"},
    },
}


def apply_profile(values: dict, source: str = "configuration") -> dict:
    """``values`` (a user's configuration) over the defaults of its ``profile``.

    ``source`` names where the profile was chosen, for the error about an unknown one.
    """
    profile = values.get("profile") or "embedded"
    if profile not in PROFILES:
        raise ConfigError([f"{source}: profile: unknown profile {profile!r} (GEN4GEN_PROFILE or `profile`); "
                           f"known: {', '.join(PROFILES)}"])
    merged = deep_merge(PROFILES[profile], values)
    merged["profile"] = profile
    return merged


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``; tables are merged key by key, any other value replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
