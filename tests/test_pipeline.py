"""The whole asset graph through Dagster, in process, on synthetic concepts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dagster import DagsterInstance, materialize
from PIL import Image

from gen4gen.config import load_config
from gen4gen.io import sha256_file
from gen4gen_assets.definitions import build_definitions
from gen4gen_assets.runner import materialize_all

from .conftest import copy_template, create_small_project

EXPECTED_ASSETS = {"concept_images", "segmented_foregrounds", "layouts", "composed_images", "recoloured_images",
                   "captions", "mycanvas", "evaluation_report"}


def _build(config_file: Path):
    instance = DagsterInstance.ephemeral()
    summary = materialize_all(build_definitions(config_file=str(config_file)), instance, log=lambda *_: None)
    return instance, summary


@pytest.fixture(scope="module")
def built_project(tmp_path_factory):
    """One build for the module's tests, which only read it (a test that changes files works on a copy)."""
    root = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("GEN4GEN_CONFIG", "GEN4GEN_DATA_DIR", "GEN4GEN_PROFILE"):
            patch.delenv(name, raising=False)
        data, config_file = create_small_project(root)
        instance, summary = _build(config_file)
    assert not summary.failed, summary.failed
    return root, data, config_file, instance


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_every_asset_materialises_with_metadata(built_project):
    _, data, config_file, instance = built_project
    materialised = {key.path[0] for key in instance.get_asset_keys()}
    assert EXPECTED_ASSETS <= materialised
    # Partitions were registered from the concept folders ("blue box" becomes "blue_box").
    assert sorted(instance.get_dynamic_partitions("concepts")) == ["blue_box", "green_cone", "red_ball"]
    compositions = instance.get_dynamic_partitions("compositions")
    assert len(compositions) == 4 and all("+" in c for c in compositions)
    event = instance.get_latest_materialization_event(
        __import__("dagster").AssetKey("segmented_foregrounds"))
    metadata = event.asset_materialization.metadata
    assert metadata["photos"].value >= 1 and "backend" in metadata and "preview" in metadata


def test_segmented_foregrounds_use_the_photo_alpha(built_project):
    _, data, _, _ = built_project
    manifest = json.loads((data / "build/segmented/red_ball/manifest.json").read_text())
    assert [p["backend"] for p in manifest["photos"]] == ["existing_alpha", "existing_alpha"]
    source = np.asarray(Image.open(data / "concepts/red_ball/photo 0.png"))[..., 3] > 127
    mask = np.asarray(Image.open(data / "build/segmented/red_ball" / manifest["photos"][0]["mask"])) > 0
    iou = (source & mask).sum() / (source | mask).sum()
    assert iou > 0.98


def test_layouts_and_composites_are_consistent(built_project):
    _, data, config_file, _ = built_project
    config = load_config(config_file)
    canvas = config.composition.canvas_size
    for layout_file in (data / "build/layouts").glob("*/manifest.json"):
        document = json.loads(layout_file.read_text())
        assert len(document["images"]) == config.layout.images_per_composition
        for image in document["images"]:
            assert [o["concept"] for o in image["objects"]] == document["composition"].split("+")
            for obj in image["objects"]:
                x0, y0, x1, y1 = obj["box"]
                assert 0 <= x0 < x1 <= canvas and 0 <= y0 < y1 <= canvas
        composed = json.loads((data / "build/composed" / document["composition"] / "manifest.json").read_text())
        for entry in composed["images"]:
            image = np.asarray(Image.open(data / "build/composed" / document["composition"] / entry["image"]))
            assert image.shape == (canvas, canvas, 3)
            union = np.asarray(Image.open(data / "build/composed" / document["composition"] / entry["mask"])) >= 128
            for obj in entry["objects"]:
                inst = np.asarray(Image.open(data / "build/composed" / document["composition"] / obj["instance_mask"])) > 0
                assert inst.sum() > 0 and (inst & ~union).sum() <= 0.02 * inst.sum()
                # Objects sit on black in the composite: their pixels are not background.
                assert image[inst].mean() > 20


