"""Configuration sections of the pipeline's stages, from the input photos to the report."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, StrictFloat, StrictInt, ValidationInfo, field_serializer, field_validator

from .types import (Count, Device, DType, Fraction, FractionRange, NonNegativeCount, NonNegativeFloat, Pixels,
                    PositiveFloat, PositiveFraction, PositiveFractionRange, Section, template)

# The paper's negative prompt for SDXL repainting (artefacts to steer away from).
DEFAULT_NEGATIVE_PROMPT = (
    "lowres, text, error, cropped, worst quality, low quality, jpeg artifacts, ugly, duplicate, "
    "morbid, mutilated, out of frame, extra fingers, mutated hands, poorly drawn hands, "
    "poorly drawn face, mutation, deformed, blurry, dehydrated, bad anatomy, bad proportions, "
    "extra limbs, cloned face, disfigured, gross proportions, malformed limbs, missing arms, "
    "missing legs, extra arms, extra legs, fused fingers, too many fingers, long neck, username, "
    "watermark, signature"
)


class EndpointConfig(Section):
    """An OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp server, ...)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    # The key is read from this environment variable (or from `api_key`); it is sent in the
    # Authorization header only, never logged or written to any artifact.
    api_key_env: str = "OPENAI_API_KEY"
    api_key: SecretStr | None = None
    timeout_s: PositiveFloat = 120.0
    # OpenAI's API accepts 0 to 2.
    temperature: Annotated[StrictFloat, Field(ge=0.0, le=2.0)] = 0.2
    max_tokens: Count = 1024

    @field_serializer("api_key", when_used="always")
    def _mask_key(self, value: SecretStr | None) -> str | None:
        # Dumps (lineage parameters, metadata) must never carry the key, in any mode.
        return None if value is None else "**********"


class InputConfig(Section):
    image_extensions: Annotated[list[str], Field(min_length=1)] = [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif",
                                                                   ".tiff"]
    min_photo_side: Pixels = 64
    # Photos above this are downscaled on load (with a warning), not rejected.
    max_photo_megapixels: PositiveFloat = 50.0
    # Longest side after downscaling a huge photo.
    downscale_long_side: Pixels = 2048

    @field_validator("image_extensions")
    @classmethod
    def _dotted(cls, value: list[str]) -> list[str]:
        # Compared with Path.suffix, which always starts with a dot.
        bad = [e for e in value if not e.startswith(".") or len(e) < 2]
        if bad:
            raise ValueError(f"extensions start with a dot (\".jpg\"), not {bad[0]!r}")
        return value

    @field_validator("downscale_long_side")
    @classmethod
    def _not_below_minimum(cls, value: int, info: ValidationInfo) -> int:
        # A downscaled photo would otherwise be rejected as too small.
        minimum = info.data.get("min_photo_side")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be ≥ input.min_photo_side ({minimum})")
        return value


class ProposalConfig(Section):
    """How composition keys (``cat+coffee_cup``) are proposed from the registered concepts."""

    # Concepts per composition; a composition has at least two.
    sizes: Annotated[list[Annotated[StrictInt, Field(ge=2)]], Field(min_length=1)] = [2, 3]
    # Budget of the first proposal (every concept covered first).
    max_compositions: Count = 8
    # Later, existing compositions are kept and each newly added concept brings this many
    # compositions that include it, so adding a concept never rebuilds what exists.
    per_new_concept: NonNegativeCount = 2
    # Explicit composition keys; when given, they replace the automatic proposal.
    explicit: list[str] = []


