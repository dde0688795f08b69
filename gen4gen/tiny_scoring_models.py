"""Tiny random-weight CLIP (open_clip), OWL-ViT, OWLv2 and DINO models, saved the way real weights are
(the tests, and `gen4gen personalise --tiny`, which scores its samples with them).

The project loads them through the same code paths as real weights (an open_clip folder or
checkpoint file, ``from_pretrained`` of a local folder). Nothing is downloaded. Heavy imports
stay inside the functions; each builder is cached per folder.
"""
from __future__ import annotations

import json
from pathlib import Path

# One cache of built folders and one byte-level vocabulary for every tiny model.
from .tiny_models import byte_vocab
from .tiny_models import cached_build as cached_model

TINY_CLIP_CFG = {"embed_dim": 32,
                 "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}
TINY_CLIP_NAME = "gen4gen-tiny-clip"
# ------------------------------------------------------------------ open_clip
def build_open_clip(target: Path) -> None:
    """A folder as open_clip's ``local-dir:`` (and Hugging Face repos) hold it: config + weights."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    target.mkdir(parents=True)
    (target / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_CLIP_CFG,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }))
    torch.save(model.state_dict(), target / "open_clip_pytorch_model.bin")


def open_clip_dir(root: Path) -> Path:
    return cached_model("open_clip", root, build_open_clip)


def register_tiny_clip_name(root: Path) -> str:
    """Register the tiny architecture under a model name (as built-in names like ViT-B-32 are)."""
    import open_clip

    folder = Path(root) / "open_clip_configs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(folder)
    return TINY_CLIP_NAME


# ------------------------------------------------------------------ OWL-ViT / OWLv2
def _owl_configs():
    vocab = byte_vocab()
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=64,
                  patch_size=16)
    return vocab, text, vision


def _calm_boxes(model) -> None:
    """Random box heads saturate (zero-size boxes); zeroed, each box is its patch's prior box."""
    import torch

    with torch.no_grad():
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()


def _tokenizer(vocab):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def build_owlvit(target: Path) -> None:
    import torch
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    torch.manual_seed(0)
    vocab, text, vision = _owl_configs()
    model = OwlViTForObjectDetection(OwlViTConfig(text_config=text, vision_config=vision, projection_dim=32))
    _calm_boxes(model)
    size = {"height": 64, "width": 64}
    processor = OwlViTProcessor(image_processor=OwlViTImageProcessor(size=size, crop_size=size),
                                tokenizer=_tokenizer(vocab))
    model.save_pretrained(target)
    processor.save_pretrained(target)


def build_owlv2(target: Path) -> None:
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    torch.manual_seed(0)
    vocab, text, vision = _owl_configs()
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
    _calm_boxes(model)
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                               tokenizer=_tokenizer(vocab))
    model.save_pretrained(target)
    processor.save_pretrained(target)


def owlvit_dir(root: Path) -> Path:
    return cached_model("owlvit", root, build_owlvit)


def owlv2_dir(root: Path) -> Path:
    return cached_model("owlv2", root, build_owlv2)


# ------------------------------------------------------------------ DINO
def build_dino(target: Path) -> None:
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               image_size=64, patch_size=16))
    model.save_pretrained(target)
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(target)


def dino_dir(root: Path) -> Path:
    return cached_model("dino", root, build_dino)
