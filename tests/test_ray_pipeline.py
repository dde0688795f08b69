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
    assert [w["models"] for w in workers] == [{"gen4gen.recolour:SceneBankRepainter": 1}] * FAKE_GPUS
    assert len({(w["node_id"], tuple(w["gpu_ids"])) for w in workers}) == FAKE_GPUS  # no GPU shared
    assert all(len(w["gpu_ids"]) == 1 and w["cuda_visible_devices"] == w["gpu_ids"][0] for w in workers)
    images = sum(len(list(p.glob("*.png"))) for p in (data / "build/recoloured").iterdir() if p.is_dir())
    assert sum(w["requests_served"] for w in workers) == images
    assert sum(1 for w in workers if w["batches_served"]) >= 3  # three images of a composition at once
    event = instance.get_latest_materialization_event(AssetKey("recoloured_images"))
    batches = event.asset_materialization.metadata["placement"].value
    assert batches and {b["size"] for b in batches} == {1}
