"""Where CLIP, detector and DINO weights come from, located without loading them.

open_clip names CLIP weights by architecture and pretrained tag; :func:`resolve_open_clip`
finds them (a local file or folder, the Hugging Face cache, or a download when online) for
the loader in :mod:`gen4gen.models.clip` and for the weights preflight. The detector's and
DINO's weights are Hugging Face folders, located by :func:`gen4gen.models.common.locate`.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path

from .common import MissingWeightsError, WeightSpec, hf_offline, locate

# Weight files open_clip looks for in a folder, in its order of preference.
_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                    "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "model.pth")


def open_clip_advice(model: str, tag: str | None, tag_cfg: dict | None) -> str:
    """How to obtain a CLIP model's weights, for the message of a MissingWeightsError."""
    hub = (tag_cfg or {}).get("hf_hub", "")
    parts = []
    if hub:
        repo, filename = hub.rstrip("/"), "open_clip_pytorch_model.bin"
        if not hub.endswith("/"):
            repo, filename = hub.rsplit("/", 1)
        parts.append(f"on a machine with internet run `hf download {repo} {filename}` and copy the Hugging Face "
                     f"cache here, or point clip.weights_path at that file (keeping clip.model = {model!r} and "
                     f"clip.pretrained = {tag!r})")
    elif (tag_cfg or {}).get("url"):
        parts.append(f"download {tag_cfg['url']} and point clip.weights_path at it")
    parts.append("see README.md, 'Metrics and screening' for the supported backbones")
    return "; ".join(parts)


@dataclass
class OpenClipSource:
    """Where configured CLIP weights come from, as ``open_clip.create_model_and_transforms`` takes them."""

    model_name: str
    pretrained: str | None
    kwargs: dict  # force_quick_gelu / force_preprocess_cfg matching the weights
    tag_cfg: dict | None
    weights: str | None = None  # a local file or folder, when configured
    will_download: bool = False  # online and not cached: open_clip fetches it on first use


def pretrained_table():
    """open_clip's table of pretrained tags (``get_pretrained_cfg``, ``list_pretrained_tags_by_model``).

    Loaded without open_clip's package init, which imports every model (≈ 6 s here), so the
    weights preflight stays fast; the whole package is the fallback.
    """
    name = "_gen4gen_open_clip_tables"
    if name + ".pretrained" in sys.modules:
        return sys.modules[name + ".pretrained"]
    try:
        spec = importlib.util.find_spec("open_clip")
        package = types.ModuleType(name)
        package.__path__ = [str(Path(spec.origin).parent)]
        sys.modules[name] = package
        return importlib.import_module(name + ".pretrained")
    except Exception:  # pragma: no cover - open_clip laid out differently: import it whole
        sys.modules.pop(name, None)
        import open_clip

        return open_clip


