"""Before any run: are the weights and libraries the configured backends need present?

``gen4gen check-weights`` and ``gen4gen materialize`` call :func:`check` first, so a machine
without the paper's weights fails in a second with the list of what is missing and how to get
it, instead of deep inside a Dagster run. Nothing is downloaded and torch is not imported.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from gen4gen.config import PipelineConfig

from .common import MissingWeightsError, WeightSpec, hf_offline, locate


@dataclass
class PreflightReport:
    profile: str
    lines: list[str] = field(default_factory=list)  # one per stage: what it will use
    problems: list[str] = field(default_factory=list)  # fatal: missing weights or libraries
    warnings: list[str] = field(default_factory=list)  # not fatal (e.g. a fallback)

    @property
    def ok(self) -> bool:
        return not self.problems

    def error(self) -> MissingWeightsError:
        return MissingWeightsError(self.problems, self.profile)

    def text(self) -> str:
        out = [f"profile {self.profile!r} (HF_HUB_OFFLINE={'1' if hf_offline() else '0'}):"]
        out += [f"  {line}" for line in self.lines]
        out += [f"  warning: {w}" for w in self.warnings]
        if self.problems:
            out.append(str(self.error()))
        return "\n".join(out)


_LIBRARIES = {"isnet_torch": ("torch",), "birefnet": ("torch", "transformers"), "sdxl": ("torch", "diffusers",
              "transformers"), "vlm": ("torch", "transformers"), "owlvit": ("torch", "transformers"),
              "owlv2": ("torch", "transformers"), "transformers": ("torch", "transformers"),
              "open_clip": ("torch", "open_clip")}


def weight_specs(config: PipelineConfig) -> list[WeightSpec]:
    from . import clip, sdxl_repaint, segmentation_torch, vlm_caption

    return (segmentation_torch.weight_specs(config.segmentation) + sdxl_repaint.weight_specs(config.recolour)
            + vlm_caption.weight_specs(config.caption) + clip.weight_specs(config))


def _check_clip(config: PipelineConfig, report: "PreflightReport") -> None:
    """CLIP weights are named by open_clip tags: resolve them as the loader will."""
    from . import clip

    if config.clip.backend == "none":
        report.lines.append("clip: none (no screening by CLIP; the CLIP metrics are not computed)")
        return
    if importlib.util.find_spec("open_clip") is None:
        return  # reported with the other missing packages
    name = f"{config.clip.model}/{config.clip.pretrained}" if config.clip.pretrained else config.clip.model
    try:
        source = clip.resolve_open_clip(config.clip, clip.pretrained_table())
    except MissingWeightsError as exc:
        report.problems.extend(exc.problems)
        report.lines.append(f"clip: CLIP {name}: MISSING")
        return
    where = source.pretrained or source.model_name
    suffix = " (not cached: will be downloaded on first use)" if source.will_download else ""
    report.lines.append(f"clip: CLIP {name}: {where}{suffix}")


def check(config: PipelineConfig, project_root: Path) -> PreflightReport:
    report = PreflightReport(config.profile)
    backends = {"segmentation": config.segmentation.backend, "layout": config.layout.backend,
                "recolour": config.recolour.backend, "caption": config.caption.backend,
                "clip": config.clip.backend, "detector": config.detector.backend, "dino": config.dino.backend}
    for stage, backend in backends.items():
        missing = [lib for lib in _LIBRARIES.get(backend, ()) if importlib.util.find_spec(lib) is None]
        if missing:
            report.problems.append(f"{stage} ({backend}): Python packages {', '.join(missing)} are not installed; "
                                   "run `make setup-paper` (pip install -e '.[paper]')")
    if config.segmentation.backend == "isnet_onnx":
        onnx = config.paths.segmentation_weights
        if onnx.is_file():
            report.lines.append(f"segmentation: isnet_onnx {onnx}")
        else:
            report.lines.append("segmentation: isnet_onnx (weights absent)")
            report.warnings.append(f"IS-Net ONNX weights not found at {onnx}: segmentation falls back to GrabCut; "
                                   "run `make weights`")
    for spec in weight_specs(config):
        found = locate(spec, project_root)
        where = found.hub_id or (str(found.path) if found.path else spec.source)
        if found.problem:
            report.problems.append(found.problem)
            report.lines.append(f"{spec.stage}: {spec.what}: MISSING ({spec.source})")
        elif found.will_download:
            report.lines.append(f"{spec.stage}: {spec.what}: {where} (not cached: will be downloaded on first use)")
        else:
            report.lines.append(f"{spec.stage}: {spec.what}: {where}")
    _check_clip(config, report)
    if config.layout.backend == "llm":
        llm = config.layout.llm
        report.lines.append(f"layout: LLM at {llm.base_url} model {llm.model or '(server default)'} (not contacted; "
                            "after repeated failures a layout falls back to the rule-based planner)")
    else:
        report.lines.append("layout: rule_based")
    if config.caption.backend == "vlm_api":
        endpoint = config.caption.endpoint
        report.lines.append(f"caption: vision endpoint {endpoint.base_url} model {endpoint.model or '(server default)'}"
                            " (not contacted)")
    elif config.caption.backend == "layout_retelling":
        report.lines.append("caption: layout_retelling")
    if config.recolour.backend == "scene_bank":
        report.lines.append("recolour: scene_bank")
    return report