def test_mycanvas_export_loads_as_imagefolder(built_project):
    _, data, _, _ = built_project
    rows = _rows(data / "mycanvas/metadata.jsonl")
    rejected = _rows(data / "mycanvas/rejected.jsonl")
    assert len(rows) + len(rejected) == 4 * 3
    assert rows, "no image passed the checks"
    for row in rows:
        assert (data / "mycanvas" / row["file_name"]).is_file()
        classes = {c["class_name"] for c in row["concepts"]}
        for class_name in classes:
            assert class_name in row["captions"]["detailed"]
        for concept in row["concepts"]:
            assert concept["token"] in row["captions"]["background_in_text"]
            assert concept["token"] in row["captions"]["global_composition_token"]
            assert row["captions"]["repeated_concept_tokens"].count(concept["token"]) == 2
        assert row["background_prompt"] in row["captions"]["background_in_text"]
        assert row["background_prompt"] not in row["captions"]["global_composition_token"]
    for row in rejected:
        assert row["reasons"] and row["reason_codes"]
    datasets = pytest.importorskip("datasets")
    dataset = datasets.load_dataset("imagefolder", data_dir=str(data / "mycanvas"), split="train")
    assert len(dataset) == len(rows)
    assert dataset[0]["image"].size == (256, 256)
    assert set(dataset[0]["captions"]) >= {"detailed", "global_composition_token", "repeated_concept_tokens",
                                           "background_in_text"}


def test_report_counts_match_the_export(built_project):
    _, data, _, _ = built_project
    report = json.loads((data / "reports/report.json").read_text())
    rows = _rows(data / "mycanvas/metadata.jsonl")
    assert report["accepted"] == len(rows)
    assert sum(v["accepted"] for v in report["images_per_composition"].values()) == len(rows)
    assert sum(report["concepts_per_image"].values()) == len(rows)
    assert "CP-CLIP" in " ".join(report["not_computed"])
    sheet = Image.open(data / "reports/contact_sheet.png")
    assert sheet.width > 0 and (data / "reports/plots.png").stat().st_size > 1000
    assert "MyCanvas dataset report" in (data / "reports/report.md").read_text()


def test_rematerialising_reproduces_identical_images(built_project, tmp_path_factory):
    tmp_path, data, config_file, _ = built_project
    def outputs(root: Path) -> list[Path]:  # hidden folders are caches (preview thumbnails)
        return [p for p in (root / "build").rglob("*.png") if not any(x.startswith(".") for x in p.relative_to(root).parts)]

    first = {p.relative_to(data): sha256_file(p) for p in outputs(data)}
    first.update({p.relative_to(data): sha256_file(p) for p in (data / "mycanvas").glob("*.png")})
    # A second data folder with the same photos and configuration, built from scratch.
    other = tmp_path_factory.mktemp("again") / "data"
    import shutil

    shutil.copytree(data / "concepts", other / "concepts")
    other_config = config_file.parent / "again.toml"
    other_config.write_text(config_file.read_text().replace(str(data).replace("\\", "/"), str(other).replace("\\", "/")))
    _, summary = _build(other_config)
    assert not summary.failed
    second = {p.relative_to(other): sha256_file(p) for p in outputs(other)}
    second.update({p.relative_to(other): sha256_file(p) for p in (other / "mycanvas").glob("*.png")})
    assert first == second and len(first) > 20


def test_single_asset_materialises_with_dagster_materialize(small_project):
    """`materialize()` on a selection, as a user would from a notebook."""
    _, data, config_file = small_project
    from gen4gen_assets.concepts import concept_images
    from gen4gen_assets.definitions import build_resources
    from gen4gen_assets.segmentation import segmented_foregrounds

    resources = build_resources(config_file=str(config_file))
    instance = DagsterInstance.ephemeral()
    result = materialize([concept_images], instance=instance, resources=resources)
    assert result.success
    result = materialize([concept_images, segmented_foregrounds], selection="segmented_foregrounds",
                         partition_key="green_cone", instance=instance, resources=resources)
    assert result.success
    assert (data / "build/segmented/green_cone/manifest.json").is_file()
    assert not (data / "build/segmented/red_ball").exists()


def test_export_check_catches_a_changed_image_even_after_a_clean_check(built_project, small_project):
    """The asset check hashes only files changed since its last run, and still catches a change."""
    from gen4gen_assets.definitions import build_resources
    from gen4gen_assets.mycanvas import mycanvas_files_match_metadata

    data, config_file = copy_template(built_project[0], small_project[0] / "copy")
    settings = build_resources(config_file=str(config_file))["settings"]
    assert mycanvas_files_match_metadata(settings=settings).passed
    row = _rows(data / "mycanvas/metadata.jsonl")[0]
    image = data / "mycanvas" / row["file_name"]
    image.write_bytes(image.read_bytes()[:-8] + b"tampered")  # same size, new bytes and mtime
    result = mycanvas_files_match_metadata(settings=settings)
    assert not result.passed and result.metadata["problems"].value == [f"changed: {row['file_name']}"]
    image.unlink()
    result = mycanvas_files_match_metadata(settings=settings)
    assert not result.passed and result.metadata["problems"].value == [f"missing: {row['file_name']}"]