class SegmentationConfig(Section):
    # isnet_onnx: IS-Net on onnxruntime (embedded). isnet_torch: IS-Net in PyTorch from the
    # official `isnet-general-use.pth`. birefnet: BiRefNet through transformers (remote code).
    backend: Literal["isnet_onnx", "isnet_torch", "birefnet"] = "isnet_onnx"
    weights_path: str = "weights/isnet/isnet-medium.onnx"
    # isnet_torch: a local PyTorch checkpoint (state dict) of IS-Net.
    isnet_checkpoint: str = "weights/isnet/isnet-general-use.pth"
    # birefnet: a Hugging Face id or a local folder.
    birefnet_model: str = "ZhengPeng7/BiRefNet"
    # Side of the square model input for the PyTorch backends (both were trained at 1024).
    input_size: Pixels = 1024
    device: Device = "auto"
    dtype: DType = "fp32"
    # The paper runs DIS on its own output for several rounds to strip leftover background.
    rounds: Count = 3
    # Stop iterating early once a round changes the mask by less than this (IoU).
    converge_iou: Fraction = 0.995
    threads: Count = 2
    # Alpha above this is object; 0 or 1 would keep everything or nothing.
    mask_threshold: Annotated[StrictFloat, Field(gt=0.0, lt=1.0)] = 0.5
    # Fallback when the IS-Net weights are absent: GrabCut from a rectangle this far inside
    # (from each side, so below one half).
    grabcut_margin: Annotated[StrictFloat, Field(ge=0.0, lt=0.5)] = 0.05
    grabcut_iterations: Count = 5
    # An RGBA photo whose alpha has real transparency is used as its own mask.
    use_existing_alpha: bool = True
    # Cut-out cleaning (gen4gen/cutout_quality.py): keep the object's body and what touches it,
    # drop detached fragments and faint ghosts; each photo's measurements go into the manifest.
    clean_cutouts: bool = True
    # Alpha below this is "soft": the body's edge within a few pixels of it, a ghost further away.
    ghost_alpha: Annotated[StrictInt, Field(ge=1, le=255)] = 96
    # Solid parts within twice this many pixels of the body are attached (a handle, a tail).
    attach_px: NonNegativeCount = 2
    # A detached part with at least this share of the body's alpha mass is kept as a second part
    # (judged by the `fragments` check); smaller ones are fragments, dropped.
    min_part_fraction: Fraction = 0.2
    # Recolour the cut-out's soft edge from the object's interior, so no fringe of the photo's
    # background shows on a new scene (gen4gen/compositing.py decontaminate_edges).
    decontaminate_edges: bool = True
    # Cut-out checks (gen4gen/realism_checks.py), recorded per photo in the manifest; a photo
    # failing one is reported once there, and the images using it are rejected with its code.
    # truncated_source: the mask runs along more than this share of a border of its photo (a
    # paw grazing the frame covers < 5%, a dog cut at the chest 20-60%).
    max_frame_contact: Fraction = 0.10
    # fragments: more than this many disconnected parts left after cleaning.
    max_parts: Count = 1
    # rectangular_cutout: the mask fills at least this share of its bounding box. Measured on
    # IS-Net cut-outs: animals, bags, shoes, toys 0.3-0.83, the cat close-up of the demo 0.89,
    # cans (exempt as box-like classes, like books) 0.92-0.94.
    max_rectangularity: Fraction = 0.85


