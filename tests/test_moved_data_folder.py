"""A data folder moved or mounted elsewhere keeps working: the platform's files name paths
relative to their folder (``gen4gen.roots.Root.relative`` / ``locate``), never absolutely."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dagster import DagsterInstance, Failure

from gen4gen.cli import main as cli
from gen4gen.concepts import load_registry
from gen4gen.io import BadInput
from gen4gen_assets.definitions import build_definitions
from gen4gen_assets.runner import materialize_all

from .conftest import create_small_project, make_concepts

# The triple composition's smallest object covers ~3% of the canvas: its images are rejected,
# so rejected.jsonl has rows (and their source_image) to check.
REJECT_SOME = "[filter]\nmin_area_fraction = 0.04\n"
# Every kind of text file the platform writes into the data folder; each must be present.
TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".html")
BUILD_STAGES = ("segmented", "layouts", "composed", "recoloured", "captions")


def _point_at(config_file: Path, old: Path, new: Path, target: Path) -> Path:
    target.write_text(config_file.read_text().replace(old.as_posix(), new.as_posix()))
    return target


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """A small project built at one path, then its data folder renamed to another."""
    root = tmp_path_factory.mktemp("moved")
    built_at, config_file = create_small_project(root / "first_mount", REJECT_SOME)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("GEN4GEN_CONFIG", "GEN4GEN_DATA_DIR", "GEN4GEN_PROFILE"):
            patch.delenv(name, raising=False)
        summary = materialize_all(build_definitions(config_file=str(config_file)), DagsterInstance.ephemeral(),
                                  log=lambda *_: None)
    assert not summary.failed, summary.failed
    new_home = root / "second_mount" / "dataset"
    new_home.parent.mkdir()
    built_at.rename(new_home)
    config = _point_at(config_file, built_at, new_home, root / "second_mount" / "gen4gen.toml")
    return built_at, new_home, config


@pytest.fixture(autouse=True)
def _environment(tmp_path, monkeypatch):
    for name in ("GEN4GEN_CONFIG", "GEN4GEN_DATA_DIR", "GEN4GEN_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))  # a node that never saw the folder


def _files_naming(data: Path, *old: Path) -> tuple[dict[str, int], list[str]]:
    """Checked files by suffix, and every file (other than PNGs) whose bytes contain an old path."""
    needles = [str(p).encode() for p in old] + [p.as_posix().encode() for p in old]
    checked: dict[str, int] = {}
    naming = []
    for path in sorted(data.rglob("*")):
        # PNGs hold pixels; a Dagster instance kept in the folder is Dagster's own bookkeeping.
        if not path.is_file() or path.suffix == ".png" or ".dagster_home" in path.relative_to(data).parts:
            continue
        checked[path.suffix] = checked.get(path.suffix, 0) + 1
        content = path.read_bytes()
        if any(needle in content for needle in needles):
            naming.append(str(path.relative_to(data)))
    return checked, naming


def _plan(config: Path, capsys) -> list[str]:
    capsys.readouterr()
    assert cli(["--config", str(config), "plan"]) == 0
    return capsys.readouterr().out.strip().splitlines()


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_no_file_of_the_moved_folder_names_its_old_place(moved):
    old, data, _ = moved
    assert not old.exists()
    checked, naming = _files_naming(data, old)
    # Text files of every kind are among those read (catalogue, manifests, fingerprints, caches, the
    # export's JSONL, the report), so the check cannot pass by reading nothing.
    assert all(checked.get(suffix) for suffix in TEXT_SUFFIXES), checked
    assert (data / "build/.state/export_hashes.json").is_file()
    assert naming == []
    registry = load_registry(data / "build/concepts.json")
    photo = next(p for c in registry["concepts"] if c["key"] == "red_ball" for p in c["photos"])
    assert photo["file"] == "red_ball/photo 0.png"
    assert {c["name"]: c["folder"] for c in registry["concepts"]}["blue box"] == "blue box"
    manifest = json.loads((data / "build/segmented/blue_box/manifest.json").read_text())
    assert [e["source_photo"] for e in manifest["photos"]] == ["blue box/photo 0.png"]
    composed = json.loads((data / "build/composed/blue_box+red_ball/manifest.json").read_text())
    assert {o["source_photo"] for i in composed["images"] for o in i["objects"]} <= {
        "blue box/photo 0.png", "red_ball/photo 0.png", "red_ball/photo 1.png"}
    rejected = [json.loads(line) for line in (data / "mycanvas/rejected.jsonl").read_text().splitlines()]
    assert rejected, "the configuration rejects the triple composition's images"
    for row in rejected:
        assert row["source_image"] == f"build/recoloured/{row['composition']}/{row['image_id'][-3:]}.png"
        assert (data / row["source_image"]).is_file()
    assert json.loads((data / "reports/report.json").read_text())["evaluation"]["cache"]["folder"] \
        == "build/.cache/scores"


def test_nothing_is_stale_after_the_move_and_every_image_verifies(moved, capsys):
    _, data, config = moved
    assert _plan(config, capsys) == ["nothing to do: every partition is current"]
    images = sorted((data / "mycanvas").glob("*.png"))
    # 12 built; rejected: the triple's 3, and 3 where the cone at its real size is below min_area_fraction.
    assert len(images) == 6
    for image in images:
        capsys.readouterr()
        assert cli(["--config", str(config), "lineage", str(image), "--verify"]) == 0, image
        out, err = capsys.readouterr()
        assert "verified" in err and err.rstrip().endswith(": 0 missing or changed"), err
        # The chain reaches the concept photos, named in the data folder as it is now.
        assert "[source_photo] concept_images concepts/" in out


def test_a_concept_added_in_the_new_place_builds_only_what_it_adds(moved, tmp_path, capsys):
    old, first, config = moved
    data = tmp_path / "third_mount"
    shutil.copytree(first, data, symlinks=True, copy_function=shutil.copy2)  # mtimes kept, as by a move
    config = _point_at(config, first, data, tmp_path / "gen4gen.toml")
    before = load_registry(data / "build/concepts.json")
    built = {stage: {f.name: _snapshot(f) for f in (data / "build" / stage).iterdir()} for stage in BUILD_STAGES}
    make_concepts(tmp_path / "incoming", {"yellow_star": [("triangle", (230, 210, 40))]})

    assert cli(["--config", str(config), "add-concept", str(tmp_path / "incoming" / "yellow_star"),
                "--name", "yellow_star", "--no-build"]) == 0
    planned = _plan(config, capsys)
    assert "segmented_foregrounds[yellow_star]: new concept" in planned
    assert not [line for line in planned if line.startswith("segmented_foregrounds[") and "yellow_star" not in line]
    assert all("yellow_star" in line for line in planned if line.startswith(("layouts[", "composed_images[")))
    assert cli(["--config", str(config), "materialize"]) == 0

    after = load_registry(data / "build/concepts.json")
    old_keys = {c["key"] for c in before["compositions"]}
    new_keys = {c["key"] for c in after["compositions"]} - old_keys
    assert new_keys and all("yellow_star" in k for k in new_keys)
    assert {c["key"] for c in after["concepts"]} == {c["key"] for c in before["concepts"]} | {"yellow_star"}
    for stage, folders in built.items():
        for name, files in folders.items():  # untouched partitions keep their bytes and mtimes
            assert _snapshot(data / "build" / stage / name) == files, (stage, name)
        for key in (["yellow_star"] if stage == "segmented" else new_keys):
            assert (data / "build" / stage / key / "manifest.json").is_file(), (stage, key)
    star = json.loads((data / "build/segmented/yellow_star/manifest.json").read_text())
    assert [e["source_photo"] for e in star["photos"]] == ["yellow_star/photo 0.png"]
    assert _plan(config, capsys) == ["nothing to do: every partition is current"]
    _, naming = _files_naming(data, old, first)
    assert naming == []


def test_a_catalogue_with_absolute_paths_from_an_earlier_version_still_loads(moved, tmp_path, capsys, monkeypatch):
    """Absolute names inside the concepts folder are read as before; photos are not decoded again."""
    _, first, config = moved
    data = tmp_path / "data"
    shutil.copytree(first, data, symlinks=True, copy_function=shutil.copy2)
    config = _point_at(config, first, data, tmp_path / "gen4gen.toml")
    registry_file = data / "build/concepts.json"
    registry = json.loads(registry_file.read_text())
    for concept in registry["concepts"]:  # as the previous version wrote it
        concept["folder"] = str(data / "concepts" / concept["folder"])
        for photo in concept["photos"]:
            photo["file"] = str((data / "concepts" / photo["file"]).resolve())
    registry_file.write_text(json.dumps(registry, indent=2, sort_keys=True))

    def never(*_args, **_kwargs):
        raise AssertionError("an unchanged catalogued photo was decoded again")

    monkeypatch.setattr("gen4gen.concepts.load_photo", never)
    assert _plan(config, capsys) == ["nothing to do: every partition is current"]
    summary = materialize_all(build_definitions(config_file=str(config)), DagsterInstance.ephemeral(),
                              log=lambda *_: None)
    assert not summary.failed, summary.failed
    rewritten = load_registry(registry_file)
    assert sorted(p["file"] for c in rewritten["concepts"] for p in c["photos"]) == [
        "blue box/photo 0.png", "green_cone/photo 0.png", "red_ball/photo 0.png", "red_ball/photo 1.png"]
    assert sorted(c["folder"] for c in rewritten["concepts"]) == ["blue box", "green_cone", "red_ball"]


def test_names_read_back_must_stay_inside_their_folder(moved, tmp_path):
    from gen4gen.concepts import ConceptRecord, PhotoRecord, photo_path
    from gen4gen.config import PipelineConfig
    from gen4gen.roots import OutsideRoot, concepts_root
    from gen4gen.stages import compose_composition
    from gen4gen.stages.segmentation import ConceptSegmentationFailed, segment_concept

    _, first, _ = moved
    concepts = first / "concepts"
    root = concepts_root(concepts)
    assert root.locate("red_ball/photo 0.png") == (concepts / "red_ball/photo 0.png").resolve()
    assert root.relative(concepts / "red_ball" / "photo 0.png") == "red_ball/photo 0.png"
    with pytest.raises(OutsideRoot, match="climbs out with '..'"):
        root.locate("../build/concepts.json")
    with pytest.raises(OutsideRoot, match="outside the concepts folder"):
        root.locate(str(first / "build" / "concepts.json"))  # absolute (earlier versions), outside
    with pytest.raises(OutsideRoot, match="is an absolute path"):
        root.locate(str(concepts / "red_ball" / "photo 0.png"), written_before=False)
    with pytest.raises(OutsideRoot, match="outside the concepts folder"):
        root.relative(first / "build" / "concepts.json")
    with pytest.raises(BadInput, match="climbs out"):
        photo_path(concepts, {"file": "../mycanvas/metadata.jsonl"})

    # A catalogue naming a photo with '..': segmentation refuses it before reading anything.
    data = tmp_path / "data"
    shutil.copytree(first, data, symlinks=True, copy_function=shutil.copy2)
    config = PipelineConfig(data_dir=str(data))
    photo = PhotoRecord(file="../build/concepts.json", name="x.png", stem="x", sha256="0" * 64, width=9, height=9)
    concept = ConceptRecord(key="red_ball", name="red_ball", class_name="ball", folder="red_ball", token_index=1,
                            photos=[photo])
    never = type("Never", (), {"fallback_warning": None, "identity": lambda self: {"backend": "none"},
                               "segment": lambda self, *a: pytest.fail("refused photos are never segmented")})()
    with pytest.raises(ConceptSegmentationFailed, match="climbs out with '..'") as info:
        segment_concept(concept, never, tmp_path / "out", config)
    assert info.value.path == str(data / "concepts" / "red_ball")

    # A segmented manifest naming its source photo absolutely or with '..': composition refuses it.
    manifest_file = data / "build/segmented/red_ball/manifest.json"
    for bad in (str(data / "concepts/red_ball/photo 0.png"), "../../etc/passwd"):
        manifest = json.loads(manifest_file.read_text())
        for entry in manifest["photos"]:
            entry["source_photo"] = bad
        manifest_file.write_text(json.dumps(manifest))
        with pytest.raises(BadInput, match="source_photo .*rebuild the segmented foregrounds") as info:
            compose_composition("blue_box+red_ball", config, out_dir=tmp_path / "composed")
        assert info.value.path == str(manifest_file)


def test_an_instance_kept_in_the_data_folder_follows_it(tmp_path):
    from gen4gen_assets.concepts import DATA_DIR_KEY, bind_instance

    old, new = tmp_path / "a" / "data", tmp_path / "b" / "data"
    (old / ".dagster_home").mkdir(parents=True)
    bind_instance(DagsterInstance.from_config(str(old / ".dagster_home")), old)
    new.parent.mkdir()
    old.rename(new)
    travelling = DagsterInstance.from_config(str(new / ".dagster_home"))
    bind_instance(travelling, new)
    assert travelling.run_storage.get_cursor_values({DATA_DIR_KEY})[DATA_DIR_KEY] == str(new)
    (tmp_path / "home").mkdir()
    elsewhere = DagsterInstance.from_config(str(tmp_path / "home"))
    bind_instance(elsewhere, new)
    with pytest.raises(Failure, match="needs an instance of its own"):
        bind_instance(elsewhere, tmp_path / "c" / "data")
