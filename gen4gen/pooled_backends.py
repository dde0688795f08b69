"""Model backends served by a :class:`~gen4gen.gpu_pool.GpuWorkerPool`, and the pools a run shares.

With ``[ray] enabled``, a resource's backend is a pooled one: its calls are spread over the
pool's workers, one per GPU, each loading its model once per run. Who owns the pools:

- `gen4gen materialize` runs one Dagster run per partition, all in its own process: its pools
  (:func:`shared_pool`) serve every run of the call. :func:`close_shared_pools` ends them and
  returns where everything ran; Ray removes the actors of a driver that dies (not detached).
- Under `make ui` (and the sensor's runs) every step is a process of its own. The steps of one
  run, or of one backfill, share that run's workers through a lease
  (:class:`~gen4gen.gpu_pool.RunLease`): named actors that outlive a step and end once no step of
  the run has held them for ``[ray] pool_linger_s``, also when the run was killed.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import pickle
import threading
import time
from typing import Any

from .gpu_pool import BackendSpec, GpuWorkerPool, connect
from .run_pools import step_summary

# The paper profile's measured SDXL inpainting + refiner time per image on one H100.
SDXL_SECONDS_PER_IMAGE_H100 = 2.62

_POOLS: dict[str, GpuWorkerPool] = {}
# Set by `gen4gen materialize` (one process runs every step): a Ray of its own is safe there.
LOCAL_RAY_ENV = "GEN4GEN_LOCAL_RAY"
_POOLS_LOCK = threading.Lock()
# The run (or backfill) whose lease this step process's pools take; set by the model resources.
_RUN: dict[str, Any] = {"run": None, "lease": None, "placement_path": None, "step": None}


def set_run(run: str | None, placement_path=None) -> None:
    """The run whose workers this step process's pools use (its backfill id for a backfill's runs)."""
    _RUN.update(run=run, placement_path=str(placement_path) if placement_path else None)


def set_step(label: str | None) -> None:
    """``asset[partition]`` of the step now running: it labels the batches its backends send."""
    _RUN["step"] = label


def leave_run() -> None:
    """In a step process of a UI launch or a sensor's run: close its pools, which hands the run's
    workers back to the run's lease (they stay for the run's next steps). Nothing otherwise."""
    if _RUN["lease"] is not None and not os.environ.get(LOCAL_RAY_ENV):
        close_shared_pools()


def _run_lease(ray_config):
    from .run_pools import RunLease

    if _RUN["lease"] is None or _RUN["lease"].run != _RUN["run"]:
        _RUN["lease"] = RunLease(_RUN["run"], _RUN["placement_path"], linger_s=ray_config.pool_linger_s)
    return _RUN["lease"]


def shared_pool(spec: BackendSpec, ray_config, *, num_gpus: float, workers: int | None) -> GpuWorkerPool:
    """This process's pool for ``spec``, started (and Ray joined or started) on first use.

    ``workers`` None: as many as the free GPUs hold for whole-GPU workers, one per GPU for
    fractional ones (small models need not fill every share of a card).
    """
    key = hashlib.sha256(pickle.dumps((spec, num_gpus, workers))).hexdigest()
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            if not ray_config.address and not os.environ.get(LOCAL_RAY_ENV):
                raise RuntimeError(
                    "[ray] enabled without an address: outside `gen4gen materialize` (under `make ui`, every step "
                    "runs in a process of its own) each step would start a Ray of its own, and they would share "
                    "GPUs. Start one (`ray start --head --port=6379 --num-gpus=N`) and set [ray] address = "
                    '"127.0.0.1:6379", or run `gen4gen materialize`')
            gpus = connect(ray_config.address or None, ray_config.local_gpus,
                           node_ip_address=ray_config.node_ip_address or None).get("GPU", 0.0)
            if gpus < num_gpus:  # the workers could never be placed: say so now, not after a timeout
                raise RuntimeError(f"[ray] enabled, but the Ray cluster has {gpus:g} GPU(s) and a worker of "
                                   f"{spec.factory} needs {num_gpus:g}; set [ray] local_gpus, or switch [ray] off")
            if workers is None and num_gpus < 1:
                workers = max(1, int(gpus))
            # Not in `gen4gen materialize`: a step process of a UI launch or a sensor's run.
            leased = not os.environ.get(LOCAL_RAY_ENV) and _RUN["run"] is not None
            pool = _POOLS[key] = GpuWorkerPool(spec, workers, num_gpus=num_gpus,
                                               lease=_run_lease(ray_config) if leased else None)
        return pool


def close_shared_pools() -> list[dict]:
    """Close every shared pool; returns each one's placement (workers, and every batch served)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    placements = []
    for pool in pools:
        try:
            if pool.lease is None:  # a leased pool's placement is its run's, written by the lease
                placement = pool.placement()
                placements.append({"backend": pool.spec.factory, "start_seconds": round(pool.start_seconds, 3),
                                   **placement, "steps": step_summary(placement["calls"])})
        finally:
            pool.close()
    lease, _RUN["lease"] = _RUN["lease"], None
    if lease is not None:
        lease.leave()
    return placements


