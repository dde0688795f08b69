"""Composites that read as photographs, through the whole pipeline: every accepted image's objects
stand on the floor at depth-consistent sizes with their shadows; cut-outs come out clean; photos
that cannot make a good cut-out are rejected with their reason and reported once.

A synthetic project always runs; the demo's packaged photos and DreamBooth subjects need the
IS-Net weights (and ``../shared/data/dreambooth``), and are skipped with the reason otherwise.
"""
from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from dagster import DagsterInstance
from PIL import Image

from gen4gen.config import PROJECT_ROOT, load_config
from gen4gen.ground_plane import depth_scale
from gen4gen.size_priors import real_world_size
from gen4gen_assets.definitions import build_definitions
from gen4gen_assets.runner import materialize_all
from .conftest import SHARED_DATA, create_small_project, requires_shared

ISNET = PROJECT_ROOT / "weights" / "isnet" / "isnet-medium.onnx"
requires_isnet = pytest.mark.skipif(not ISNET.is_file(), reason=f"{ISNET} is absent (make weights): the demo's "
                                                                 "and DreamBooth's photos need IS-Net to be cut out")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _build(config_file: Path) -> None:
    summary = materialize_all(build_definitions(config_file=str(config_file)), DagsterInstance.ephemeral(),
                              log=lambda *_: None)
    assert not summary.failed, summary.failed


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("GEN4GEN_CONFIG", "GEN4GEN_DATA_DIR", "GEN4GEN_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def assert_every_accepted_image_stands_on_its_floor(data: Path) -> int:
    """The relations of the ground plane, over every accepted image; returns how many there are.

    Per object, from the layout and composition metadata: its base on the floor region; its
    depth and scale from its base row (one camera per image: px per metre in proportion to the
    depth scale, so the higher the base, the smaller); its shadow hanging from its base, on the
    floor, shifted along the image's one light direction.
    """
    rows = _rows(data / "mycanvas" / "metadata.jsonl")
    for row in rows:
        composition, index = row["image_id"].rsplit("/", 1)
        composed = json.loads((data / "build" / "composed" / composition / "manifest.json").read_text())
        entry = next(e for e in composed["images"] if e["index"] == int(index))
        layout = json.loads((data / "build" / "layouts" / composition / f"{int(index):03d}.json").read_text())
        canvas, ground = composed["canvas_size"], entry["ground"]
        horizon, floor_top = ground["horizon_y"], ground["floor_top_y"]
        light_x, light_y = ground["light_direction"]
        assert 0 < horizon <= floor_top < canvas and light_y > 0
        cameras = []
        for obj, planned in zip(entry["objects"], layout["objects"], strict=True):
            stands, shadow, placement = obj["ground"], obj["shadow"], planned["placement"]
            what = f"{row['image_id']} {obj['concept']}"
            # Its base on the floor region (as planned, and as composed).
            assert floor_top < placement["base_y"] <= canvas and placement["base_y"] == planned["box"][3], what
            assert stands["on_floor"] and floor_top < stands["base_y"] <= canvas, what
            assert abs(stands["base_y"] - placement["base_y"]) <= 2, what
            # Its depth and scale.
            assert placement["depth_scale"] == pytest.approx(depth_scale(placement["base_y"], horizon, canvas), abs=1e-5)
            assert stands["depth_scale"] == pytest.approx(depth_scale(stands["base_y"], horizon, canvas), abs=1e-5)
            assert placement["depth"] == pytest.approx(1 / placement["depth_scale"], rel=1e-4)
            assert abs(planned["box"][3] - planned["box"][1] - placement["scale"] * placement["height_m"]) <= 0.5 + 1e-6
            assert abs(stands["height_px"] - placement["scale"] * placement["height_m"]) <= 1.5, what
            if real_world_size(obj["class_name"]) and all(real_world_size(o["class_name"]) for o in entry["objects"]):
                assert placement["height_m"] == pytest.approx(real_world_size(obj["class_name"]))  # real-world size
            cameras.append((placement["base_y"], placement["scale"], placement["scale"] / placement["depth_scale"]))
            # Its shadow: hanging from its base, under it, on the floor, along the one light.
            assert shadow["base_y"] == stands["base_y"] and shadow["region"][1] >= floor_top, what
            x0, _, x1, _ = obj["pasted_box"]
            assert x0 <= shadow["centre"][0] - shadow["offset"][0] <= x1, what
            assert abs(shadow["centre"][1] - shadow["offset"][1] - stands["base_y"]) <= shadow["axes"][1], what
            assert shadow["offset"][0] * light_x >= 0 and shadow["offset"][1] * light_y >= 0, what
            assert 0 < shadow["strength"] <= 1 and shadow["axes"][0] > 0
        per_depth = [c[2] for c in cameras]
        assert max(per_depth) == pytest.approx(min(per_depth), rel=1e-4), row["image_id"]
        for (base_a, scale_a, _), (base_b, scale_b, _) in itertools.combinations(cameras, 2):
            if base_a != base_b:
                assert (scale_a < scale_b) == (base_a < base_b), row["image_id"]  # higher base, smaller
    return len(rows)


# ---------------------------------------------------------------- a synthetic project
def _rgba(alpha: np.ndarray, colour, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    texture = np.clip(np.array(colour, np.float32) + rng.normal(0, 12, alpha.shape + (3,)), 0, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([texture, alpha]), "RGBA")


def _supersampled(draw, shape=(160, 200)) -> np.ndarray:
    big = np.zeros((shape[0] * 4, shape[1] * 4), np.uint8)
    draw(big)
    return cv2.resize(big, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


# A teapot's body with a thin handle (attached), a detached fragment and a faint ghost beside it.
TEAPOT_BODY = _supersampled(lambda im: cv2.ellipse(im, (400, 360), (180, 140), 0, 0, 360, 255, -1))
TEAPOT_HANDLE = _supersampled(lambda im: cv2.ellipse(im, (580, 360), (72, 80), 0, 0, 360, 255, 10))
FRAGMENT = _supersampled(lambda im: cv2.circle(im, (120, 120), 24, 255, -1))
GHOST = _supersampled(lambda im: cv2.ellipse(im, (236, 232), (16, 12), 0, 0, 360, 255, -1)) // 5
# A dog photographed close: its body runs off the bottom of the photo.
DOG_CUT = _supersampled(lambda im: (cv2.ellipse(im, (400, 300), (200, 120), 0, 0, 360, 255, -1),
                                    cv2.rectangle(im, (240, 300), (560, 640), 255, -1),
                                    cv2.circle(im, (620, 200), 70, 255, -1)))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("realistic")
    data, config_file = create_small_project(root)
    teapot = np.maximum.reduce([TEAPOT_BODY, TEAPOT_HANDLE, FRAGMENT, GHOST])
    (data / "concepts" / "teapot").mkdir()
    _rgba(teapot, (210, 200, 190), 1).save(data / "concepts" / "teapot" / "pot.png")
    (data / "concepts" / "dog").mkdir()
    _rgba(DOG_CUT, (150, 110, 70), 2).save(data / "concepts" / "dog" / "close.png")
    import os

    saved = {k: os.environ.pop(k) for k in ("GEN4GEN_CONFIG", "GEN4GEN_DATA_DIR", "GEN4GEN_PROFILE") if k in os.environ}
    try:
        _build(config_file)
    finally:
        os.environ.update(saved)
    return data, config_file


def test_a_detached_fragment_and_a_faint_ghost_are_cleaned_away_the_handle_stays(synthetic):
    data, _ = synthetic
    manifest = json.loads((data / "build/segmented/teapot/manifest.json").read_text())
    photo, = manifest["photos"]
    quality = photo["quality"]
    assert quality["components"] >= 2 and quality["parts"] == 1
    assert quality["fragment_fraction"] > 0 and quality["ghost_fraction"] > 0
    assert photo["findings"] == [] and manifest["photo_findings"] == []
    cutout = np.asarray(Image.open(data / "build/segmented/teapot" / photo["cutout"]))[..., 3]
    mask = np.asarray(Image.open(data / "build/segmented/teapot" / photo["mask"])) > 0
    x0, y0, x1, y1 = photo["bbox"]
    assert not mask[FRAGMENT > 0].any()  # the fragment is gone from the mask ...
    assert (x0, y0) > (36, 36)  # ... and from the cut-out, cropped to the object
    ghost = np.zeros_like(mask)
    ghost[GHOST > 0] = True
    assert not cutout[ghost[y0:y1, x0:x1]].any()  # the faint ghost is gone
    handle_only = (TEAPOT_HANDLE >= 128) & (TEAPOT_BODY == 0)
    assert handle_only[y0:y1, x0:x1].sum() > 100 and (cutout[handle_only[y0:y1, x0:x1]] > 0).all()  # the handle stays
    assert cv2.connectedComponents((cutout > 0).astype(np.uint8))[0] == 2  # one piece (and the background)


def test_a_photo_cut_by_its_frame_is_reported_once_and_its_images_rejected(synthetic):
    data, _ = synthetic
    manifest = json.loads((data / "build/segmented/dog/manifest.json").read_text())
    photo, = manifest["photos"]
    assert [f["code"] for f in photo["findings"]] == ["truncated_source"]
    assert photo["quality"]["frame_contact"]["bottom"] > 0.3
    report, = manifest["photo_findings"]  # once, however many images use the photo
    assert report["code"] == "truncated_source" and "cut by its frame; choose another" in report["message"]
    rejected = _rows(data / "mycanvas/rejected.jsonl")
    with_dog = [r for r in rejected if any(c["concept"] == "dog" for c in r["concepts"])]
    assert with_dog and all("truncated_source" in r["reason_codes"] for r in with_dog)
    for row in with_dog:
        assert len(row["reasons"]) == len(row["reason_codes"])
        reason = row["reasons"][row["reason_codes"].index("truncated_source")]
        assert reason.startswith("dog (photo close.png): cut by its photo's frame")
    assert not any(c["concept"] == "dog" for r in _rows(data / "mycanvas/metadata.jsonl") for c in r["concepts"])
    stats = json.loads((data / "mycanvas/stats.json").read_text())
    assert [(f["photo"], f["code"]) for f in stats["photo_findings"]] == [("dog/close.png", "truncated_source")]


def test_every_accepted_synthetic_image_stands_on_its_floor(synthetic):
    data, _ = synthetic
    assert assert_every_accepted_image_stands_on_its_floor(data) >= 3


def test_placement_checks_fire_on_the_embedded_composites_only(synthetic):
    from gen4gen.config import FilterConfig
    from gen4gen.filtering import check_image

    data, _ = synthetic
    composition = next(p.name for p in (data / "build/composed").iterdir() if "dog" not in p.name)
    entry = json.loads((data / "build/composed" / composition / "manifest.json").read_text())["images"][0]
    objects = json.loads(json.dumps(entry["objects"]))
    assert check_image(objects, FilterConfig()).accepted
    floating = objects[0]
    floating["ground"]["base_y"] = floating["ground"]["floor_top_y"] - 20  # lifted off the floor
    giant = objects[1]
    giant["ground"]["height_px"] *= 5  # drawn five times too large for its depth
    outcome = check_image(objects, FilterConfig())
    assert {"floating", "implausible_scale"} <= set(outcome.codes)
    assert check_image(objects, FilterConfig(), "sdxl").accepted  # a generative repaint draws its own ground
    assert set(check_image(objects, FilterConfig(floating=True), "sdxl").codes) == {"floating"}
    assert check_image(objects, FilterConfig(implausible_scale=False, floating=False)).accepted


# ---------------------------------------------------------------- the demo and DreamBooth
def _project(root: Path, extra: str = "") -> tuple[Path, Path]:
    data = root / "data"
    config_file = root / "gen4gen.toml"
    config_file.write_text(f'data_dir = "{data.as_posix()}"\nseed = 3\n[layout]\nimages_per_composition = 2\n'
                           f"[composition]\ncanvas_size = 256\n{extra}", encoding="utf-8")
    return data, config_file


@requires_isnet
def test_demo_rejects_the_frame_cut_astronaut_and_the_cat_close_up(tmp_path, clean_env):
    from gen4gen.demo_data import demo_notes, write_demo_concepts

    data, config_file = _project(tmp_path)
    write_demo_concepts(data / "concepts")
    _build(config_file)
    findings = {}
    for concept in ("astronaut", "cat", "coffee_cup", "flower", "motorcycle"):
        manifest = json.loads((data / "build/segmented" / concept / "manifest.json").read_text())
        findings[concept] = {f["code"] for f in manifest["photo_findings"]}
        assert len(manifest["photo_findings"]) == len(findings[concept])  # each reported once
    assert findings == {"astronaut": {"truncated_source"}, "cat": {"truncated_source", "rectangular_cutout"},
                        "coffee_cup": set(), "flower": set(), "motorcycle": set()}
    rejected = _rows(data / "mycanvas/rejected.jsonl")
    for concept, code in (("astronaut", "truncated_source"), ("cat", "rectangular_cutout")):
        rows = [r for r in rejected if any(c["concept"] == concept for c in r["concepts"])]
        assert rows and all(code in r["reason_codes"] for r in rows)
    assert assert_every_accepted_image_stands_on_its_floor(data) >= 1
    notes = demo_notes()
    assert [n.split(":")[0] for n in notes] == ["astronaut", "cat"] and "truncated_source" in notes[0]


@requires_isnet
@requires_shared(SHARED_DATA / "dreambooth")
def test_dreambooth_subjects_stand_on_their_floor(tmp_path, clean_env):
    data, config_file = _project(tmp_path, "[proposal]\nmax_compositions = 4\n")
    source = SHARED_DATA / "dreambooth"
    for subject in ("bear_plushie", "colorful_sneaker", "dog", "duck_toy"):
        (data / "concepts" / subject).mkdir(parents=True)
        shutil.copy(source / subject / "00.jpg", data / "concepts" / subject / "00.jpg")
    shutil.copy(source / "prompts_and_classes.txt", data / "concepts" / "prompts_and_classes.txt")
    _build(config_file)
    assert assert_every_accepted_image_stands_on_its_floor(data) >= 1
    # dog/00.jpg is cut by its frame at the bottom: reported once, its images rejected.
    manifest = json.loads((data / "build/segmented/dog/manifest.json").read_text())
    assert [f["code"] for f in manifest["photo_findings"]] == ["truncated_source"]
    assert all("truncated_source" in r["reason_codes"] for r in _rows(data / "mycanvas/rejected.jsonl")
               if any(c["concept"] == "dog" for c in r["concepts"]))
    config = load_config(config_file)
    assert config.layout.size_ratio_range == (0.0, 1.0)  # real-world sizes by default
