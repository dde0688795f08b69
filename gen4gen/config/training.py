"""Configuration of the personalisation loop: Custom Diffusion runs on MyCanvas (or the concepts'
photos alone, the paper's baseline), and the samples drawn from each trained model.

Defaults follow the Custom Diffusion paper and diffusers' example for several concepts: SD 1.x at
512 px, batch 2, learning rate 1e-5 scaled by batch x accumulation x GPUs, 500 steps.
"""
from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StrictFloat, model_validator

from .types import Count, Device, NonNegativeCount, PositiveFloat, Section

# What a run trains on: MyCanvas with one of the paper's prompting strategies (or the detailed
# captions with concept tokens), or each concept's own photos with "a photo of <newN> <class>".
Strategy = Literal["global_composition_token", "repeated_concept_tokens", "background_in_text", "detailed"]


def _run_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", value):
        raise ValueError("must be 1-64 characters of a-z, 0-9, _ and -, starting with a letter or digit")
    return value


RunName = Annotated[str, AfterValidator(_run_name)]


class TrainingRun(Section):
    """One model to train (one partition of `personalised_models`)."""

    name: RunName
    source: Literal["mycanvas", "photos"] = "mycanvas"
    # For source = "mycanvas"; ignored for the photos-only baseline.
    strategy: Strategy = "background_in_text"
    # Catalogue keys of the concepts; empty: every concept in the catalogue (a concept added later
    # joins the run, whose training set then changes: it is marked stale, never retrained on its own).
    concepts: list[str] = Field(default_factory=list)


class TrainingConfig(Section):
    """Custom Diffusion fine-tuning (README: "Personalisation: fine-tune, sample, compare")."""

    # A local SD 1.x pipeline folder (diffusers layout), or a Hugging Face repo id found in the cache.
    base_model: str = "CompVis/stable-diffusion-v1-4"
    resolution: Count = 512
    max_train_steps: Count = 500
    learning_rate: PositiveFloat = 1e-5
    # lr x batch x gradient accumulation x GPUs, as the Custom Diffusion example does.
    scale_lr: bool = True
    train_batch_size: Count = 2
    gradient_accumulation_steps: Count = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    seed: NonNegativeCount = 42
    # "crossattn_kv": the cross-attention key/value projections (the paper); "crossattn": also query and output.
    freeze_model: Literal["crossattn_kv", "crossattn"] = "crossattn_kv"
    adam_weight_decay: Annotated[StrictFloat, Field(ge=0.0)] = 1e-2
    device: Device = "auto"
    # Class-prior regularisation: "none", a folder of "<folder>/<class>/*.png|jpg", or "generate"
    # (num_class_images per class from the base model, cached under build/class_priors/).
    class_priors: str = "none"
    num_class_images: Count = 200
    prior_loss_weight: PositiveFloat = 1.0
    runs: list[TrainingRun] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_runs(self) -> "TrainingConfig":
        names = [run.name for run in self.runs]
        if len(names) != len(set(names)):
            raise ValueError(f"training run names must be unique: {names}")
        return self


# Backgrounds no MyCanvas scene is named after: the held-out prompts (the paper's "unseen" set).
# Phrased as MyCanvas names its scenes ("a photo of ... in <background>").
DEFAULT_HELD_OUT_BACKGROUNDS = ["a sandy beach", "a snowy forest", "a city street at night", "a library",
                                "a wooden boat"]


class SamplingConfig(Section):
    """Samples of each trained model (`generated_images`), for training-style and held-out prompts."""

    images_per_prompt: Count = 4
    num_inference_steps: Count = 50
    guidance_scale: PositiveFloat = 6.0
    seed: NonNegativeCount = 1234
    # Training-style prompts per concept set (its MyCanvas backgrounds, in the model's own style).
    train_prompts_per_set: Count = 1
    # Held-out backgrounds; one that any training prompt mentions is left out (and said so).
    held_out_backgrounds: list[str] = Field(default_factory=lambda: list(DEFAULT_HELD_OUT_BACKGROUNDS))
    held_out_prompts_per_set: NonNegativeCount = 2
    batch_size: Count = 4
