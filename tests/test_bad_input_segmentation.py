"""Bad and unusual user input, part 5: photos the catalogue accepts but segmentation cannot use.

Such a photo is rejected once, with its reason, in the segmentation manifest (not in the
catalogue); a concept none of whose photos can be used still gets its manifest, and a clear
error names the concept and each photo's reason.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gen4gen.config import PipelineConfig
from gen4gen.stages import segment_concept

from .test_bad_input import BLUE, RED, discover


class ColourSegmenter:
    """Does what every segmenter does with a photo's own alpha (uses it as the mask); its 'model'
    finds the pixels that differ from the top-left corner. Counts how it was called."""

    fallback_warning = None

    def __init__(self):
        self.calls = []

    def identity(self) -> dict:
        return {"backend": "colour_stub"}

    def segment(self, rgb, alpha=None):
        self.calls.append("alpha" if alpha is not None else "colours")
        if alpha is not None:
            soft, backend = alpha.astype(np.float32) / 255.0, "existing_alpha"
        else:
            corner = rgb[0, 0].astype(int)
            soft, backend = (np.abs(rgb.astype(int) - corner).sum(axis=2) > 30).astype(np.float32), "colour_stub"
        mask = ((soft >= 0.5) * 255).astype(np.uint8)
        return SimpleNamespace(alpha=(soft * 255).astype(np.uint8), mask=mask, backend=backend, rounds_run=1,
                               warnings=[])


def _object_on(background, size=(160, 120)) -> Image.Image:
    picture = Image.new("RGB", size, background)
    ImageDraw.Draw(picture).ellipse((40, 20, 120, 100), fill=RED)
    return picture


def _blank_transparent_gif(path) -> None:
    """A GIF whose transparent palette entry covers every pixel: nothing is visible in it."""
    picture = Image.new("P", (160, 120), 0)
    picture.putpalette([*BLUE] + [0] * 765)
    picture.save(path, format="GIF", transparency=0)


def _setup(tmp_path):
    data = tmp_path / "data"
    folder = data / "concepts" / "ghost"
    folder.mkdir(parents=True)
    return data, folder


def _concept(data):
    concepts, problems = discover(data / "concepts")
    return concepts[0], problems


def test_gif_named_jpg_is_catalogued_decoded_with_a_note_and_segmented(tmp_path):
    data, folder = _setup(tmp_path)
    picture = _object_on(BLUE).convert("RGBA")
    alpha = Image.new("L", picture.size, 0)
    ImageDraw.Draw(alpha).ellipse((40, 20, 120, 100), fill=255)
    picture.putalpha(alpha)
    picture.save(folder / "animation still.jpg", format="GIF")
    concept, problems = _concept(data)
    assert problems == [] and [p.name for p in concept.photos] == ["animation still.jpg"]
    segmenter = ColourSegmenter()
    result = segment_concept(concept, segmenter, data / "build" / "segmented" / "ghost", PipelineConfig(
        data_dir=str(data)))
    assert len(result.manifest["photos"]) == 1 and result.manifest["problems"] == []
    assert any("holds GIF data" in note and "animation still.jpg" in note for note in result.warnings), result.warnings


def test_photo_whose_own_transparency_hides_everything_is_segmented_from_its_colours(tmp_path):
    data, folder = _setup(tmp_path)
    rgba = np.dstack([np.asarray(_object_on(BLUE)), np.zeros((120, 160), np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "export.png")  # an editor's export with an empty alpha
    concept, _ = _concept(data)
    segmenter = ColourSegmenter()
    result = segment_concept(concept, segmenter, data / "build" / "segmented" / "ghost",
                             PipelineConfig(data_dir=str(data)))
    (entry,) = result.manifest["photos"]
    assert entry["backend"] == "colour_stub" and segmenter.calls == ["alpha", "colours"]
    assert 0.2 < entry["mask_fraction"] < 0.5
    assert any("transparency" in note and "export.png" in note for note in result.warnings), result.warnings


def test_concept_whose_every_photo_is_rejected_gets_its_manifest_and_a_clear_error(tmp_path):
    data, folder = _setup(tmp_path)
    _blank_transparent_gif(folder / "blank.jpg")
    Image.new("RGB", (160, 120), BLUE).save(folder / "flat.png")  # nothing but background
    concept, problems = _concept(data)
    # Not rejected upstream: the catalogue has no way to know, the segmentation stage does.
    assert problems == [] and sorted(p.name for p in concept.photos) == ["blank.jpg", "flat.png"]
    out_dir = data / "build" / "segmented" / "ghost"
    from gen4gen.stages.segmentation import ConceptSegmentationFailed

    with pytest.raises(ConceptSegmentationFailed) as info:
        segment_concept(concept, ColourSegmenter(), out_dir, PipelineConfig(data_dir=str(data)))
    message = str(info.value)
    assert "'ghost'" in message and "blank.jpg" in message and "flat.png" in message
    assert "transparency" in message and "found no object" in message
    assert info.value.concept == "ghost" and len(info.value.problems) == 2
    manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["photos"] == []
    rejected = sorted(p["path"].rsplit("/", 1)[-1] for p in manifest["problems"])
    assert rejected == ["blank.jpg", "flat.png"]  # each photo once, with its reason
    assert all(p["reason"] for p in manifest["problems"])
    assert sorted(p.name for p in out_dir.iterdir()) == ["manifest.json"]


def test_one_unusable_photo_does_not_fail_the_concept(tmp_path):
    data, folder = _setup(tmp_path)
    _blank_transparent_gif(folder / "blank.jpg")
    _object_on(BLUE).save(folder / "good.png")
    concept, _ = _concept(data)
    out_dir = data / "build" / "segmented" / "ghost"
    result = segment_concept(concept, ColourSegmenter(), out_dir, PipelineConfig(data_dir=str(data)))
    assert [e["stem"] for e in result.manifest["photos"]] == ["good"]
    assert [p["path"].rsplit("/", 1)[-1] for p in result.manifest["problems"]] == ["blank.jpg"]
