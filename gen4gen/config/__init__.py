"""The one configuration model: every tunable of the pipeline, with its default and its range.

Users override values in a TOML file (``gen4gen.toml`` in the working directory, or the
file named by ``GEN4GEN_CONFIG``); ``GEN4GEN_DATA_DIR`` overrides the data directory.
Resources and assets read their parameters from here and nowhere else. ``load_config`` raises
``ConfigError`` with one line per invalid value (file, dotted key, what is allowed).

Modules: ``types`` (shared ranges), ``stages``, ``quality``, ``operations`` and ``training`` (the sections),
``pipeline`` (the whole model, profiles, paths), ``loading`` (layers and errors).
"""
from .errors import ConfigError
from .loading import load_config
from .operations import DvcConfig, RayConfig, RegenerationConfig
from .pipeline import PROFILES, PROJECT_ROOT, PipelineConfig, ProjectPaths, apply_profile, deep_merge, resolve_path
from .quality import ClipConfig, DetectorConfig, DinoConfig, EvaluationConfig, ScoreThreshold, ScreeningConfig
from .stages import (DEFAULT_NEGATIVE_PROMPT, CaptionConfig, CompositionConfig, EndpointConfig, FilterConfig,
                     InputConfig, LayoutConfig, ProposalConfig, RecolourConfig, ReportConfig, SegmentationConfig)
from .training import SamplingConfig, TrainingConfig, TrainingRun
from .types import Device, DType, Section

__all__ = [
    "PROFILES", "PROJECT_ROOT", "DEFAULT_NEGATIVE_PROMPT", "ConfigError", "load_config", "apply_profile", "deep_merge",
    "resolve_path", "PipelineConfig", "ProjectPaths", "Section", "Device", "DType",
    "InputConfig", "ProposalConfig", "SegmentationConfig", "LayoutConfig", "CompositionConfig", "RecolourConfig",
    "CaptionConfig", "FilterConfig", "ReportConfig", "EndpointConfig",
    "ClipConfig", "DetectorConfig", "DinoConfig", "ScoreThreshold", "ScreeningConfig", "EvaluationConfig",
    "DvcConfig", "RayConfig", "RegenerationConfig", "TrainingConfig", "TrainingRun", "SamplingConfig",
]
