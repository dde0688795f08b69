"""`[ray] enabled`: the repainting models live in Ray workers, one per (fake) GPU, loaded once per
`materialize`; the data is byte for byte what a run without Ray makes."""
from __future__ import annotations

import importlib.util
import json

import pytest
from dagster import AssetKey, DagsterInstance

from gen4gen_assets.definitions import build_definitions
from gen4gen_assets.runner import materialize_all

from .conftest import create_small_project

if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is not installed (the `cluster` extra; make test installs it)", allow_module_level=True)

FAKE_GPUS = 4
# One image per worker call, so the three images of a composition go to three workers at once.
RAY_CONFIG = f"[ray]\nenabled = true\nlocal_gpus = {FAKE_GPUS}\n[recolour]\nbatch_size = 1\n"


def _build(root, extra: str = ""):
    data, config_file = create_small_project(root, extra)
    instance = DagsterInstance.ephemeral()
    summary = materialize_all(build_definitions(config_file=str(config_file)), instance, log=lambda *_: None)
    assert not summary.failed, summary.failed
    return data, instance


def _export(data) -> tuple[dict, list]:
    folder = data / "mycanvas"
    rows = [{k: v for k, v in json.loads(line).items() if k != "source_image"}
            for line in (folder / "metadata.jsonl").read_text().splitlines()]
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}, rows


def test_repainting_on_four_fake_gpus_loads_each_model_once_and_changes_no_byte(tmp_path):
    reference, _ = _build(tmp_path / "without_ray")
    try:
        data, instance = _build(tmp_path / "with_ray", RAY_CONFIG)
    finally:
        import ray  # only now: the run asked for a loopback-only local Ray before importing it

        ray.shutdown()
    assert _export(data) == _export(reference)
    assert _export(data)[0], "nothing was exported: nothing compared"

    placement = json.loads((data / "build/placement.json").read_text())
    (pool,) = placement["pools"]
    workers = pool["workers"]
    assert len(workers) == FAKE_GPUS
    # One worker per GPU holds the composition steps' models (here the scene-bank repainter), loaded once.
    assert [w["models"] for w in workers] == [{"gen4gen.pooled_backends:ModelBundle": 1}] * FAKE_GPUS
    assert all(w["members"] == {"repaint": "scene_bank"} for w in workers)
    assert len({(w["node_id"], tuple(w["gpu_ids"])) for w in workers}) == FAKE_GPUS  # no GPU shared
    assert all(len(w["gpu_ids"]) == 1 and w["cuda_visible_devices"] == w["gpu_ids"][0] for w in workers)
    images = sum(len(list(p.glob("*.png"))) for p in (data / "build/recoloured").iterdir() if p.is_dir())
    assert sum(w["requests_served"] for w in workers) == images
    assert sum(1 for w in workers if w["batches_served"]) >= 3  # three images of a composition at once
    event = instance.get_latest_materialization_event(AssetKey("recoloured_images"))
    where = event.asset_materialization.metadata["placement"].value
    assert len(where["batches"]) == 3 and {b["size"] for b in where["batches"]} == {1}
    assert {b["gpu_ids"][0] for b in where["batches"]} <= {w["gpu_ids"][0] for w in workers}
    # ... and the lineage rows of the images it made say the same.
    from gen4gen.lineage import open_reader

    image = next(p for p in (data / "build/recoloured").rglob("*.png"))
    with open_reader(data) as reader:
        backend = json.loads(reader.connection.execute(
            "SELECT backend FROM artifacts WHERE path = ? ORDER BY seq DESC LIMIT 1",
            [image.relative_to(data).as_posix()]).fetchall()[0][0])
    assert backend["placement"]["batches"] and backend["placement"]["model_load_seconds"]


def _tiny_models_config(models) -> str:
    from gen4gen.tiny_scoring_models import dino_dir, open_clip_dir, owlvit_dir

    return f"""
[clip]
backend = "open_clip"
weights_path = "{open_clip_dir(models).as_posix()}"
device = "cpu"
dtype = "fp32"
batch_size = 4
[detector]
backend = "owlvit"
model = "{owlvit_dir(models).as_posix()}"
threshold = 0.0
device = "cpu"
batch_size = 4
[dino]
backend = "transformers"
model = "{dino_dir(models).as_posix()}"
device = "cpu"
batch_size = 4
[screening]
caption_score = {{ min = -1.0 }}
concept_similarity = {{ top_fraction = 0.5 }}
"""


def test_screening_and_metrics_on_pooled_small_models_match_a_run_without_ray(tmp_path):
    """CLIP, OWL-ViT and DINO in Ray workers holding a quarter of a (fake) GPU each."""
    pytest.importorskip("open_clip")
    models = _tiny_models_config(tmp_path / "models")
    reference, _ = _build(tmp_path / "without_ray", models)
    ray_config = "[ray]\nenabled = true\nlocal_gpus = 2\nsmall_model_workers = 2\n"
    try:
        data, _ = _build(tmp_path / "with_ray", models + ray_config)
    finally:
        import ray

        ray.shutdown()

    def screened(folder):
        rows = {}
        for name in ("metadata.jsonl", "rejected.jsonl"):
            for line in (folder / "mycanvas" / name).read_text().splitlines():
                row = json.loads(line)
                rows[row["image_id"]] = (name, row.get("reason_codes"), row["screening"])
        return rows

    expected, got = screened(reference), screened(data)
    assert expected and got.keys() == expected.keys()
    for image_id, (name, codes, scores) in expected.items():
        assert got[image_id][:2] == (name, codes), image_id  # the same decision, for the same reasons
        assert got[image_id][2]["caption_score"] == pytest.approx(scores["caption_score"], abs=1e-5)
        assert got[image_id][2]["concept_similarity"] == pytest.approx(scores["concept_similarity"], abs=1e-5)
    summary = json.loads((data / "reports/report.json").read_text())["evaluation"]["sets"]["mycanvas"]["summary"]
    reference_summary = json.loads((reference / "reports/report.json").read_text())["evaluation"]["sets"][
        "mycanvas"]["summary"]
    assert summary["cp_clip"] == pytest.approx(reference_summary["cp_clip"], abs=1e-5)
    assert summary["dino"] == pytest.approx(reference_summary["dino"], abs=1e-5)
    pools = json.loads((data / "build/placement.json").read_text())["pools"]
    small = {p["backend"]: p["workers"] for p in pools if "ModelBundle" not in p["backend"]}
    assert set(small) == {"gen4gen.models.clip:load_clip", "gen4gen.pooled_backends:DetectorPairs",
                          "gen4gen.models.clip:load_dino"}
    for workers in small.values():
        assert len(workers) == 2 and all(sum(w["models"].values()) == 1 for w in workers)
        assert sum(w["batches_served"] for w in workers) > 0


def test_a_local_ray_outside_the_command_line_is_refused_with_what_to_do(monkeypatch):
    """Under `make ui` every step is a process of its own: each would start a Ray and they would share GPUs."""
    from gen4gen.config import PipelineConfig
    from gen4gen.pooled_backends import LOCAL_RAY_ENV, pooled_repainter

    monkeypatch.delenv(LOCAL_RAY_ENV, raising=False)
    config = PipelineConfig.model_validate({"ray": {"enabled": True}})
    with pytest.raises(RuntimeError, match=r"ray start --head .* \[ray\] address"):
        pooled_repainter(config)
