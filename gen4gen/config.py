"""The one configuration model: every tunable of the pipeline, with its default.

Users override values in a TOML file (``gen4gen.toml`` in the working directory, or the
file named by ``GEN4GEN_CONFIG``); ``GEN4GEN_DATA_DIR`` overrides the data directory.
Resources and assets read their parameters from here and nowhere else.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Relative paths in the configuration resolve against the project checkout, so the CLI, the
# Dagster UI and its step processes agree wherever they were started from.
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# The paper's negative prompt for SDXL repainting (artefacts to steer away from).
DEFAULT_NEGATIVE_PROMPT = (
    "lowres, text, error, cropped, worst quality, low quality, jpeg artifacts, ugly, duplicate, "
    "morbid, mutilated, out of frame, extra fingers, mutated hands, poorly drawn hands, "
    "poorly drawn face, mutation, deformed, blurry, dehydrated, bad anatomy, bad proportions, "
    "extra limbs, cloned face, disfigured, gross proportions, malformed limbs, missing arms, "
    "missing legs, extra arms, extra legs, fused fingers, too many fingers, long neck, username, "
    "watermark, signature"
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputConfig(_Section):
    image_extensions: list[str] = [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"]
    min_photo_side: int = 64
    # Photos above this are downscaled on load (with a warning), not rejected.
    max_photo_megapixels: float = 50.0
    # Longest side after downscaling a huge photo.
    downscale_long_side: int = 2048


class ProposalConfig(_Section):
    """How composition keys (``cat+coffee_cup``) are proposed from the registered concepts."""

    sizes: list[int] = [2, 3]
    max_compositions: int = 8
    # Explicit composition keys; when given, they replace the automatic proposal.
    explicit: list[str] = []


class SegmentationConfig(_Section):
    backend: Literal["isnet_onnx"] = "isnet_onnx"
    weights_path: str = "weights/isnet/isnet-medium.onnx"
    # The paper runs DIS on its own output for several rounds to strip leftover background.
    rounds: int = 3
    # Stop iterating early once a round changes the mask by less than this (IoU).
    converge_iou: float = 0.995
    threads: int = 2
    mask_threshold: float = 0.5
    # Fallback when the IS-Net weights are absent: GrabCut from a rectangle this far inside.
    grabcut_margin: float = 0.05
    grabcut_iterations: int = 5
    # An RGBA photo whose alpha has real transparency is used as its own mask.
    use_existing_alpha: bool = True


class LayoutConfig(_Section):
    backend: Literal["rule_based"] = "rule_based"
    images_per_composition: int = 6
    # Height of the largest object, as a fraction of the canvas height.
    largest_object_height: tuple[float, float] = (0.42, 0.62)
    # Size ratios (largest object 1.0) are clamped to this range, as the paper's prompt asks.
    size_ratio_range: tuple[float, float] = (0.4, 1.0)
    default_size_ratio: float = 0.6
    # The bottom edge of each object stands in this vertical band (fractions of the height).
    ground_band: tuple[float, float] = (0.62, 0.97)
    # At most this fraction of the smaller of two boxes may be covered by the other.
    max_overlap: float = 0.2
    max_attempts: int = 400


class CompositionConfig(_Section):
    canvas_size: int = 1024
    flip_probability: float = 0.5
    max_rotation_degrees: float = 5.0
    max_shift_fraction: float = 0.01
    # PNG zlib level for intermediate images: 1 is several times faster than 6.
    png_compress_level: int = 1


class RecolourConfig(_Section):
    backend: Literal["scene_bank"] = "scene_bank"
    prompt_template: str = "a realistic photo of {background}"
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    # The paper's feathering: box blur of this radius, then intensity rescaled from [127.5, 255].
    feather_radius: int = 5
    feather_low: float = 127.5
    harmonisation: Literal["lab", "poisson", "none"] = "lab"
    # 0 keeps the object's colours, 1 matches the background's LAB statistics fully.
    harmonisation_strength: float = 0.35
    batch_size: int = 4


class CaptionConfig(_Section):
    backend: Literal["layout_retelling"] = "layout_retelling"
    # Custom Diffusion's token style: "<new1> cat".
    concept_token: str = "<new{index}>"
    composition_token: str = "<comp{index}>"


class FilterConfig(_Section):
    # Visible pixels after occlusion / pixels of the pasted object.
    min_visible_fraction: float = 0.6
    # Pixels inside the canvas / pixels of the object before clipping (truncation check).
    min_inside_fraction: float = 0.97
    # Visible object pixels as a fraction of the canvas.
    min_area_fraction: float = 0.01
    # Mask pixels / their bounding box: below this the "object" is specks or a thin outline.
    min_mask_fill: float = 0.08
    # Mask pixels / source photo pixels: a mask covering nearly the whole photo means the
    # segmentation kept the background (a box photographed head-on still passes).
    max_frame_fraction: float = 0.97


class ReportConfig(_Section):
    contact_sheet_columns: int = 6
    contact_sheet_thumb: int = 192
    metadata_thumbnails: int = 8


class PipelineConfig(_Section):
    profile: Literal["embedded"] = "embedded"
    data_dir: str = "data"
    # Defaults to <data_dir>/concepts; may point at a DreamBooth-style folder elsewhere.
    concepts_dir: str | None = None
    # Optional "subject,class" mapping; looked for in the concepts folder, then the data folder.
    class_map_file: str | None = None
    seed: int = 0
    input: InputConfig = Field(default_factory=InputConfig)
    proposal: ProposalConfig = Field(default_factory=ProposalConfig)
    segmentation: SegmentationConfig = Field(default_factory=SegmentationConfig)
    layout: LayoutConfig = Field(default_factory=LayoutConfig)
    composition: CompositionConfig = Field(default_factory=CompositionConfig)
    recolour: RecolourConfig = Field(default_factory=RecolourConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

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

    @property
    def registry(self) -> Path:
        return self.build / "concepts.json"

    def segmented(self, concept: str) -> Path:
        return self.build / "segmented" / concept

    def layouts(self, composition: str) -> Path:
        return self.build / "layouts" / f"{composition}.json"

    def composed(self, composition: str) -> Path:
        return self.build / "composed" / composition

    def recoloured(self, composition: str) -> Path:
        return self.build / "recoloured" / composition

    def captions(self, composition: str) -> Path:
        return self.build / "captions" / f"{composition}.json"

    @property
    def mycanvas(self) -> Path:
        return self.data / "mycanvas"

    @property
    def reports(self) -> Path:
        return self.data / "reports"


def resolve_path(value: str | os.PathLike) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def load_config(path: str | os.PathLike | None = None, **overrides) -> PipelineConfig:
    """Defaults, then the TOML file (explicit, ``GEN4GEN_CONFIG`` or ./gen4gen.toml), then env."""
    values: dict = {}
    candidate = path or os.environ.get("GEN4GEN_CONFIG")
    if candidate is None and Path("gen4gen.toml").is_file():
        candidate = "gen4gen.toml"
    if candidate:
        file = Path(candidate)
        if not file.is_file():
            raise FileNotFoundError(f"configuration file {file} does not exist")
        with file.open("rb") as handle:
            values = tomllib.load(handle)
    if os.environ.get("GEN4GEN_DATA_DIR"):
        values["data_dir"] = os.environ["GEN4GEN_DATA_DIR"]
    values.update(overrides)
    return PipelineConfig.model_validate(values)