class LayoutConfig(Section):
    # rule_based: size priors and seeded placement (embedded). llm: an OpenAI-compatible chat
    # endpoint proposes the scene, size ratios and boxes; the rule-based planner is the fallback.
    backend: Literal["rule_based", "llm"] = "rule_based"
    llm: EndpointConfig = Field(default_factory=EndpointConfig)
    # Requests per layout: the first plus retries that send the validation error back.
    llm_max_attempts: Count = 3
    # Ask for a JSON object (`response_format`); switch off for servers that reject it.
    llm_json_mode: bool = True
    # The paper's template canvas: the LLM draws boxes on it, scaled to the real canvas.
    llm_template_canvas: Pixels = 512
    # Optional COCO-style annotation file (images, annotations with bbox, categories; captions
    # optional) whose images become few-shot examples.
    llm_few_shot_file: str | None = None
    llm_few_shot_examples: NonNegativeCount = 3
    images_per_composition: Count = 6
    # Height of the largest object, as a fraction of the canvas height.
    largest_object_height: PositiveFractionRange = (0.42, 0.62)
    # Size ratios (largest object 1.0, from the real-world size priors) are clamped to this range.
    # [0.0, 1.0] (default): real-world ratios, a mug stays a tenth of a motorcycle. [0.4, 1.0]: the
    # paper's range (its LLM prompt asks for it): small objects are drawn larger than they are,
    # which the implausible_scale check then reports on the embedded scenes.
    size_ratio_range: FractionRange = (0.0, 1.0)
    default_size_ratio: PositiveFraction = 0.6
    # floor: objects stand on the scene's floor, smaller the nearer their base is to the horizon
    # (gen4gen/ground_plane.py); a layout in which an object would fall below the paper's
    # minimum box is dropped with its reason. band: the bottom edges stand in ground_band, no
    # perspective (the planner before ground-plane scenes).
    placement: Literal["floor", "band"] = "floor"
    # floor: the camera stands at least this many times the tallest object's height above the
    # floor. Lower values let a small object come near the camera beside a large one (a cup
    # before a motorcycle: with 0.5, 40% of the demo's layouts are dropped, with 0.1, 7%); much
    # lower is an ant's-eye view. The height is drawn per image between this and what the sizes allow.
    min_camera_height: PositiveFloat = 0.1
    # band: the bottom edge of each object stands in this vertical band (fractions of the height).
    ground_band: FractionRange = (0.62, 0.97)
    # At most this fraction of the smaller of two boxes may be covered by the other.
    max_overlap: Fraction = 0.2
    max_attempts: Count = 400

    @field_validator("size_ratio_range")
    @classmethod
    def _some_size(cls, value: tuple[float, float]) -> tuple[float, float]:
        # The largest object's ratio is clamped to the upper bound: 0 would leave no object.
        if value[1] <= 0:
            raise ValueError("the upper bound must be above 0 (the largest object is 1.0 before clamping)")
        return value

    @field_validator("default_size_ratio")
    @classmethod
    def _inside_size_range(cls, value: float, info: ValidationInfo) -> float:
        # An unknown class's ratio is clamped into the range anyway; a default outside it is a mistake.
        bounds = info.data.get("size_ratio_range")
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            raise ValueError(f"must lie within layout.size_ratio_range [{bounds[0]}, {bounds[1]}]")
        return value


class CompositionConfig(Section):
    # Below 32 pixels the minimum box sizes of the layout round to nothing.
    canvas_size: Annotated[StrictInt, Field(ge=32)] = 1024
    flip_probability: Fraction = 0.5
    max_rotation_degrees: Annotated[StrictFloat, Field(ge=0.0, le=180.0)] = 5.0
    # Of the canvas side, in each direction.
    max_shift_fraction: Annotated[StrictFloat, Field(ge=0.0, le=0.5)] = 0.01
    # PNG zlib level for intermediate images: 1 is several times faster than 6.
    png_compress_level: Annotated[StrictInt, Field(ge=0, le=9)] = 1
    # On a ground-plane scene (gen4gen/compositing.py), per object: darkening at the core of its
    # contact shadow (0: no shadow) ...
    shadow_strength: Fraction = 0.45
    # ... and at most this much Gaussian blur (px) to match a softer scene (noise is matched too).
    # Its colour and brightness are harmonised by the recolouring stage ([recolour]).
    max_blur_sigma: NonNegativeFloat = 1.2


