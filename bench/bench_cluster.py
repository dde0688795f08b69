"""Repainting spread over the GPUs of a Ray cluster: 1, 2 and 4 workers on fake GPUs.

    .venv/bin/python bench/bench_cluster.py [--factor 1.0] [--json PATH]
    .venv/bin/python bench/bench_cluster.py --two-nodes [--json PATH]

The backend is `StandInRepainter` (gen4gen/pooled_backends.py), a stand-in for SDXL: per image it
holds its device for the measured SDXL time (2.62 s on an H100) times `--factor`, sleeping so
it costs no CPU, and its model load takes 3 s times `--factor`; its real CPU work per image is
light (a seeded image, the objects laid over it, a PNG encode). The same requests (same seeds)
run through pools of 1, 2 and 4 workers on a local Ray declaring 4 GPUs. Figures: images/s with
the pool's start-up and model loads, and without; model loads per worker; per-batch overhead;
the speed-up of 4 workers over 1 (target >= 3x); whether every output is byte-identical to the
in-process backend's (sha256 of the PNG bytes).

`--two-nodes` starts a real two-node Ray cluster on this machine (`gen4gen.local_cluster`: 2 fake
GPUs per node, nodes at 127.0.0.2 and 127.0.0.3 with a fresh token), runs the 4-worker case
through it, shows the work each node did, and stops what it started. Ray refuses a multi-node
cluster in its loopback-only mode and its servers then listen on every interface, so it runs only
in a network namespace of its own (`unshare -n`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gen4gen.pooled_backends import SDXL_SECONDS_PER_IMAGE_H100  # noqa: E402

MODEL_LOAD_SECONDS = 3.0  # stand-in model load before scaling


def make_requests(compositions: int, images: int, size: int, seed: int = 7) -> dict[str, list]:
    """Composites as the composition stage makes them: a seeded object on black, with its mask."""
    import numpy as np

    from gen4gen.io import derive_seed
    from gen4gen.recolour import RepaintRequest

    groups = {}
    for c in range(compositions):
        key = f"composition-{c}"
        groups[key] = []
        for index in range(images):
            image_seed = derive_seed(seed, key, index, "repaint")
            rng = np.random.default_rng(image_seed)
            mask = np.zeros((size, size), np.uint8)
            x, y = (int(v) for v in rng.integers(0, size // 2, 2))
            mask[y:y + size // 3, x:x + size // 3] = 255
            image = np.zeros((size, size, 3), np.uint8)
            image[mask > 0] = rng.integers(0, 256, 3, dtype=np.uint8)
            groups[key].append(RepaintRequest(image, mask, "a realistic photo of a lawn", "blurry", image_seed, "lawn",
                                              [mask > 0]))
    return groups


def stand_in_spec(factor: float):
    from gen4gen.gpu_pool import BackendSpec

    return BackendSpec("gen4gen.pooled_backends:StandInRepainter",
                       kwargs={"seconds_per_image": SDXL_SECONDS_PER_IMAGE_H100 * factor,
                               "load_seconds": MODEL_LOAD_SECONDS * factor})


def reference_digests(groups: dict) -> dict[str, list[str]]:
    """What the backend makes in this process, without its device wait: the bytes to match."""
    from gen4gen.pooled_backends import StandInRepainter

    backend = StandInRepainter(seconds_per_image=0.0, load_seconds=0.0)
    return {key: [info["png_sha256"] for _, info in backend.repaint(items)] for key, items in groups.items()}


def run_pool(groups: dict, workers: int, factor: float, batch_size: int, node_names: dict | None = None) -> dict:
    from gen4gen.gpu_pool import GpuWorkerPool

    images = sum(len(items) for items in groups.values())
    device_seconds = SDXL_SECONDS_PER_IMAGE_H100 * factor
    began = time.perf_counter()
    pool = GpuWorkerPool(stand_in_spec(factor), workers=workers)
    try:
        started = time.perf_counter()
        results = pool.map_partitions("repaint", groups, batch_size)
        done = time.perf_counter()
        placement = pool.placement()
    finally:
        closing = time.perf_counter()
        pool.close()
        closed = time.perf_counter()
    calls = placement["calls"]
    node_names = node_names or {}
    per_node: dict[str, int] = {}
    for call in calls:
        node = node_names.get(call["node_id"], call["node_id"][:12])
        per_node[node] = per_node.get(node, 0) + call["size"]
    total = done - began
    return {
        "workers": workers, "images": images, "batches": len(calls), "batch_size": batch_size,
        "pool_start_s": started - began, "work_s": done - started, "total_s": total, "close_s": closed - closing,
        "images_per_s": images / total, "images_per_s_after_start": images / (done - started),
        "model_loads_per_worker": [sum(w["models"].values()) for w in placement["workers"]],
        "load_s_per_worker": [round(w["load_seconds"], 3) for w in placement["workers"]],
        # Driver side: submit to result in hand, less the worker's own time (scheduling, transfer).
        "dispatch_overhead_ms": 1000 * statistics.mean((c["received"] - c["submitted"]) - (c["end"] - c["start"])
                                                       for c in calls),
        # Worker side: its time less the device wait (unpickling, the CPU work, pickling).
        "worker_overhead_ms_per_batch": 1000 * statistics.mean((c["end"] - c["start"]) - c["size"] * device_seconds
                                                               for c in calls),
        "images_per_node": per_node,
        "gpus": sorted({(node_names.get(w["node_id"], w["node_id"][:12]), ",".join(w["gpu_ids"]))
                        for w in placement["workers"]}),
        "digests": {key: [info["png_sha256"] for _, info in items] for key, items in results.items()},
    }


def print_run(run: dict) -> None:
    print(f"{run['workers']} worker(s): {run['images']} images in {run['batches']} batches of <= {run['batch_size']}: "
          f"{run['total_s']:.2f} s with start-up ({run['images_per_s']:.2f} images/s), pool start "
          f"{run['pool_start_s']:.2f} s, work {run['work_s']:.2f} s ({run['images_per_s_after_start']:.2f} images/s), "
          f"close {run['close_s']:.2f} s")
    print(f"    model loads per worker {run['model_loads_per_worker']} (load s {run['load_s_per_worker']}); "
          f"per batch: dispatch overhead {run['dispatch_overhead_ms']:.1f} ms, worker overhead "
          f"{run['worker_overhead_ms_per_batch']:.1f} ms; images per node {run['images_per_node']}; GPUs {run['gpus']}")


def single_node(args, groups, reference) -> dict:
    from gen4gen.gpu_pool import connect

    began = time.perf_counter()
    resources = connect(None, num_gpus_local=4)
    print(f"local Ray: {resources.get('GPU', 0):.0f} fake GPUs, {resources.get('CPU', 0):.0f} CPUs, "
          f"started in {time.perf_counter() - began:.1f} s (not counted below)")
    runs = {}
    for workers in args.workers:
        runs[workers] = run_pool(groups, workers, args.factor, args.batch_size)
        runs[workers]["identical_to_in_process"] = runs[workers]["digests"] == reference
        print_run(runs[workers])
    first, last = runs[min(runs)], runs[max(runs)]
    figures = {
        "speedup_with_start": first["total_s"] / last["total_s"],
        "speedup_after_start": first["work_s"] / last["work_s"],
        "identical_1_vs_4": first["digests"] == last["digests"],
        "identical_to_in_process": all(run["identical_to_in_process"] for run in runs.values()),
    }
    print(f"speed-up {max(runs)} vs {min(runs)} workers: {figures['speedup_with_start']:.2f}x with start-up and "
          f"model loads, {figures['speedup_after_start']:.2f}x after (target >= 3x)")
    print(f"outputs byte-identical, {min(runs)} vs {max(runs)} workers: {figures['identical_1_vs_4']}; "
          f"every run identical to the in-process backend: {figures['identical_to_in_process']}")
    return {"runs": {str(k): v for k, v in runs.items()}, **figures}


def two_nodes(args, groups, reference) -> dict:
    from gen4gen.local_cluster import LocalCluster, isolated

    if not isolated():  # Ray's servers of a multi-node cluster listen on every interface
        raise SystemExit("--two-nodes runs only in a network namespace with loopback only: "
                         "unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/bench_cluster.py --two-nodes'")

    began = time.perf_counter()
    with LocalCluster() as cluster:
        os.environ.update(cluster.env)  # the driver joins with the cluster's token
        from gen4gen.gpu_pool import connect

        try:
            resources = connect(cluster.address, node_ip_address=cluster.head_ip)
            import ray

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and ray.cluster_resources().get("GPU", 0) < 4:
                time.sleep(0.3)
            nodes = {n["NodeID"]: ("node_a" if "node_a" in n["Resources"] else "node_b") + f"@{n['NodeManagerAddress']}"
                     for n in ray.nodes() if n["Alive"]}
            print(f"two-node Ray: {sorted(nodes.values())}, {ray.cluster_resources().get('GPU', 0):.0f} fake GPUs, "
                  f"up in {time.perf_counter() - began:.1f} s (not counted below); resources at connect {resources}")
            run = run_pool(groups, 4, args.factor, args.batch_size, nodes)
            run["identical_to_in_process"] = run["digests"] == reference
            print_run(run)
            both = len(run["images_per_node"]) == 2 and all(v > 0 for v in run["images_per_node"].values())
            print(f"both nodes did work: {both}; outputs identical to the in-process backend: "
                  f"{run['identical_to_in_process']}")
            return {"two_nodes": run, "both_nodes_worked": both}
        finally:
            if "ray" in sys.modules:
                sys.modules["ray"].shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factor", type=float, default=1.0,
                        help="scale of the SDXL device time and model load (1: as measured on an H100)")
    parser.add_argument("--compositions", type=int, default=4)
    parser.add_argument("--images", type=int, default=6, help="images per composition")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--size", type=int, default=512,
                        help="canvas size; the paper's 1024 makes the CPU work a quarter of the scaled device time")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--two-nodes", action="store_true", help="the 4-worker case on a local two-node cluster")
    parser.add_argument("--json", type=Path, help="save the figures here")
    args = parser.parse_args()
    groups = make_requests(args.compositions, args.images, args.size)
    reference = reference_digests(groups)
    print(f"stand-in: {SDXL_SECONDS_PER_IMAGE_H100 * args.factor:.3f} s device time per image, "
          f"{MODEL_LOAD_SECONDS * args.factor:.2f} s model load (SDXL on an H100 x {args.factor}); "
          f"{args.compositions} compositions x {args.images} images of {args.size}^2")
    figures = two_nodes(args, groups, reference) if args.two_nodes else single_node(args, groups, reference)
    figures["settings"] = {k: v for k, v in vars(args).items() if k != "json"}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"figures saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
