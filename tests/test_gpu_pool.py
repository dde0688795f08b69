"""The Ray model-worker pool on a local Ray that declares 4 fake GPUs (one session for the module)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import io
import os
import time

import numpy as np
import pytest
from PIL import Image

if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is not installed (pip install 'ray==2.60.0')", allow_module_level=True)

from gen4gen.gpu_pool import BackendSpec, GpuWorkerPool, connect  # noqa: E402
from gen4gen.pooled_backends import PooledRepainter  # noqa: E402
from gen4gen.recolour import RepaintRequest  # noqa: E402

FAKE_GPUS = 4
QUICK_STAND_IN = BackendSpec("gen4gen.pooled_backends:StandInRepainter",
                             kwargs={"seconds_per_image": 0.02, "load_seconds": 0.05})


@pytest.fixture(scope="module")
def ray_session():
    # Ray is imported only here, after connect() has asked for a loopback-only local instance.
    resources = connect(None, num_gpus_local=FAKE_GPUS, num_cpus_local=2)
    assert resources["GPU"] == FAKE_GPUS
    import ray

    yield ray
    ray.shutdown()


def composite_request(seed: int, scene: str = "lawn", size: int = 96) -> RepaintRequest:
    """A composite as the composition stage makes it: a textured object on black, with its mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    x, y = (int(v) for v in rng.integers(8, size // 2, 2))
    mask[y:y + size // 3, x:x + size // 3] = 255
    image = np.zeros((size, size, 3), np.uint8)
    image[mask > 0] = rng.integers(0, 256, (int((mask > 0).sum()), 3), dtype=np.uint8)
    return RepaintRequest(image=image, mask=mask, prompt=f"a photo of {scene}", negative_prompt="blurry",
                          seed=int(rng.integers(0, 2**62)), scene=scene, instance_masks=[mask > 0])


def png_sha256(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def test_each_worker_loads_its_model_once_however_many_batches(ray_session):
    with GpuWorkerPool(QUICK_STAND_IN, workers=2) as pool:
        for _ in range(3):
            pool.map("repaint", [[composite_request(i)] for i in range(6)])
        workers = pool.placement()["workers"]
    assert [w["models"] for w in workers] == [{QUICK_STAND_IN.factory: 1}] * 2
    assert sum(w["batches_served"] for w in workers) == 18
    assert sum(w["requests_served"] for w in workers) == 18
    assert all(w["load_seconds"] >= 0.05 for w in workers)


def test_four_fake_gpus_give_four_workers_each_on_its_own_gpu(ray_session):
    with GpuWorkerPool(QUICK_STAND_IN) as pool:
        workers = pool.placement()["workers"]
    assert len(workers) == FAKE_GPUS
    assert sorted(g for w in workers for g in w["gpu_ids"]) == [str(i) for i in range(FAKE_GPUS)]
    assert len({(w["node_id"], tuple(w["gpu_ids"])) for w in workers}) == FAKE_GPUS
    # Ray hands each worker its card as the only one CUDA can see.
    assert all(w["cuda_visible_devices"] == w["gpu_ids"][0] for w in workers)
    assert len({w["pid"] for w in workers}) == FAKE_GPUS


def test_results_come_back_in_input_order_with_per_batch_placement(ray_session):
    requests = [composite_request(i) for i in range(7)]
    # The first batch is the longest, so it finishes after later ones: order must be restored.
    batches = [requests[:4], requests[4:5], requests[5:6], requests[6:]]
    # 0.1 s of (sleeping) device time per image: a margin of 0.3 s that a loaded machine keeps.
    stand_in = BackendSpec(QUICK_STAND_IN.factory, kwargs={"seconds_per_image": 0.1, "load_seconds": 0.05})
    with GpuWorkerPool(stand_in, workers=4) as pool:
        outputs = pool.map("repaint", batches, labels=["first", "second", "third", "fourth"])
        calls = pool.placement()["calls"]
    assert [[info["seed"] for _, info in output] for output in outputs] == [[r.seed for r in b] for b in batches]
    finished = [call["batch"] for call in sorted(calls, key=lambda c: c["end"])]
    assert finished[-1] == 0, "the test needs the first batch to finish last"
    assert sorted(c["batch"] for c in calls) == [0, 1, 2, 3]
    assert len({c["worker"] for c in calls}) == 4
    for call in calls:
        assert call["label"] == ["first", "second", "third", "fourth"][call["batch"]]
        assert call["node_id"] and call["gpu_ids"] and call["size"] == len(batches[call["batch"]])
        assert call["submitted"] <= call["start"] <= call["end"] <= call["received"]
        assert call["end"] - call["start"] >= 0.1 * call["size"]


def test_scene_bank_outputs_are_byte_identical_on_one_and_four_workers(ray_session):
    from gen4gen.config import RecolourConfig
    from gen4gen.recolour import SceneBankRepainter
    from gen4gen.scenes import BUILTIN_SCENES

    spec = BackendSpec("gen4gen.recolour:SceneBankRepainter", (list(BUILTIN_SCENES), RecolourConfig()))
    scenes = [s.name for s in BUILTIN_SCENES]
    groups = {f"composition-{c}": [composite_request(10 * c + i, scenes[(c + i) % len(scenes)]) for i in range(3)]
              for c in range(4)}
    digests, call_labels = {}, {}
    for workers in (1, 4):
        with GpuWorkerPool(spec, workers=workers) as pool:
            results = pool.map_partitions("repaint", groups, batch_size=2)
            call_labels[workers] = sorted(c["label"] for c in pool.placement()["calls"])
        digests[workers] = {key: [(png_sha256(image), info) for image, info in items] for key, items in results.items()}
    embedded = SceneBankRepainter(list(BUILTIN_SCENES), RecolourConfig())
    in_process = {key: [(png_sha256(image), info) for image, info in embedded.repaint(items)]
                  for key, items in groups.items()}
    assert digests[1] == digests[4] == in_process
    assert len({sha for items in digests[4].values() for sha, _ in items}) == 12
    # Batches of 2 over partitions of 3: two batches per partition, none mixing partitions.
    assert call_labels[1] == call_labels[4] == sorted(list(groups) * 2)


def test_batches_mix_partitions_only_when_allowed(ray_session):
    groups = {"a": [composite_request(i) for i in range(3)], "b": [composite_request(10 + i) for i in range(2)]}
    with GpuWorkerPool(QUICK_STAND_IN, workers=2) as pool:
        kept = pool.map_partitions("repaint", groups, batch_size=2)
        kept_labels = [c["label"] for c in sorted(pool.placement()["calls"], key=lambda c: c["batch"])]
        pool.calls.clear()
        mixed = pool.map_partitions("repaint", groups, batch_size=2, mix_partitions=True)
        mixed_labels = [c["label"] for c in sorted(pool.placement()["calls"], key=lambda c: c["batch"])]
    assert kept_labels == ["a", "a", "b"]
    assert mixed_labels == ["a", "a+b", "b"]
    expected = {key: [r.seed for r in items] for key, items in groups.items()}
    assert {k: [i["seed"] for _, i in v] for k, v in kept.items()} == expected
    assert {k: [i["seed"] for _, i in v] for k, v in mixed.items()} == expected


def test_a_failing_batch_is_raised_and_the_pool_keeps_working(ray_session):
    with GpuWorkerPool(QUICK_STAND_IN, workers=2) as pool:
        with pytest.raises(Exception, match="has no attribute .image."):
            pool.map("repaint", [[composite_request(1)], [None], [composite_request(2)]])
        outputs = pool.map("repaint", [[composite_request(3)], [composite_request(4)], [composite_request(5)]])
        adapter = PooledRepainter(pool, batch_size=2)
        repainted = adapter.repaint([composite_request(i) for i in range(5)])
    assert [o[0][1]["seed"] for o in outputs] == [composite_request(i).seed for i in (3, 4, 5)]
    assert adapter.name == "stand_in"
    assert [info["seed"] for _, info in repainted] == [composite_request(i).seed for i in range(5)]


def test_a_lost_worker_s_batches_are_done_again_by_another(ray_session):
    """A worker killed mid-run (a crashed process, a lost node): its batch goes to another worker,
    the results are the same bytes, and the map fails only when every worker is gone."""
    import os
    import signal
    import threading

    slow = BackendSpec("gen4gen.pooled_backends:StandInRepainter",
                       kwargs={"seconds_per_image": 0.3, "load_seconds": 0.05})
    batches = [[composite_request(i)] for i in range(6)]
    with GpuWorkerPool(slow, workers=1) as alone:
        expected = [info["png_sha256"] for output in alone.map("repaint", batches) for _, info in output]
    with GpuWorkerPool(slow, workers=2) as pool:
        victim = pool.placement()["workers"][0]["pid"]
        threading.Timer(0.45, os.kill, (victim, signal.SIGKILL)).start()  # while its second batch runs
        outputs = pool.map("repaint", batches)
        placement = pool.placement()
        assert placement["lost_workers"] == [0] and len(placement["workers"]) == 1
        with pytest.raises(RuntimeError, match="every worker of the pool has died"):
            os.kill(placement["workers"][0]["pid"], signal.SIGKILL)
            time.sleep(0.5)
            pool.map("repaint", batches[:2])
    assert [info["png_sha256"] for output in outputs for _, info in output] == expected


def test_close_leaves_no_actors_and_frees_the_gpus(ray_session):
    ray = ray_session
    pool = GpuWorkerPool(QUICK_STAND_IN)
    names = pool.actor_names
    pids = [w["pid"] for w in pool.placement()["workers"]]
    assert all(_actor_exists(ray, name) for name in names) and all(_process_alive(pid) for pid in pids)
    assert ray.available_resources().get("GPU", 0) == 0
    pool.close()
    pool.close()
    assert ray.available_resources().get("GPU", 0) == FAKE_GPUS
    assert not [name for name in names if _actor_exists(ray, name)]
    deadline = time.monotonic() + 15  # the worker processes exit a moment after their actors die
    while time.monotonic() < deadline and any(_process_alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not [pid for pid in pids if _process_alive(pid)], "worker processes outlived close()"


def test_a_pool_that_cannot_start_fails_and_holds_nothing(ray_session):
    ray = ray_session
    with pytest.raises(RuntimeError, match="were not all placed and loaded"):
        GpuWorkerPool(QUICK_STAND_IN, workers=FAKE_GPUS + 1, start_timeout_s=3)
    with pytest.raises(Exception, match="gen4gen.no_such_module"):
        GpuWorkerPool(BackendSpec("gen4gen.no_such_module:Repainter"), workers=1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and ray.available_resources().get("GPU", 0) < FAKE_GPUS:
        time.sleep(0.1)
    assert ray.available_resources().get("GPU", 0) == FAKE_GPUS


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _actor_exists(ray, name: str) -> bool:
    try:
        ray.get_actor(name)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- the pools of a run (steps in processes of their own)
STEP_IN_ITS_OWN_PROCESS = """
import json, os, signal, sys
from gen4gen.gpu_pool import BackendSpec, GpuWorkerPool, connect
from gen4gen.run_pools import RunLease
connect(sys.argv[1], node_ip_address="127.0.0.1")
spec = BackendSpec("gen4gen.pooled_backends:StandInRepainter", kwargs={"seconds_per_image": 0.02, "load_seconds": 0.05})
lease = RunLease(sys.argv[2], sys.argv[3], linger_s=float(sys.argv[4]), holder_timeout_s=float(sys.argv[6]))
pool = GpuWorkerPool(spec, workers=2, lease=lease)
from tests.test_gpu_pool import composite_request
pool.map("repaint", [[composite_request(i)] for i in range(2)], labels=["captions[a+b]"] * 2)
print(json.dumps([w["pid"] for w in pool.placement()["workers"]]), flush=True)
if sys.argv[5] == "die":
    os.kill(os.getpid(), signal.SIGKILL)  # a killed step never leaves
pool.close()
lease.leave()
"""


# Generous for a loaded machine: a step counts as gone only after this long without a heartbeat.
HOLDER_TIMEOUT_S = 10.0


def _step_process(ray_session, run: str, placement, linger_s: float, end: str):
    import subprocess
    import sys

    address = ray_session.get_runtime_context().gcs_address
    return subprocess.run([sys.executable, "-c", STEP_IN_ITS_OWN_PROCESS, address, run, str(placement), str(linger_s),
                           end, str(HOLDER_TIMEOUT_S)], capture_output=True, text=True, timeout=120, cwd=os.getcwd())


def _run_actors(ray_session, run: str) -> list[str]:
    from ray.util import list_named_actors

    return [a["name"] for a in list_named_actors(all_namespaces=True) if a["name"].startswith(f"gen4gen-run-{run}-")]


def _wait_until_gone(ray_session, run: str, timeout_s: float) -> float:
    began = time.monotonic()
    while _run_actors(ray_session, run) and time.monotonic() - began < timeout_s:
        time.sleep(0.2)
    return time.monotonic() - began


def test_the_steps_of_a_run_share_its_workers_which_end_after_the_run(ray_session, tmp_path):
    """As under `make ui`: two steps of one run, in processes of their own, use the same workers
    (each model loaded once); when the last step has left, the lease ends them and frees the GPUs."""
    from gen4gen.run_pools import RunLease

    placement = tmp_path / "placement.json"
    lease = RunLease("ui-run-1", str(placement), linger_s=1.0, holder_timeout_s=HOLDER_TIMEOUT_S)
    pool = GpuWorkerPool(QUICK_STAND_IN, workers=2, lease=lease)
    pool.map("repaint", [[composite_request(i)] for i in range(4)], labels=["recoloured_images[a+b]"] * 4)
    first_pids = sorted(w["pid"] for w in pool.placement()["workers"])
    other = _step_process(ray_session, "ui-run-1", placement, 1.0, "leave")  # while this step still holds them
    assert other.returncode == 0, other.stderr[-3000:]
    assert sorted(json.loads(other.stdout.splitlines()[-1])) == first_pids  # the same two workers
    workers = pool.placement()["workers"]
    assert [w["models"] for w in workers] == [{QUICK_STAND_IN.factory: 1}] * 2  # loaded once for both steps
    assert sum(w["requests_served"] for w in workers) == 6
    assert ray_session.available_resources().get("GPU", 0) == FAKE_GPUS - 2
    pool.close()
    lease.leave()
    assert _wait_until_gone(ray_session, "ui-run-1", 60) < 60, _run_actors(ray_session, "ui-run-1")
    deadline = time.monotonic() + 10
    while ray_session.available_resources().get("GPU", 0) < FAKE_GPUS and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray_session.available_resources().get("GPU", 0) == FAKE_GPUS
    record = json.loads(placement.read_text())
    (written,) = record["pools"]
    assert record["run"] == "ui-run-1" and len(written["calls"]) == 6
    assert {s["asset"]: s["batches"] for s in written["steps"]} == {"recoloured_images": 4, "captions": 2}
    assert all(s["partition"] == "a+b" and s["start"] <= s["end"] for s in written["steps"])


def test_the_workers_of_a_killed_run_end_without_it(ray_session, tmp_path):
    """A step SIGKILLed while holding its run's workers: the lease drops it after its heartbeats stop."""
    killed = _step_process(ray_session, "ui-run-2", tmp_path / "placement.json", 0.5, "die")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert _run_actors(ray_session, "ui-run-2")  # still there right after the kill ...
    assert _wait_until_gone(ray_session, "ui-run-2", 90) < 90  # ... and gone once its heartbeats stopped
    deadline = time.monotonic() + 10
    while ray_session.available_resources().get("GPU", 0) < FAKE_GPUS and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray_session.available_resources().get("GPU", 0) == FAKE_GPUS


def test_a_training_run_takes_one_gpu_of_the_pool(ray_session, tmp_path, monkeypatch):
    """`[ray] enabled`: Custom Diffusion trains in a worker holding one (fake) GPU, into the partition's folder."""
    pytest.importorskip("diffusers")
    from gen4gen.concepts import build_registry
    from gen4gen.config import PROJECT_ROOT, PipelineConfig, TrainingRun
    from gen4gen.pooled_backends import LOCAL_RAY_ENV, close_shared_pools
    from gen4gen.stages.personalisation import build_model
    from gen4gen.tiny_models import tiny_sd15

    from .conftest import create_small_project

    data, _ = create_small_project(tmp_path)
    monkeypatch.setenv(LOCAL_RAY_ENV, "1")
    config = PipelineConfig.model_validate({
        "data_dir": str(data), "ray": {"enabled": True},
        "training": {"base_model": str(tiny_sd15(tmp_path / "models")), "resolution": 64, "max_train_steps": 3}})
    registry = build_registry(config, {})
    try:
        result = build_model(config, registry, TrainingRun(name="t", source="photos"), tmp_path / "out", PROJECT_ROOT)
        placement = result.manifest["placement"]
        (pool,) = close_shared_pools()
    finally:
        close_shared_pools()
    assert len(placement["gpu_ids"]) == 1 and pool["backend"] == "gen4gen.stages.personalisation:Trainer"
    assert pool["workers"][0]["gpu_ids"] == placement["gpu_ids"] and result.manifest["steps"] == 3
    assert (tmp_path / "out" / "pytorch_custom_diffusion_weights.bin").is_file()
    deadline = time.monotonic() + 10  # Ray's view of free GPUs follows the kill a moment later
    while ray_session.available_resources().get("GPU", 0) < FAKE_GPUS and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray_session.available_resources().get("GPU", 0) == FAKE_GPUS  # given back