class RecolourConfig(Section):
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
    guidance_scale: NonNegativeFloat = 6.0
    num_inference_steps: Count = 60
    # Share of the diffusion schedule re-run over the initial image; 0 would change nothing.
    strength: PositiveFraction = 0.9
    refiner_denoising_start: Annotated[StrictFloat, Field(gt=0.0, lt=1.0)] = 0.75
    # How the base hands over to the refiner: "image" decodes to pixels and re-encodes (as the
    # original script); "latent" passes the latents on, skipping one VAE decode and encode.
    refiner_handoff: Literal["image", "latent"] = "image"
    # SDXL works at this size; other canvas sizes are resized to it and back.
    resolution: Pixels = 1024
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
    prompt_template: Annotated[str, template(allowed=("background",))] = "a realistic photo of {background}"
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    # The paper's feathering: box blur of this radius, then intensity rescaled from [127.5, 255].
    feather_radius: NonNegativeCount = 5
    feather_low: Annotated[StrictFloat, Field(ge=0.0, lt=255.0)] = 127.5
    # Objects on black (a layout without a ground): "lab" moves each object's LAB statistics
    # towards the whole background's, "poisson" blends it in the gradient domain. Objects
    # standing in their scene (the embedded default): "lab" and "poisson" harmonise each object
    # locally, towards the scene in a ring around it (gen4gen/compositing.py harmonise_local).
    harmonisation: Literal["lab", "poisson", "none"] = "lab"
    # 0 keeps the object's colours, 1 matches the background's LAB statistics fully (in a
    # scene: the lightness's mean and spread).
    harmonisation_strength: Fraction = 0.35
    # In a scene, how far an object's colour (LAB a, b means) moves towards its surroundings: a
    # small cast only, the object's colour is its identity.
    harmonisation_colour_strength: Fraction = 0.15
    batch_size: Count = 4

    @field_validator("resolution")
    @classmethod
    def _latent_multiple(cls, value: int) -> int:
        # SDXL's VAE works on 8x8 pixel blocks.
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (SDXL's latent grid), e.g. {max(8, value // 8 * 8)}")
        return value


class CaptionConfig(Section):
    # layout_retelling: told from the layout's boxes (embedded). vlm: an image-text-to-text
    # model through transformers (LLaVA-1.5 as in the paper). vlm_api: an OpenAI-compatible
    # vision chat endpoint. The training-prompt strategies are the same for every backend.
    backend: Literal["layout_retelling", "vlm", "vlm_api"] = "layout_retelling"
    vlm_model: str = "llava-hf/llava-1.5-7b-hf"
    # {objects}: "a cat and a cup"; {background}: the layout's background phrase.
    vlm_prompt: Annotated[str, template(allowed=("objects", "background"))] = (
        "Describe this image in detail in a few sentences: the objects, their appearance, where "
        "they are relative to each other, and the background. It shows {objects} in {background}.")
    max_new_tokens: Count = 200
    device: Device = "auto"
    dtype: DType = "bf16"
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
    # Custom Diffusion's token style: "<new1> cat". Without {index} every concept would share one token.
    concept_token: Annotated[str, template(required=("index",))] = "<new{index}>"
    composition_token: Annotated[str, template(required=("index",))] = "<comp{index}>"


class FilterConfig(Section):
    # Visible pixels after occlusion / pixels of the pasted object.
    min_visible_fraction: Fraction = 0.6
    # Pixels inside the canvas / pixels of the object before clipping (truncation check).
    min_inside_fraction: Fraction = 0.97
    # Visible object pixels as a fraction of the canvas.
    min_area_fraction: Fraction = 0.01
    # Mask pixels / their bounding box: below this the "object" is specks or a thin outline.
    min_mask_fill: Fraction = 0.08
    # Mask pixels / source photo pixels: a mask covering nearly the whole photo means the
    # segmentation kept the background (a box photographed head-on still passes).
    max_frame_fraction: Fraction = 0.97
    # Reject images whose objects come from a photo with a cut-out finding (truncated_source,
    # fragments, rectangular_cutout; thresholds in [segmentation], findings in its manifest).
    photo_checks: bool = True
    # Placement checks of the embedded ground-plane composites. None: on with the scene-bank
    # repainter, off with a generative one (sdxl draws its own supports and ground); true or
    # false: as set. implausible_scale: the objects' sizes, after depth, contradict the
    # real-world size priors by more than max_scale_contradiction (a class varies by ~1.5x).
    implausible_scale: bool | None = None
    max_scale_contradiction: Annotated[StrictFloat, Field(ge=1.0)] = 2.0
    # floating: an object's base lies more than floating_tolerance_px above the floor's top edge.
    floating: bool | None = None
    floating_tolerance_px: NonNegativeCount = 2


class ReportConfig(Section):
    contact_sheet_columns: Count = 6
    contact_sheet_thumb: Pixels = 192
    # The sheet shows the first images only (a sheet of thousands is unreadable).
    contact_sheet_max_images: Count = 96
    # The rejected images' sheet: each kind of reason first, then in turn (all are in rejected.jsonl).
    rejected_sheet_max_images: Count = 24
    metadata_thumbnails: NonNegativeCount = 8