atexit.register(close_shared_pools)


def pooled_model(config, section: str, project_root=None):
    """``[clip]``, ``[detector]`` or ``[dino]`` on the shared pool, a share of a GPU per worker."""
    from .config import PROJECT_ROOT

    settings = config.ray
    section_config = getattr(config, section)
    factory = "gen4gen.pooled_backends:DetectorPairs" if section == "detector" else f"gen4gen.models.clip:load_{section}"
    pool = shared_pool(BackendSpec(factory, (section_config, project_root or PROJECT_ROOT)), settings,
                       num_gpus=settings.small_model_gpus_per_worker, workers=settings.small_model_workers)
    batch_size = getattr(section_config, "batch_size", 32)
    return PooledDetector(pool, batch_size) if section == "detector" else PooledEmbedder(pool, batch_size)


def pooled_segmenter(config, project_root=None) -> "PooledSegmenter":
    """The configured PyTorch segmenter on the shared pool, a whole GPU per worker by default."""
    from .config import PROJECT_ROOT

    settings = config.ray
    spec = BackendSpec("gen4gen.models.segmentation_torch:TorchSegmenter",
                       (config.segmentation, project_root or PROJECT_ROOT), then="load")
    pool = shared_pool(spec, settings, num_gpus=settings.repaint_gpus_per_worker, workers=settings.repaint_workers)
    return PooledSegmenter(pool, 1)


def composition_models_spec(config, project_root=None) -> BackendSpec:
    """The big models of a composition's steps, together in one worker per GPU: the repainter and,
    with ``caption.backend = "vlm"``, the captioning model (as one process holds both without Ray)."""
    members = {"repaint": repainter_spec(config, project_root)}
    if config.caption.backend == "vlm":
        from .config import PROJECT_ROOT

        members["caption"] = BackendSpec("gen4gen.models.vlm_caption:TransformersCaptioner",
                                         (config.caption, project_root or PROJECT_ROOT), then="load")
    return BackendSpec("gen4gen.pooled_backends:ModelBundle", (members,))


def composition_pool(config, project_root=None) -> GpuWorkerPool:
    settings = config.ray
    return shared_pool(composition_models_spec(config, project_root), settings,
                       num_gpus=settings.repaint_gpus_per_worker, workers=settings.repaint_workers)


def pooled_captioner(config, project_root=None) -> "PooledCaptioner":
    return PooledCaptioner(composition_pool(config, project_root), 1, role="caption")


def pooled_repainter(config, project_root=None) -> "PooledRepainter":
    """The configured repainter on the shared pool (``[ray]``: GPUs per worker, workers)."""
    return PooledRepainter(composition_pool(config, project_root), config.recolour.batch_size)


def repainter_spec(config, project_root=None) -> BackendSpec:
    """The configured repainter (``recolour.backend``) as a spec, as ``RepaintResource`` builds it."""
    from gen4gen.scenes import discover_scene_bank

    scenes = discover_scene_bank(config.paths.backgrounds, config.input.image_extensions)
    if config.recolour.backend == "sdxl":
        from gen4gen.config import PROJECT_ROOT

        return BackendSpec("gen4gen.models.sdxl_repaint:SdxlRepainter",
                           (config.recolour, scenes, project_root or PROJECT_ROOT), then="load")
    return BackendSpec("gen4gen.recolour:SceneBankRepainter", (scenes, config.recolour))


class StandInRepainter:
    """A stand-in for a GPU repainter, for benchmarks and tests: no model, only its timing.

    Loading holds for ``load_seconds``; each image holds the device for ``seconds_per_image``
    (a sleep, so it costs no CPU, as a GPU-bound step would not), then does the light CPU work
    a real worker does: an image from the request's seed, kept objects laid over it, PNG-encoded.
    """

    name = "stand_in"

    def __init__(self, seconds_per_image: float = SDXL_SECONDS_PER_IMAGE_H100, load_seconds: float = 3.0,
                 png_compress_level: int = 1):
        self.seconds_per_image = seconds_per_image
        self.png_compress_level = png_compress_level
        time.sleep(load_seconds)

    def identity(self) -> dict:
        return {"backend": self.name, "seconds_per_image": self.seconds_per_image}

    def repaint(self, requests) -> list[tuple[Any, dict]]:
        import hashlib
        import io

        import numpy as np
        from PIL import Image

        results = []
        for request in requests:
            time.sleep(self.seconds_per_image)
            height, width = request.image.shape[:2]
            coarse = np.random.default_rng(request.seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
            background = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
            image = np.where(request.mask[..., None] >= 128, request.image, background)
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG", compress_level=self.png_compress_level)
            results.append((image, {"seed": request.seed, "png_sha256": hashlib.sha256(png.getvalue()).hexdigest()}))
        return results

    def close(self) -> None:
        pass


class _Pooled:
    """What the pooled model backends share: the pool, the batch size, the wrapped identity.

    ``role`` names the member of a :class:`ModelBundle` this backend stands for.
    """

    def __init__(self, pool: GpuWorkerPool, batch_size: int, role: str | None = None):
        self.pool = pool
        self.batch_size = max(1, batch_size)
        worker = pool.workers[0]
        self.name = (worker.get("members") or {}).get(role) or worker["backend"]
        # The workers' backend, not the pool: scores and fingerprints do not depend on where it ran.
        identity = pool.identity()
        self._identity = identity[role] if role and isinstance(identity, dict) and role in identity else identity
        self.calls: list[dict] = []  # the batches this backend's calls ran: worker, node, GPU, times

    def identity(self) -> dict:
        return self._identity

    def _map(self, method: str, items: list) -> list:
        chunks = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)] or [[]]
        seen = len(self.pool.calls)
        outputs = self.pool.map(method, chunks, labels=[_RUN["step"]] * len(chunks))
        self.calls += self.pool.calls[seen:]  # other threads' calls may interleave: kept by design (rare)
        return outputs

    def placement(self) -> dict | None:
        """Where this backend's calls ran: each batch's node, GPU, size and times, and the load
        time of each model that served one."""
        if not self.calls:
            return None
        served = {c["worker"] for c in self.calls}
        return {"batches": [{k: c.get(k) for k in ("hostname", "node_id", "gpu_ids", "size", "start", "end")}
                            for c in self.calls],
                "model_load_seconds": {str(w["worker"]): round(w["load_seconds"], 3) for w in self.pool.workers
                                       if w["worker"] in served}}

    def close(self) -> None:
        pass