def resolve_open_clip(config, table) -> OpenClipSource:
    """The configured CLIP weights, located without loading them; MissingWeightsError if absent."""
    from gen4gen.config import resolve_path

    model_name, tag = config.model, config.pretrained
    tag_cfg = table.get_pretrained_cfg(model_name, tag) if tag and ":" not in model_name else None
    matching = {}
    if tag_cfg:  # a known tag's weights: its activation and normalisation must be used with them
        matching = {"force_quick_gelu": bool(tag_cfg.get("quick_gelu", False)),
                    "force_preprocess_cfg": {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
                                             if k in tag_cfg}}
    if config.weights_path:
        path = resolve_path(config.weights_path)
        if not path.exists():
            raise MissingWeightsError([f"CLIP ({model_name}): clip.weights_path {path} does not exist; "
                                       + open_clip_advice(model_name, tag, tag_cfg)])
        if path.is_dir() and (path / "open_clip_config.json").is_file():
            return OpenClipSource(f"local-dir:{path}", None, {}, tag_cfg, str(path))
        weights = path
        if path.is_dir():
            weights = next((path / f for f in _OPEN_CLIP_FILES if (path / f).is_file()), None)
            if weights is None:
                raise MissingWeightsError([f"CLIP ({model_name}): folder {path} (clip.weights_path) has neither "
                                           f"open_clip_config.json nor a weight file ({', '.join(_OPEN_CLIP_FILES)})"])
        return OpenClipSource(model_name, str(weights), matching, tag_cfg, str(path))
    if model_name.startswith("local-dir:"):
        folder = resolve_path(model_name.split(":", 1)[1])
        if not (folder / "open_clip_config.json").is_file():
            raise MissingWeightsError([f"CLIP: {folder} (clip.model) has no open_clip_config.json"])
        return OpenClipSource(model_name, None, {}, None, str(folder))
    if model_name.startswith("hf-hub:"):
        spec = WeightSpec(stage="clip", what="CLIP", source=model_name.split(":", 1)[1],
                          required=("open_clip_config.json",), config_key="clip.model")
        located = locate(spec, Path.cwd())
        if located.problem:
            raise MissingWeightsError([located.problem])
        return OpenClipSource(model_name, None, {}, None, will_download=located.will_download)
    if not tag:
        raise MissingWeightsError([f"CLIP ({model_name}): no weights configured; set clip.pretrained to a tag "
                                   f"(e.g. 'openai') or clip.weights_path to a local checkpoint"])
    if not tag_cfg:
        if Path(tag).is_file():
            return OpenClipSource(model_name, tag, {}, None, tag)
        known = table.list_pretrained_tags_by_model(model_name)
        raise MissingWeightsError([f"CLIP: {tag!r} is not a pretrained tag of {model_name!r} (known: "
                                   f"{', '.join(known) or 'none; check clip.model'}), and not a file"])
    cached = _cached_tag_file(tag_cfg["hf_hub"]) if tag_cfg.get("hf_hub") else None
    if cached is not None:
        return OpenClipSource(model_name, cached, matching, tag_cfg)
    if hf_offline():
        raise MissingWeightsError([f"CLIP {model_name}/{tag}: not in the Hugging Face cache and "
                                   f"HF_HUB_OFFLINE=1; " + open_clip_advice(model_name, tag, tag_cfg)])
    # Online: open_clip downloads the tag. It only warns when a tag was trained with QuickGELU
    # (OpenAI's) and the architecture name lacks it; the activation must match the weights.
    return OpenClipSource(model_name, tag, {"force_quick_gelu": matching["force_quick_gelu"]}, tag_cfg,
                          will_download=True)


def _cached_tag_file(hub: str) -> str | None:
    from huggingface_hub import hf_hub_download

    repo, filename = (hub.rstrip("/"), "open_clip_pytorch_model.bin") if hub.endswith("/") else hub.rsplit("/", 1)
    for name in ([filename] if not hub.endswith("/") else ["open_clip_model.safetensors", filename]):
        try:
            return hf_hub_download(repo, name, local_files_only=True)
        except Exception:  # not cached
            continue
    return None


def detector_weight_spec(config) -> WeightSpec:
    what = {"owlvit": "OWL-ViT detector", "owlv2": "OWLv2 detector"}.get(config.backend, "detector")
    return WeightSpec(stage="detector", what=what, source=config.model, required=("config.json",),
                      config_key="detector.model",
                      how="OWL-ViT: google/owlvit-base-patch32 (Apache-2.0); OWLv2: google/owlv2-base-patch16-ensemble")


def dino_weight_spec(config) -> WeightSpec:
    return WeightSpec(stage="dino", what="DINO image encoder", source=config.model, required=("config.json",),
                      config_key="dino.model", how="CustomConcept101 uses facebook/dino-vits16 (Apache-2.0)")


def weight_specs(config) -> list[WeightSpec]:
    """The detector's and DINO's weights, where configured (``config``: the whole PipelineConfig).
    CLIP's are located by :func:`resolve_open_clip` (open_clip names them by tag)."""
    return (([detector_weight_spec(config.detector)] if config.detector.backend != "none" else [])
            + ([dino_weight_spec(config.dino)] if config.dino.backend != "none" else []))
