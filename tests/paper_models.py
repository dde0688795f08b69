"""Tiny random-weight stand-ins for the paper's models, saved the way real weights are.

Every builder writes a folder (or file) that the project then loads through the same
``from_pretrained`` / ``torch.load`` path as real weights; nothing is downloaded. Builders
are cached per folder, so test modules sharing a session folder build each model once.
Heavy imports stay inside the functions.
"""
from __future__ import annotations

import json
from pathlib import Path

from gen4gen.tiny_models import tiny_clip_tokenizer, tiny_vae
from gen4gen.tiny_models import cached_build as cached_model


# ------------------------------------------------------------------ SDXL inpainting + refiner
def _text_encoders(seed: int):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    common = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                  vocab_size=514, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                  pad_token_id=513, projection_dim=32)
    return CLIPTextModel(CLIPTextConfig(**common)), CLIPTextModelWithProjection(CLIPTextConfig(**common))


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    # The scheduler both SDXL checkpoints ship.
    return EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", prediction_type="epsilon",
                                  timestep_spacing="leading", steps_offset=1)


def _unet(in_channels: int, cross_attention_dim: int, n_time_ids: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=n_time_ids * 8 + 32,
    )


def build_sdxl_inpaint(target: Path) -> None:
    """Like diffusers/stable-diffusion-xl-1.0-inpainting-0.1: 9-channel UNet, two text encoders."""
    import torch
    from diffusers import StableDiffusionXLInpaintPipeline

    text_encoder, text_encoder_2 = _text_encoders(0)
    torch.manual_seed(1)
    pipe = StableDiffusionXLInpaintPipeline(
        vae=tiny_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tiny_clip_tokenizer(),
        tokenizer_2=tiny_clip_tokenizer(), unet=_unet(9, 64, 6), scheduler=_scheduler(),
        requires_aesthetics_score=False, force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(target)


def build_sdxl_refiner(target: Path) -> None:
    """Like stabilityai/stable-diffusion-xl-refiner-1.0: no first text encoder, aesthetic score."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline

    _, text_encoder_2 = _text_encoders(2)
    torch.manual_seed(3)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=tiny_vae(), text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None,
        tokenizer_2=tiny_clip_tokenizer(), unet=_unet(4, 32, 5), scheduler=_scheduler(),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    pipe.save_pretrained(target)


def sdxl_inpaint(root: Path) -> Path:
    return cached_model("sdxl-inpaint", root, build_sdxl_inpaint)


def sdxl_refiner(root: Path) -> Path:
    return cached_model("sdxl-refiner", root, build_sdxl_refiner)


# ------------------------------------------------------------------ IS-Net
def build_isnet_checkpoint(target: Path) -> None:
    """A full-size IS-Net (44 M parameters) with random weights, saved as a state dict like
    the official isnet-general-use.pth; the tests run it at a small input size."""
    import torch

    from gen4gen.models.isnet_arch import ISNetDIS

    torch.manual_seed(0)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ISNetDIS().state_dict(), target)


def isnet_checkpoint(root: Path) -> Path:
    return cached_model("isnet-random.pth", root, build_isnet_checkpoint)


# ------------------------------------------------------------------ BiRefNet-style remote code
_BIREFNET_CONFIG = '''
from transformers import PretrainedConfig


class TinyBiRefNetConfig(PretrainedConfig):
    model_type = "tiny_birefnet"

    def __init__(self, channels=8, **kwargs):
        self.channels = channels
        super().__init__(**kwargs)
'''

_BIREFNET_MODEL = '''
import torch
from torch import nn
from transformers import PreTrainedModel

from .configuration_tiny_birefnet import TinyBiRefNetConfig


class TinyBiRefNet(PreTrainedModel):
    """Shaped like BiRefNet's interface: image in, a list of logit maps out (last = final)."""

    config_class = TinyBiRefNetConfig

    def __init__(self, config):
        super().__init__(config)
        self.encoder = nn.Conv2d(3, config.channels, 3, padding=1)
        self.head = nn.Conv2d(config.channels, 1, 3, padding=1)
        self.post_init()

    def forward(self, x):
        hidden = torch.relu(self.encoder(x))
        return [self.head(hidden) * 0.5, self.head(hidden)]
'''


def build_birefnet(target: Path) -> None:
    """A folder laid out like ZhengPeng7/BiRefNet: config.json with ``auto_map`` to the model
    code shipped beside the weights, loaded with ``trust_remote_code``."""
    import importlib.util
    import sys

    import torch

    target.mkdir(parents=True, exist_ok=True)
    (target / "configuration_tiny_birefnet.py").write_text(_BIREFNET_CONFIG)
    (target / "modeling_tiny_birefnet.py").write_text(_BIREFNET_MODEL)
    package = "_tiny_birefnet_build"
    for name in ("configuration_tiny_birefnet", "modeling_tiny_birefnet"):
        spec = importlib.util.spec_from_file_location(f"{package}.{name}", target / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"{package}.{name}"] = module
        if package not in sys.modules:
            sys.modules[package] = type(sys)(package)
            sys.modules[package].__path__ = [str(target)]
        spec.loader.exec_module(module)
    config_cls = sys.modules[f"{package}.configuration_tiny_birefnet"].TinyBiRefNetConfig
    model_cls = sys.modules[f"{package}.modeling_tiny_birefnet"].TinyBiRefNet
    torch.manual_seed(0)
    model = model_cls(config_cls(channels=8))
    model.save_pretrained(target)
    config = json.loads((target / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_tiny_birefnet.TinyBiRefNetConfig",
                          "AutoModelForImageSegmentation": "modeling_tiny_birefnet.TinyBiRefNet"}
    (target / "config.json").write_text(json.dumps(config, indent=2))


def birefnet(root: Path) -> Path:
    return cached_model("birefnet-tiny", root, build_birefnet)


# ------------------------------------------------------------------ LLaVA-style VLM
_LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def build_llava(target: Path) -> None:
    """LLaVA-1.5's architecture (CLIP vision tower + projector + Llama), tiny: 32-px images,
    a byte-level tokenizer, LLaVA-1.5's conversation format as the chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<unk>", "<s>", "</s>", "<pad>", "<image>"):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>",
                                        extra_special_tokens={"image_token": "<image>"})
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                       num_hidden_layers=2, image_size=32, patch_size=8, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                num_key_value_heads=4, num_hidden_layers=2, max_position_embeddings=512,
                                bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"]),
        image_token_index=vocab["<image>"], vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", chat_template=_LLAVA_TEMPLATE,
        num_additional_image_tokens=1)
    model.save_pretrained(target)
    processor.save_pretrained(target)


def llava(root: Path) -> Path:
    return cached_model("llava-tiny", root, build_llava)