class PooledRepainter(_Pooled):
    """A :class:`~gen4gen.backends.Repainter` whose ``repaint`` spreads one call's requests
    over the pool, ``batch_size`` per worker call; the pool's owner closes the pool."""

    def __init__(self, pool: GpuWorkerPool, batch_size: int):
        super().__init__(pool, batch_size, role="repaint")
        # A stage hands this many requests per call, so that every worker has a batch.
        self.requests_per_call = self.batch_size * len(pool)

    def repaint(self, requests: list) -> list:
        return [result for output in self._map("repaint", list(requests)) for result in output]


class PooledEmbedder(_Pooled):
    """A CLIP or DINO embedder (:class:`~gen4gen.backends.ClipEmbedder`) whose batches run on the pool."""

    def embed_images(self, images):
        import numpy as np

        return np.concatenate(self._map("embed_images", list(images)))

    def embed_texts(self, texts):
        import numpy as np

        return np.concatenate(self._map("embed_texts", list(texts)))


class PooledDetector(_Pooled):
    """A :class:`~gen4gen.backends.Detector` whose batches run on the pool."""

    def detect(self, images, class_names):
        outputs = self._map("detect_pairs", list(zip(images, class_names)))
        return [found for output in outputs for found in output]


class DetectorPairs:
    """The configured detector as a pool worker builds it: a batch is one list of (image, class names)."""

    def __init__(self, config, project_root):
        from .models.clip import load_detector

        self.backend = load_detector(config, project_root)
        self.name = getattr(self.backend, "name", type(self.backend).__name__)

    def identity(self) -> dict:
        return self.backend.identity()

    def detect_pairs(self, batch: list) -> list:
        return self.backend.detect([image for image, _ in batch], [names for _, names in batch]) if batch else []

    def close(self) -> None:
        self.backend.close()


class PooledSegmenter(_Pooled):
    """A :class:`~gen4gen.backends.Segmenter` in the pool's workers; ``segment_many`` spreads photos over them."""

    @property
    def fallback_warning(self):
        return self.pool.workers[0].get("fallback_warning")

    def segment(self, rgb, alpha=None):
        return self.segment_many([(rgb, alpha)])[0]

    def segment_many(self, photos: list) -> list:
        return [r for output in self._map("each:segment", [tuple(p) for p in photos]) for r in output]


class PooledCaptioner(_Pooled):
    """A :class:`~gen4gen.backends.Captioner` in the pool's workers; ``describe_many`` spreads images over them.

    Images go by path: every node sees the data folder (a shared filesystem)."""

    def describe(self, image, objects, background: str, canvas: int) -> str:
        return self.describe_many([(image, objects, background, canvas)])[0]

    def describe_many(self, items: list) -> list[str]:
        return [r for output in self._map("each:describe", [tuple(i) for i in items]) for r in output]


class ModelBundle:
    """Several backends in one worker, built once each; a pool calls them by method name."""

    def __init__(self, members: dict):
        self.members = {role: spec.build() for role, spec in members.items()}
        self.member_names = {role: getattr(m, "name", role) for role, m in self.members.items()}
        self.name = "+".join(self.member_names.values())

    def identity(self) -> dict:
        return {role: member.identity() for role, member in self.members.items()}

    def repaint(self, requests):
        return self.members["repaint"].repaint(requests)

    def describe(self, image, objects, background: str, canvas: int) -> str:
        return self.members["caption"].describe(image, objects, background, canvas)

    def close(self) -> None:
        for member in self.members.values():
            member.close()
