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

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer

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


# Model backends (the `paper` profile): where they run and in which precision.
Device = Literal["auto", "cuda", "cpu"]
DType = Literal["bf16", "fp16", "fp32"]


class EndpointConfig(_Section):
    """An OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp server, ...)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    # The key is read from this environment variable (or from `api_key`); it is sent in the
    # Authorization header only, never logged or written to any artifact.
    api_key_env: str = "OPENAI_API_KEY"
    api_key: SecretStr | None = None
    timeout_s: float = 120.0
    temperature: float = 0.2
    max_tokens: int = 1024

    @field_serializer("api_key", when_used="always")
    def _mask_key(self, value: SecretStr | None) -> str | None:
        # Dumps (lineage parameters, metadata) must never carry the key, in any mode.
        return None if value is None else "**********"


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
    # Budget of the first proposal (every concept covered first).
    max_compositions: int = 8
    # Later, existing compositions are kept and each newly added concept brings this many
    # compositions that include it, so adding a concept never rebuilds what exists.
    per_new_concept: int = 2
    # Explicit composition keys; when given, they replace the automatic proposal.
    explicit: list[str] = []


class SegmentationConfig(_Section):
    # isnet_onnx: IS-Net on onnxruntime (embedded). isnet_torch: IS-Net in PyTorch from the
    # official `isnet-general-use.pth`. birefnet: BiRefNet through transformers (remote code).
    backend: Literal["isnet_onnx", "isnet_torch", "birefnet"] = "isnet_onnx"
    weights_path: str = "weights/isnet/isnet-medium.onnx"
    # isnet_torch: a local PyTorch checkpoint (state dict) of IS-Net.
    isnet_checkpoint: str = "weights/isnet/isnet-general-use.pth"
    # birefnet: a Hugging Face id or a local folder.
    birefnet_model: str = "ZhengPeng7/BiRefNet"
    # Side of the square model input for the PyTorch backends (both were trained at 1024).
    input_size: int = 1024
    device: Device = "auto"
    dtype: DType = "fp32"
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
    # rule_based: size priors and seeded placement (embedded). llm: an OpenAI-compatible chat
    # endpoint proposes the scene, size ratios and boxes; the rule-based planner is the fallback.
    backend: Literal["rule_based", "llm"] = "rule_based"
    llm: EndpointConfig = Field(default_factory=EndpointConfig)
    # Requests per layout: the first plus retries that send the validation error back.
    llm_max_attempts: int = 3
    # Ask for a JSON object (`response_format`); switch off for servers that reject it.
    llm_json_mode: bool = True
    # The paper's template canvas: the LLM draws boxes on it, scaled to the real canvas.
    llm_template_canvas: int = 512
    # Optional COCO-style annotation file (images, annotations with bbox, categories; captions
    # optional) whose images become few-shot examples.
    llm_few_shot_file: str | None = None
    llm_few_shot_examples: int = 3
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
    # scene_bank: photo background + feathering + harmonisation (embedded). sdxl: SDXL
    # inpainting followed by the SDXL refiner, as the paper.
    backend: Literal["scene_bank", "sdxl"] = "scene_bank"
    # Hugging Face ids or local folders (diffusers layout).
    sdxl_model: str = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    # Empty: no refiner pass.
    refiner_model: str = "stabilityai/stable-diffusion-xl-refiner-1.0"
    # Weight file variant to load first (the official script loads "fp16"); falls back to the
    # default files when a folder has no such variant. Empty: default files only.
    variant: str = "fp16"
    guidance_scale: float = 6.0
    num_inference_steps: int = 60
    strength: float = 0.9
    refiner_denoising_start: float = 0.75
    # How the base hands over to the refiner: "image" decodes to pixels and re-encodes (as the
    # original script); "latent" passes the latents on, skipping one VAE decode and encode.
    refiner_handoff: Literal["image", "latent"] = "image"
    # SDXL works at this size; other canvas sizes are resized to it and back.
    resolution: int = 1024
    # What fills the background before repainting: a scene-bank photo of the layout's scene, or noise.
    background_init: Literal["scene_bank", "noise"] = "scene_bank"
    device: Device = "auto"
    dtype: DType = "bf16"
    # Speed options (see bench/bench_sdxl_repaint.py and the README's GPU figures).
    channels_last: bool = False
    fuse_qkv: bool = False
    compile: bool = False
    compile_mode: str | None = None
    # Attention kernels on CUDA: "auto" is PyTorch's choice (FlashAttention-2); "cudnn" puts
    # cuDNN's fused attention first (faster on Hopper), the others behind it as fallbacks.
    attention_backend: Literal["auto", "cudnn"] = "auto"
    # The UNets' transformer linear layers in float8 e4m3 (H100/H200/Ada; pays under compile).
    # Changes numerics: 3 mantissa bits per operand. See gen4gen/models/fp8.py.
    fp8_linear: bool = False
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
    # layout_retelling: told from the layout's boxes (embedded). vlm: an image-text-to-text
    # model through transformers (LLaVA-1.5 as in the paper). vlm_api: an OpenAI-compatible
    # vision chat endpoint. The training-prompt strategies are the same for every backend.
    backend: Literal["layout_retelling", "vlm", "vlm_api"] = "layout_retelling"
    vlm_model: str = "llava-hf/llava-1.5-7b-hf"
    # {objects}: "a cat and a cup"; {background}: the layout's background phrase.
    vlm_prompt: str = ("Describe this image in detail in a few sentences: the objects, their appearance, where "
                       "they are relative to each other, and the background. It shows {objects} in {background}.")
    max_new_tokens: int = 200
    device: Device = "auto"
    dtype: DType = "bf16"
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
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
    # The sheet shows the first images only (a sheet of thousands is unreadable).
    contact_sheet_max_images: int = 96
    metadata_thumbnails: int = 8


# ---- CLIP screening and evaluation (README: "Metrics and screening (specification)")
class ClipConfig(_Section):
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
    batch_size: int = 32


class DetectorConfig(_Section):
    """The open-vocabulary detector that finds each concept by its class name (CP-CLIP, screening)."""

    backend: Literal["none", "owlvit", "owlv2"] = "none"
    # A Hugging Face id or a local folder (transformers layout).
    model: str = "google/owlvit-base-patch32"
    # A box counts as finding the class when its score for that class query is at least this.
    threshold: float = 0.1
    query_template: str = "a photo of a {class_name}"
    device: Device = "auto"
    dtype: DType = "fp32"
    batch_size: int = 8


class DinoConfig(_Section):
    """Optional DINO image similarity (CustomConcept101's third measure)."""

    backend: Literal["none", "transformers"] = "none"
    # A Hugging Face id or a local folder; the embedding is the final CLS token.
    model: str = "facebook/dino-vits16"
    device: Device = "auto"
    dtype: DType = "fp32"
    batch_size: int = 32


class ScoreThreshold(_Section):
    """Keep an image when its score is at least `min` and/or it is in the `top_fraction` (DataComp style)."""

    min: float | None = None
    # 0 < f <= 1: keep the ceil(f * n) best-scoring of the n candidates (ties at the cut are kept).
    top_fraction: float | None = Field(default=None, gt=0.0, le=1.0)


class ScreeningConfig(_Section):
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
    detection_min_iou: float = 0.0
    # Review decisions by image id ("cat+cup/003,reject"); default <data_dir>/mycanvas_overrides.csv.
    overrides_file: str | None = None
    # The HTML review sheet (<data_dir>/mycanvas_review/index.html): thumbnail side in pixels.
    review_thumb: int = 224


class EvaluationConfig(_Section):
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
    crop_padding: float = Field(default=0.1, ge=0.0)
    # CP-CLIP score of a concept the detector does not find.
    missing_concept_score: float = 0.0
    # Per-image thumbnails in report.html (the rest are in report.json).
    html_max_images: int = 200
    html_thumb: int = 160


class DvcConfig(_Section):
    """DVC versioning of the data folder (README: "Versions of the data (DVC)"; gen4gen/versioning.py)."""

    # Off, or DVC not installed: assets still materialise; their metadata says DVC was skipped and why.
    enabled: bool = True
    # DVC lives in its own virtual environment (`make dvc-setup`); relative paths resolve against the checkout.
    executable: str = ".venv-dvc/bin/dvc"
    # The DVC repository (dvc.yaml, dvc.lock, .dvc/); the data folder must be inside it. Default: the checkout.
    root: str | None = None
    # Remote for push/pull: a remote name from DVC's configuration; empty: DVC's default remote.
    remote: str = ""
    # Folder (relative to the DVC repository) or URL that `make dvc-setup` makes the default remote if none.
    remote_url: str = ".dvc-remote"
    # Push each stage's data to the remote right after committing it (else `gen4gen dvc push`).
    push: bool = False
    # Seconds to wait for a repository locked by another DVC process before giving up on a commit.
    lock_wait_s: float = 300.0
    # DVC's cache.type, in order of preference: hardlinks cost no copy and no space (every gen4gen
    # write replaces files by rename, never in place, so the cache is never written through a link).
    cache_types: list[Literal["reflink", "hardlink", "symlink", "copy"]] = ["hardlink", "copy"]
    # Threads hashing files (DVC's core.checksum_jobs); None: one per CPU.
    checksum_jobs: int | None = None
    # A failed DVC commit: "warn" (the step succeeds, its metadata says why) or "fail" the step.
    on_error: Literal["warn", "fail"] = "warn"


class PipelineConfig(_Section):
    # A named set of backends (PROFILES below); values set by the user override the profile's.
    profile: Literal["embedded", "paper"] = "embedded"
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
    clip: ClipConfig = Field(default_factory=ClipConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    dino: DinoConfig = Field(default_factory=DinoConfig)
    screening: ScreeningConfig = Field(default_factory=ScreeningConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    dvc: DvcConfig = Field(default_factory=DvcConfig)

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

    @property
    def review(self) -> Path:
        """The screening review sheet (HTML) and its summary, beside the export."""
        return self.data / "mycanvas_review"



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
    # Profile precedence: an explicit override, then GEN4GEN_PROFILE, then the file, then embedded.
    profile = overrides.get("profile") or os.environ.get("GEN4GEN_PROFILE") or values.get("profile") or "embedded"
    values.update(overrides)
    values["profile"] = profile
    return PipelineConfig.model_validate(apply_profile(values))


# Profiles as data: each names configuration values applied UNDER the user's, so any single
# value (a section's backend, a model path) can still be overridden in the TOML file.
PROFILES: dict[str, dict] = {
    # CPU, offline: IS-Net ONNX, rule-based layouts, scene-bank recolouring, layout retelling.
    "embedded": {},
    # The paper's models (GPU): IS-Net in PyTorch, LLM layouts, SDXL inpainting + refiner, LLaVA
    # captions; CLIP ViT-L/14 and OWL-ViT for the CP-CLIP / TI-CLIP metrics and the screening.
    "paper": {
        "segmentation": {"backend": "isnet_torch"},
        "layout": {"backend": "llm"},
        "recolour": {"backend": "sdxl"},
        "caption": {"backend": "vlm"},
        "clip": {"backend": "open_clip"},
        "detector": {"backend": "owlvit"},
    },
}


def apply_profile(values: dict) -> dict:
    """``values`` (a user's configuration) over the defaults of its ``profile``."""
    profile = values.get("profile") or "embedded"
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (GEN4GEN_PROFILE or `profile`); known: {', '.join(PROFILES)}")
    merged = _deep_merge(PROFILES[profile], values)
    merged["profile"] = profile
    return merged


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
