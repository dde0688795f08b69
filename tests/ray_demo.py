"""`make ray-demo`: the demo pipeline on a two-node Ray cluster with fake GPUs and a Dagster instance in
Postgres, all started on this machine and stopped afterwards.

    .venv/bin/python -m tests.ray_demo [--keep]

The paper profile's GPU stages run with the test suite's tiny random-weight models (IS-Net in
PyTorch, SDXL + refiner, the VLM), so the run works on a CPU: the models are built on first use in
a scratch folder. The same dataset is first built without Ray, as the reference. Then the cluster
(`gen4gen.local_cluster`: a head and a second raylet, two fake GPUs each) and a Postgres (PyPI's
pgserver, a unix socket) start, `gen4gen materialize --ray-address` runs against them, and the
demo prints where every model worker ran and what it served. It checks, and exits 1 unless all hold:
every GPU batch ran on exactly one declared GPU; no two workers had the same (node, GPU); both nodes
did work; each worker loaded its models once; the exported images (and every cut-out, repainted
image and caption) equal the reference's; every exported image's lineage verifies to its photos.

Ray refuses a multi-node cluster in its loopback-only mode, so its servers listen on every
interface of their network namespace: `make ray-demo` runs this under `unshare -n` (a namespace
with loopback only). Outside one, the demo refuses unless given --any-network.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-c", "import sys; from gen4gen.cli import main; sys.exit(main(sys.argv[1:]))"]


def tiny_paper_config(models: Path) -> str:
    """The paper's GPU backends with tiny random-weight models on the CPU (tests/paper_models.py)."""
    from . import paper_models

    return f"""
[segmentation]
backend = "isnet_torch"
isnet_checkpoint = "{paper_models.isnet_checkpoint(models).as_posix()}"
input_size = 64
rounds = 2
device = "cpu"
[recolour]
backend = "sdxl"
sdxl_model = "{paper_models.sdxl_inpaint(models).as_posix()}"
refiner_model = "{paper_models.sdxl_refiner(models).as_posix()}"
variant = ""
resolution = 64
num_inference_steps = 2
device = "cpu"
dtype = "fp32"
batch_size = 1
[caption]
backend = "vlm"
vlm_model = "{paper_models.llava(models).as_posix()}"
device = "cpu"
dtype = "fp32"
max_new_tokens = 4
"""


