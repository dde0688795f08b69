"""Every backend of a model stage implements that stage's protocol (gen4gen.backends), and every
model resource hands its backend out the same way (``.backend``, ``.backend_name``).

The paper's backends are built without loading their models (their constructors only take the
configuration; the models load on first use), so these checks need no weights.
"""
from __future__ import annotations

import pytest

from gen4gen import backends
from gen4gen.config import (PROJECT_ROOT, CaptionConfig, LayoutConfig, RecolourConfig, SegmentationConfig,
                            load_config)
from gen4gen.scenes import BUILTIN_SCENES

SCENES = list(BUILTIN_SCENES)


def _segmenters():
    from gen4gen.models.segmentation_torch import TorchSegmenter
    from gen4gen.segmentation import IsNetOnnxSegmenter

    return [IsNetOnnxSegmenter(SegmentationConfig(), PROJECT_ROOT),
            TorchSegmenter(SegmentationConfig(backend="isnet_torch"), PROJECT_ROOT),
            TorchSegmenter(SegmentationConfig(backend="birefnet"), PROJECT_ROOT)]


def _layout_planners():
    from gen4gen.layout import RuleBasedLayoutPlanner
    from gen4gen.models.llm_layout import LlmLayoutPlanner

    return [RuleBasedLayoutPlanner(LayoutConfig()), LlmLayoutPlanner(LayoutConfig(backend="llm"))]


def _repainters():
    from gen4gen.models.sdxl_repaint import SdxlRepainter
    from gen4gen.recolour import SceneBankRepainter

    return [SceneBankRepainter(SCENES, RecolourConfig()),
            SdxlRepainter(RecolourConfig(backend="sdxl"), SCENES, PROJECT_ROOT)]


def _captioners():
    from gen4gen.captions import LayoutRetellingCaptioner
    from gen4gen.models.vlm_caption import EndpointCaptioner, TransformersCaptioner

    return [LayoutRetellingCaptioner(), TransformersCaptioner(CaptionConfig(backend="vlm"), PROJECT_ROOT),
            EndpointCaptioner(CaptionConfig(backend="vlm_api"))]


def _clip_family():
    """The CLIP, detector and DINO backends around stand-in models (their constructors only store them)."""
    from gen4gen.models.clip import DinoEmbedder, OpenClipBackend, OwlDetector

    return [(backends.ClipEmbedder, OpenClipBackend(None, None, None, "cpu", None, 1, {"backend": "open_clip"})),
            (backends.Detector, OwlDetector(None, None, "cpu", None, 0.1, "a photo of a {class_name}", 1,
                                            square_padded=False, identity={"backend": "owlvit"})),
            (backends.ImageEmbedder, DinoEmbedder(None, None, "cpu", None, 1, {"backend": "transformers"}))]


@pytest.mark.parametrize("protocol, build", [
    (backends.Segmenter, _segmenters), (backends.LayoutPlanner, _layout_planners),
    (backends.Repainter, _repainters), (backends.Captioner, _captioners)])
def test_each_backend_implements_its_stage_protocol(protocol, build):
    built = build()
    assert len(built) >= 2, "the embedded backend and the paper's, side by side"
    for backend in built:
        assert isinstance(backend, protocol), f"{type(backend).__name__} is not a {protocol.__name__}"
        assert isinstance(backend.name, str) and backend.name


def test_clip_detector_and_dino_implement_their_protocols():
    for protocol, backend in _clip_family():
        assert isinstance(backend, protocol), f"{type(backend).__name__} is not a {protocol.__name__}"
    clip, detector, dino = (backend for _, backend in _clip_family())
    assert not isinstance(detector, backends.ClipEmbedder) and not isinstance(dino, backends.ClipEmbedder)
    assert isinstance(clip, backends.ImageEmbedder)  # CLIP's image side serves where image embeddings do


def test_a_class_missing_a_method_is_not_a_backend():
    class SegmentsOnly:
        name, fallback_warning = "x", None

        def segment(self, rgb, alpha=None): ...

    assert not isinstance(SegmentsOnly(), backends.Segmenter)  # no identity(), no close()


def test_the_embedded_backends_identify_themselves():
    for build in (_segmenters, _layout_planners, _repainters, _captioners):
        embedded = build()[0]
        assert embedded.identity()["backend"] == embedded.name


@pytest.mark.parametrize("resource_name, protocol, expected", [
    ("SegmentationResource", backends.Segmenter, ("isnet_onnx", "grabcut")),
    ("LayoutPlannerResource", backends.LayoutPlanner, ("rule_based",)),
    ("RepaintResource", backends.Repainter, ("scene_bank",)),
    ("CaptionerResource", backends.Captioner, ("layout_retelling",))])
def test_model_resources_hand_out_backend_and_backend_name(resource_name, protocol, expected, tmp_path):
    import resources

    settings = resources.PipelineSettings(data_dir=str(tmp_path))
    resource = getattr(resources, resource_name)(settings=settings)
    assert isinstance(resource.backend, protocol)
    assert resource.backend is resource.backend  # built once, then kept
    assert resource.backend_name in expected and resource.backend_name == resource.backend.name
    first = resource.backend
    resource.teardown_after_execution(None)
    assert resource.backend is not first  # closed and dropped; the next use builds a new one


def test_clip_resources_have_no_backend_when_configured_off(tmp_path):
    import resources

    settings = resources.PipelineSettings(data_dir=str(tmp_path))
    assert load_config(data_dir=str(tmp_path)).clip.backend == "none"
    for cls in (resources.ClipResource, resources.DetectorResource, resources.DinoResource):
        resource = cls(settings=settings)
        assert resource.backend is None and resource.backend_name == "none"
        resource.teardown_after_execution(None)
