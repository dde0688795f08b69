"""Regeneration you can trust: every change rebuilds what it affects, nothing is lost or mixed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dagster import DagsterInstance

from gen4gen.cli import main as cli
from gen4gen.concepts import load_registry
from gen4gen_assets.definitions import build_definitions

from .conftest import build_template, copy_template, create_small_project

QUIET = {"log": lambda *_: None}


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def _stage_files(data: Path, stage: str) -> dict[str, tuple[bytes, int]]:
    return _files(data / "build" / stage)


def _export(data: Path) -> tuple[dict[str, bytes], str, str]:
    folder = data / "mycanvas"
    return ({p.name: p.read_bytes() for p in folder.glob("*.png")}, (folder / "metadata.jsonl").read_text(),
            (folder / "rejected.jsonl").read_text())


@pytest.fixture(scope="module")
def built_template(tmp_path_factory):
    """One small dataset built once; every test works on its own copy."""
    return build_template(tmp_path_factory.mktemp("template"))


@pytest.fixture
def project(built_template, tmp_path, monkeypatch):
    monkeypatch.delenv("GEN4GEN_PROFILE", raising=False)
    monkeypatch.delenv("GEN4GEN_CONFIG", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return copy_template(built_template, tmp_path)


def _with(config_file: Path, section: str, line: str) -> None:
    text = config_file.read_text()
    header = f"[{section}]"
    text = text.replace(header, f"{header}\n{line}") if header in text else text + f"\n{header}\n{line}\n"
    config_file.write_text(text)


def _plan(config_file: Path, capsys) -> list[str]:
    capsys.readouterr()
    assert cli(["--config", str(config_file), "plan"]) == 0
    return capsys.readouterr().out.strip().splitlines()


def _materialize(config_file: Path, *extra: str) -> int:
    return cli(["--config", str(config_file), "materialize", *extra])


def test_nothing_to_do_after_a_build(project, capsys):
    _, config_file = project
    assert _plan(config_file, capsys) == ["nothing to do: every partition is current"]


def test_harmonisation_strength_rebuilds_recoloured_images_and_the_export_only(project, capsys):
    data, config_file = project
    segmented, layouts = _stage_files(data, "segmented"), _stage_files(data, "layouts")
    recoloured = _stage_files(data, "recoloured")
    _with(config_file, "recolour", "harmonisation_strength = 0.9")
    lines = _plan(config_file, capsys)
    recolour_lines = [line for line in lines if line.startswith("recoloured_images[")]
    compositions = [c["key"] for c in load_registry(data / "build/concepts.json")["compositions"]]
    assert len(recolour_lines) == len(compositions)
    assert all("config recolour.harmonisation_strength 0.35 → 0.9" in line for line in recolour_lines)
    assert not [line for line in lines if line.startswith(("segmented_foregrounds[", "layouts[", "composed_images["))]
    assert _materialize(config_file) == 0
    assert _stage_files(data, "segmented") == segmented  # bytes and mtimes
    assert _stage_files(data, "layouts") == layouts
    after = _stage_files(data, "recoloured")
    changed_pngs = [k for k in after if k.endswith(".png") and after[k][0] != recoloured.get(k, (b"",))[0]]
    assert len(changed_pngs) == len([k for k in after if k.endswith(".png")])
    assert _plan(config_file, capsys) == ["nothing to do: every partition is current"]


def test_seed_rebuilds_layouts_and_everything_after_but_not_segmentation(project, capsys):
    _, config_file = project
    config_file.write_text(config_file.read_text().replace("seed = 7", "seed = 8"))
    stages = {line.split("[")[0].split(":")[0] for line in _plan(config_file, capsys)}
    assert stages == {"layouts", "composed_images", "recoloured_images", "captions", "mycanvas", "evaluation_report"}


def test_report_settings_rebuild_only_the_report(project, capsys):
    data, config_file = project
    export = _export(data)
    _with(config_file, "report", "contact_sheet_columns = 3")
    assert [line.split(":")[0] for line in _plan(config_file, capsys)] == ["evaluation_report"]
    assert _materialize(config_file) == 0
    assert _export(data) == export
    assert _plan(config_file, capsys) == ["nothing to do: every partition is current"]


def test_an_empty_or_missing_concepts_folder_changes_nothing_and_fails(project, capsys):
    data, config_file = project
    export, build = _export(data), _files(data / "build" / "captions")
    moved = data.parent / "concepts-aside"
    shutil.move(data / "concepts", moved)
    capsys.readouterr()
    assert _materialize(config_file) != 0
    assert "concepts" in capsys.readouterr().out
    (data / "concepts").mkdir()
    assert _materialize(config_file) != 0
    assert _export(data) == export and _files(data / "build" / "captions") == build


def test_a_deleted_and_a_byte_edited_exported_image_are_restored(project, capsys):
    data, config_file = project
    export = _export(data)
    images = sorted((data / "mycanvas").glob("*.png"))
    images[0].unlink()
    with open(images[1], "r+b") as handle:  # in place, same size
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    lines = _plan(config_file, capsys)
    assert any(line.startswith("mycanvas") and images[0].name in line for line in lines)
    assert _materialize(config_file) == 0
    assert _export(data) == export


def test_a_failing_composition_is_left_out_retried_then_given_up(project, capsys, monkeypatch):
    data, config_file = project
    _with(config_file, "regeneration", "max_attempts = 2")
    _with(config_file, "recolour", "harmonisation_strength = 0.5")
    registry = load_registry(data / "build/concepts.json")
    victim = registry["compositions"][0]["key"]
    from gen4gen.stages import recolouring

    real = recolouring.recolour_composition

    def failing(composition, *args, **kwargs):
        if composition == victim:
            raise RuntimeError("test backend refuses this composition")
        return real(composition, *args, **kwargs)

    monkeypatch.setattr("gen4gen_assets.recolouring.recolour_composition", failing)
    assert _materialize(config_file) == 1
    stats = json.loads((data / "mycanvas/stats.json").read_text())
    assert victim in stats["left_out"] and "test backend refuses" in stats["left_out"][victim]
    assert victim not in {json.loads(r)["composition"] for r in (data / "mycanvas/metadata.jsonl").read_text().splitlines()}
    assert len(stats["composition_keys"]) == len(registry["compositions"]) - 1
    failure = json.loads((data / "build/.state/failures/recoloured_images" / f"{victim}.json").read_text())
    assert failure["attempts"] == 1
    assert _materialize(config_file) == 1  # retried
    failure = json.loads((data / "build/.state/failures/recoloured_images" / f"{victim}.json").read_text())
    assert failure["attempts"] == 2
    lines = _plan(config_file, capsys)
    assert any(line.startswith(f"recoloured_images[{victim}]: (given up)") for line in lines)


def test_a_composition_key_the_catalogue_did_not_propose_is_refused(project):
    data, config_file = project
    instance = DagsterInstance.ephemeral()
    defs = build_definitions(config_file=str(config_file))
    defs.resolve_job_def("catalogue_concepts").execute_in_process(instance=instance)
    instance.add_dynamic_partitions("compositions", ["blue_box+green_cone+red_ball+x"])
    result = defs.resolve_job_def("build_compositions").execute_in_process(
        instance=instance, partition_key="blue_box+green_cone+red_ball+x", raise_on_error=False)
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "was not proposed by the catalogue" in message
    assert not (data / "build/layouts/blue_box+green_cone+red_ball+x").exists()


def test_a_second_data_folder_gets_its_own_instance_partitions(project, tmp_path, capsys):
    data, config_file = project
    assert _materialize(config_file) == 0
    from gen4gen.cli.common import instance

    first = sorted(instance().get_dynamic_partitions("concepts"))
    other_root = tmp_path / "other"
    other_data, other_config = create_small_project(other_root)
    shutil.rmtree(other_data / "concepts" / "blue box")
    assert cli(["--config", str(other_config), "materialize"]) == 0
    assert sorted(instance().get_dynamic_partitions("concepts")) == first
    assert cli(["--config", str(config_file), "materialize", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "nowhere").exists()


def _walk(node):
    yield node
    for parent in node["parents"]:
        yield from _walk(parent)


def test_a_flipped_photo_is_the_only_photo_in_the_new_images_ancestry(project, capsys):
    """Files that come out byte-identical from the new photo (a mirrored cut-out has the same box,
    so its layout) still get the new photo as their ancestor, and every image verifies."""
    from PIL import Image

    from gen4gen.io import sha256_file

    data, config_file = project
    photo = data / "concepts/green_cone/photo 0.png"
    old_sha = sha256_file(photo)
    layouts = {p: p.read_bytes() for p in (data / "build/layouts").glob("*green_cone*/*.json")
               if p.name != "fingerprint.json"}
    with Image.open(photo) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photo)
    new_sha = sha256_file(photo)
    assert _materialize(config_file) == 0
    assert any(path.is_file() and path.read_bytes() == content for path, content in layouts.items()), \
        "no layout came out byte-identical: the case this test is about did not happen"
    rows = [json.loads(r) for r in (data / "mycanvas/metadata.jsonl").read_text().splitlines()]
    with_cone = [r for r in rows if "green_cone" in r["composition"]]
    assert with_cone
    for row in rows:
        image = data / "mycanvas" / row["file_name"]
        assert cli(["--config", str(config_file), "lineage", str(image), "--verify"]) == 0, row["file_name"]
        capsys.readouterr()
        assert cli(["--config", str(config_file), "lineage", str(image), "--json"]) == 0
        photos = {n["sha256"] for n in _walk(json.loads(capsys.readouterr().out))
                  if n.get("role") == "source_photo" and n["path"] == "concepts/green_cone/photo 0.png"}
        assert photos == ({new_sha} if row in with_cone else set()), row["file_name"]
        assert old_sha not in photos


def test_lineage_from_steps_with_skewed_clocks_is_complete(project, capsys):
    """Steps on hosts whose clocks disagree: downstream journals look older than upstream ones
    (by their mtimes and their `created_at`); the rebuilt database still links every image to its photos."""
    import os

    from gen4gen.lineage import JOURNAL_NAME

    data, config_file = project
    rank = {"segmented": 0, "layouts": 1, "composed": 2, "recoloured": 3, "captions": 4, "mycanvas": 5, "reports": 6}
    for journal in data.rglob(JOURNAL_NAME):
        stage = next((part for part in journal.relative_to(data).parts if part in rank), "mycanvas")
        skewed = 2_000_000_000 - 86_400 * 365 * rank[stage]  # the later the stage, the older its clock
        lines = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()]
        for line in lines:
            if "created_at" in line:
                line["created_at"] = f"{2030 - rank[stage]}-01-01T00:00:00+00:00"
        journal.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        os.utime(journal, (skewed, skewed))
    assert cli(["--config", str(config_file), "lineage", "rebuild"]) == 0
    rows = [json.loads(r) for r in (data / "mycanvas/metadata.jsonl").read_text().splitlines()]
    assert rows
    for row in rows:
        image = data / "mycanvas" / row["file_name"]
        assert cli(["--config", str(config_file), "lineage", str(image), "--verify"]) == 0
        capsys.readouterr()
        assert cli(["--config", str(config_file), "lineage", str(image), "--json"]) == 0
        photos = {n["path"] for n in _walk(json.loads(capsys.readouterr().out)) if n.get("role") == "source_photo"}
        assert {p.split("/")[1] for p in photos} == {c["concept"].replace("_", " ") if c["concept"] == "blue_box"
                                                     else c["concept"] for c in row["concepts"]}