def _materialize(config: Path, home: Path, extra_env: dict, *args: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").is_file():
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    from gen4gen.local_cluster import without_local_only

    env = {k: v for k, v in without_local_only(os.environ).items()
           if k not in ("GEN4GEN_CONFIG", "GEN4GEN_DATA_DIR", "GEN4GEN_PROFILE")}
    env.update({"DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1", **extra_env})
    result = subprocess.run([*CLI, "--config", str(config), "materialize", *args], env=env, capture_output=True,
                            text=True, timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"materialize failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def _export(data: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((data / "mycanvas").glob("*.png"))}


def _stage_files(data: Path) -> dict[str, bytes]:
    """Cut-outs, masks, repainted images, captions and their manifests (not the runs' bookkeeping)."""
    return {p.relative_to(data).as_posix(): p.read_bytes() for stage in ("segmented", "recoloured", "captions")
            for p in sorted((data / "build" / stage).rglob("*.*"))
            if p.name not in ("fingerprint.json", "lineage.journal.jsonl")}


def _verifies(config: Path, image: Path) -> bool:
    """`gen4gen lineage IMAGE --verify`, and its ancestry reaches a concept photo. In this process:
    a command per image would spend seconds importing for each one."""
    import contextlib
    import io

    from gen4gen.cli import main as cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli(["--config", str(config), "lineage", str(image), "--verify", "--json"])
    return code == 0 and '"source_photo"' in out.getvalue()


def checks(placement: dict, node_names: dict[str, str]) -> dict[str, bool]:
    """The demo's claims about where the work ran (``placement.json`` of the run)."""
    pools = placement["pools"]
    workers = [w for pool in pools for w in pool["workers"]]
    calls = [c for pool in pools for c in pool["calls"]]
    return {
        "every GPU batch ran on exactly one declared GPU": bool(calls) and all(len(c["gpu_ids"]) == 1 for c in calls),
        "no two workers of a pool had the same (node, GPU)": all(
            len({(w["node_id"], tuple(w["gpu_ids"])) for w in pool["workers"]}) == len(pool["workers"])
            for pool in pools),
        "both nodes did work": len({node_names.get(c["node_id"], c["node_id"]) for c in calls}) == 2,
        "each worker loaded its models once": bool(workers) and all(
            sum(w["models"].values()) == 1 for w in workers),
    }


def print_placement(placement: dict, node_names: dict[str, str]) -> None:
    print(f"{'pool':<44} {'worker':>6} {'node':<18} {'GPU':>3} {'models loaded':>13} {'batches':>7} {'requests':>8} "
          f"{'load s':>6}")
    for pool in placement["pools"]:
        for w in pool["workers"]:
            print(f"{pool['backend']:<44} {w['worker']:>6} {node_names.get(w['node_id'], w['node_id'][:8]):<18} "
                  f"{','.join(w['gpu_ids']):>3} {sum(w['models'].values()):>13} {w['batches_served']:>7} "
                  f"{w['requests_served']:>8} {w['load_seconds']:>6.1f}")


def _launch_as_the_ui_does(config: Path, home: Path, extra_env: dict, partition: str) -> dict:
    """One run of the compositions job for ``partition``, forced, with Dagster's multiprocess
    executor (every step a process of its own, as a UI launch runs it); returns its placement."""
    from gen4gen.local_cluster import without_local_only

    env = {k: v for k, v in without_local_only(os.environ).items() if k not in ("GEN4GEN_DATA_DIR", "GEN4GEN_PROFILE")}
    env.update({"DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1", "GEN4GEN_CONFIG": str(config), **extra_env})
    tags = json.dumps({"dagster/partition": partition, "gen4gen/force": "1"})
    result = subprocess.run([str(Path(sys.executable).with_name("dagster")), "job", "execute", "-m",
                             "gen4gen_assets.definitions", "-j", "build_compositions", "--tags", tags],
                            env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    if result.returncode != 0:
        raise SystemExit(f"the UI-style run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    path = config.parent / "data" / "build" / "placement.json"
    deadline = time.monotonic() + 120  # the run's lease writes it once the last step has left
    while time.monotonic() < deadline:
        placement = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        steps = {s["asset"] for pool in placement.get("pools", []) for s in pool.get("steps", [])}
        if placement.get("run") and {"recoloured_images", "captions"} <= steps:
            return placement
        time.sleep(0.5)
    raise SystemExit(f"no placement of the UI-style run in {path}")


def ui_checks(placement: dict) -> dict[str, bool]:
    """A UI launch: its steps ran in processes of their own, yet shared the run's workers."""
    (pool,) = [p for p in placement["pools"] if "ModelBundle" in p["backend"]]
    steps = {s["asset"] for s in pool["steps"]}
    return {"a UI launch's steps (each a process) shared its workers, each loading its models once":
            {"recoloured_images", "captions"} <= steps and bool(pool["workers"])
            and all(sum(w["models"].values()) == 1 for w in pool["workers"])
            and len({w["pid"] for w in pool["workers"]}) == len(pool["workers"])}


def run(work: Path) -> int:
    from gen4gen.local_cluster import LocalCluster

    from .conftest import create_small_project
    from .test_postgres_instance import DB_NAME, dagster_yaml

    import pgserver

    tiny = tiny_paper_config(work / "models")
    began = time.perf_counter()
    reference, reference_config = create_small_project(work / "without_ray", tiny)
    # A Ray worker that holds no CPU runs torch on one thread: so does the reference (float sums
    # in another order differ in the last bits on a CPU).
    _materialize(reference_config, work / "without_ray" / "dagster_home", {"OMP_NUM_THREADS": "1"})
    print(f"reference without Ray: {len(_export(reference))} images in {time.perf_counter() - began:.0f} s")

    server = pgserver.get_server(work / "pgdata", cleanup_mode="delete")
    try:
        server.psql(f"CREATE DATABASE {DB_NAME};")
        home = work / "cluster" / "dagster_home"
        home.mkdir(parents=True)
        (home / "dagster.yaml").write_text(dagster_yaml(work / "pgdata"), encoding="utf-8")
        with LocalCluster(gpus_per_node=2) as cluster:
            data, config = create_small_project(
                work / "cluster", tiny + f'[ray]\nnode_ip_address = "{cluster.head_ip}"\npool_linger_s = 30\n')
            began = time.perf_counter()
            _materialize(config, home, cluster.env, "--ray-address", cluster.address)
            print(f"on the two-node cluster ({cluster.address}, Dagster instance in Postgres): "
                  f"{len(_export(data))} images in {time.perf_counter() - began:.0f} s")
            placement = json.loads((data / "build" / "placement.json").read_text(encoding="utf-8"))
            partition = sorted(p.name for p in (data / "build" / "recoloured").iterdir() if p.is_dir())[0]
            began = time.perf_counter()
            ui_placement = _launch_as_the_ui_does(config, home, {**cluster.env, "GEN4GEN_RAY_ADDRESS": cluster.address},
                                                  partition)
            print(f"a UI-style launch of compositions[{partition}] (multiprocess executor) in "
                  f"{time.perf_counter() - began:.0f} s; its steps:")
            for step in ui_placement["pools"][0]["steps"]:
                print(f"  {step['asset']}[{step['partition']}] on {', '.join(n.split(':')[1][:8] for n in step['nodes'])} "
                      f"GPU {','.join(step['gpu_ids'])}: {step['batches']} batches")
    finally:
        server.cleanup()
    nodes = sorted({w["node_id"] for pool in placement["pools"] for w in pool["workers"]})
    node_names = {node: f"node {chr(ord('a') + i)} ({node[:8]})" for i, node in enumerate(nodes)}
    print_placement(placement, node_names)
    results = checks(placement, node_names)
    results.update(ui_checks(ui_placement))
    results["the exported images equal the reference's"] = _export(data) == _export(reference) and bool(_export(data))
    results["every cut-out, repainted image and caption equals the reference's"] = \
        _stage_files(data) == _stage_files(reference)
    results["every exported image's lineage, written on both nodes, verifies to its photos"] = all(
        _verifies(config, image) for image in sorted((data / "mycanvas").glob("*.png")))
    for claim, holds in results.items():
        print(f"{'yes' if holds else 'NO ':<4} {claim}")
    return 0 if all(results.values()) else 1


def main() -> int:
    from gen4gen.local_cluster import isolated

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--any-network", action="store_true",
                        help="run outside a network namespace of its own (Ray then listens on every interface)")
    args = parser.parse_args()
    if not isolated() and not args.any_network:
        print("refused: not in a network namespace with loopback only, where Ray's servers would listen on every "
              "interface; run `make ray-demo` (it uses `unshare -n`), or pass --any-network", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="g4g-demo-", dir="/tmp"))
    try:
        return run(work)
    finally:
        if args.keep:
            print(f"scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
