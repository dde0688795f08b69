"""Model backends spread over every GPU of a Ray cluster, each model loaded once per worker.

A :class:`GpuWorkerPool` starts one :class:`ModelWorker` Ray actor per GPU (or GPU fraction,
for small models such as CLIP); each builds its backend once, from a picklable
:class:`BackendSpec`. ``pool.map("repaint", batches)`` hands each batch to the next free worker
and returns the results in input order; requests carry their own seeds, so an image is the same
whatever worker or batch made it. ``placement()`` tells where each worker and batch ran.

``connect()`` joins a Ray cluster, or starts a local Ray (fake GPUs for tests) that listens on
loopback only. Ray and torch are imported inside functions: importing this module is cheap.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import ipaddress
import os
import pickle
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .run_pools import RUN_NAMESPACE, RunLease

# Without it Ray advertises and binds the machine's outside address even for a one-node instance.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def connect(address: str | None = None, num_gpus_local: int | None = None, *, num_cpus_local: int | None = None,
            temp_dir: str | None = "/tmp/gen4gen-ray", object_store_mb: int = 200, log_to_driver: bool = False,
            node_ip_address: str | None = None) -> dict:
    """Join the Ray cluster at ``address``, or start a local Ray when it is None; returns the
    cluster's resources. A process already connected stays connected (to the first one).

    The local Ray declares ``num_gpus_local`` GPUs (fake ones in tests: Ray only hands out ids
    and sets ``CUDA_VISIBLE_DEVICES``), has no dashboard, a small object store, and listens on
    127.0.0.1 only. That needs ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray is imported,
    so a process that imported Ray earlier without it is refused rather than exposed.
    ``node_ip_address`` names this driver's address when several nodes share one machine.
    """
    if address is None:
        os.environ[LOCAL_ONLY_ENV] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report sent anywhere
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    if address is None:
        own_address = ray.util.get_node_ip_address()
        if not ipaddress.ip_address(own_address).is_loopback:
            raise RuntimeError(f"a local Ray would listen on {own_address}: Ray was imported before connect() "
                               f"without {LOCAL_ONLY_ENV}=0 in the environment; set it, or call connect() first")
        if temp_dir:
            os.makedirs(temp_dir, exist_ok=True)
        ray.init(num_gpus=num_gpus_local, num_cpus=num_cpus_local, include_dashboard=False,
                 object_store_memory=object_store_mb * 2**20, _temp_dir=temp_dir, log_to_driver=log_to_driver,
                 _node_ip_address="127.0.0.1")
    else:
        extra = {"_node_ip_address": node_ip_address} if node_ip_address else {}
        ray.init(address=address, log_to_driver=log_to_driver, **extra)
    return ray.cluster_resources()


@dataclass
class BackendSpec:
    """How a worker builds its backend: ``factory`` is ``"package.module:callable"``, called with
    ``args`` and ``kwargs`` (all picklable); ``then`` names a method of the result that readies
    it and returns the backend (``"load"`` for the SDXL repainter)."""

    factory: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    then: str | None = None

    def build(self):
        module_name, _, attribute = self.factory.partition(":")
        if not attribute:
            module_name, _, attribute = self.factory.rpartition(".")
        backend = getattr(importlib.import_module(module_name), attribute)(*self.args, **self.kwargs)
        return getattr(backend, self.then)() if self.then else backend


class ModelWorker:
    """The body of one Ray actor: builds its backend once and serves batches through it."""

    def __init__(self, spec: BackendSpec, index: int):
        import ray

        self.index = index
        self.node_id = ray.get_runtime_context().get_node_id()
        self.hostname = socket.gethostname()
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        self.spec = spec
        began = time.perf_counter()
        self.backend = spec.build()
        self.load_seconds = time.perf_counter() - began
        self.loads = {spec.factory: 1}
        self.batches_served = 0
        self.requests_served = 0

    def describe(self) -> dict:
        return {"worker": self.index, "node_id": self.node_id, "hostname": self.hostname, "pid": os.getpid(),
                "gpu_ids": self.gpu_ids, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "backend": getattr(self.backend, "name", type(self.backend).__name__), "models": dict(self.loads),
                "fallback_warning": getattr(self.backend, "fallback_warning", None),
                "members": getattr(self.backend, "member_names", None),
                "load_seconds": self.load_seconds, "batches_served": self.batches_served,
                "requests_served": self.requests_served}

    def identity(self) -> dict:
        return self.backend.identity()

    def call(self, method: str, payload: bytes) -> tuple[bytes, dict]:
        """Run one pickled batch through ``backend.<method>``; the result comes back pickled."""
        if method.removeprefix("each:").startswith("_"):
            raise ValueError(f"{method!r} is not a backend method a pool may call")
        start = time.time()
        batch = pickle.loads(payload)
        if method.startswith("each:"):  # a batch of argument tuples, one call per item
            function = getattr(self.backend, method[len("each:"):])
            result = [function(*arguments) for arguments in batch]
        else:
            result = getattr(self.backend, method)(batch)
        # Pickled bytes are copied out of Ray's object store on arrival, so results do not pin it.
        out = pickle.dumps(result, protocol=5)
        end = time.time()
        self.batches_served += 1
        self.requests_served += len(batch)
        return out, {"worker": self.index, "node_id": self.node_id, "hostname": self.hostname,
                     "gpu_ids": self.gpu_ids, "start": start, "end": end, "size": len(batch)}

    def close(self) -> None:
        self.backend.close()


@functools.lru_cache(maxsize=None)
def _remote_worker_class():
    import ray

    return ray.remote(ModelWorker)


def workers_for(num_gpus: float) -> int:
    """How many workers of ``num_gpus`` each the GPUs free in the cluster now can hold."""
    import ray

    free = ray.available_resources().get("GPU", 0.0)
    return int(free / num_gpus + 1e-9)


class GpuWorkerPool:
    """N model workers, one per GPU (or GPU fraction), each with its backend loaded once.

    ``workers`` None: as many as the free GPUs hold. ``num_cpus`` is 0 by default because the
    GPU is what a worker holds; ``resources`` adds custom Ray resources (e.g. a node label);
    ``spread`` asks Ray to place workers on different nodes first. Start-up waits until every
    worker has loaded its model (they load in parallel) and fails after ``start_timeout_s``
    when the cluster cannot place them all. ``map`` may be called from several threads.
    """

    def __init__(self, spec: BackendSpec, workers: int | None = None, *, num_gpus: float = 1.0,
                 num_cpus: float = 0.0, resources: Mapping[str, float] | None = None, spread: bool = False,
                 start_timeout_s: float = 900.0, lease: RunLease | None = None):
        import ray

        if not ray.is_initialized():
            raise RuntimeError("no Ray connection: call gen4gen.gpu_pool.connect() first")
        self.spec = spec
        self._num_gpus = num_gpus
        self.lease = lease
        self.calls: list[dict] = []
        self._dead: set[int] = set()
        self._condition = threading.Condition()
        options = {"num_gpus": num_gpus, "num_cpus": num_cpus, "resources": dict(resources or {}) or None,
                   "scheduling_strategy": "SPREAD" if spread else "DEFAULT"}
        began = time.perf_counter()
        if lease is None:
            count = workers if workers is not None else workers_for(num_gpus)
            self.name = f"gen4gen-model-worker-{uuid.uuid4().hex[:8]}"
        else:  # the run's workers: the first step makes them, the others find them by name
            # One pool per backend in a run, whose steps share one configuration. (Pickles of the
            # spec differ between processes: sets pickle in each process's hash order.)
            self.key = hashlib.sha256(repr((spec.factory, spec.then, num_gpus, sorted((resources or {}).items())))
                                      .encode()).hexdigest()[:16]
            self.name = f"{lease.prefix}-{self.key}"
            lease_actor = lease.actor()
            count = ray.get(lease_actor.size.remote(self.key, None))
            if count is None:
                count = ray.get(lease_actor.size.remote(
                    self.key, workers if workers is not None else workers_for(num_gpus))) or 0
            options.update(namespace=RUN_NAMESPACE, lifetime="detached", get_if_exists=True)
        if count < 1:
            raise RuntimeError(f"no GPU free for a worker of {num_gpus} GPU: cluster has {ray.available_resources()}")
        # Steps of one run share its workers and each sends its batches to the free ones it knows
        # of: start each step at its own worker, so concurrent steps spread out.
        first = (os.getpid() % count) if lease is not None else 0
        self._free = [(first + i) % count for i in range(count)]
        remote = _remote_worker_class()
        self._actors = [remote.options(name=f"{self.name}-{i}", **options).remote(spec, i) for i in range(count)]
        try:
            self.workers = ray.get([actor.describe.remote() for actor in self._actors], timeout=start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close(timeout_s=0)  # the processes die with their models
            raise RuntimeError(f"{count} workers of {num_gpus} GPU each were not all placed and loaded within "
                               f"{start_timeout_s:.0f} s; free now: {ray.available_resources()}") from None
        except BaseException:
            self.close(timeout_s=0)  # the processes die with their models
            raise
        self.start_seconds = time.perf_counter() - began
        if lease is not None:
            ray.get(lease_actor.register.remote(self.key, spec.factory, self.actor_names, self.start_seconds))

    def __len__(self) -> int:
        return len(self._actors)

    def __enter__(self) -> "GpuWorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def actor_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(len(self._actors))]

    def identity(self) -> dict:
        import ray

        return ray.get(self._actors[0].identity.remote())

    def _take_worker(self, wait: bool) -> int | None:
        with self._condition:
            while not self._free:
                if len(self._dead) == len(self._actors):
                    raise RuntimeError("every worker of the pool has died")
                if not wait:
                    return None
                self._condition.wait()
            return self._free.pop(0)

    def _give_back(self, worker: int, dead: bool) -> None:
        with self._condition:
            if dead:
                self._dead.add(worker)
            else:
                self._free.append(worker)
            self._condition.notify_all()

    def map(self, method: str, batches: Sequence[Sequence], labels: Sequence[str] | None = None) -> list:
        """``backend.<method>(batch)`` for every batch, on free workers; results in input order.

        ``labels`` (one per batch, e.g. its partition) go into the per-batch records. A batch
        whose worker is lost (its process killed, its node gone) is done again by another worker
        (each request carries its seed: the same bytes); the map fails only when every worker is
        lost. A batch that fails otherwise is raised once the batches already running have come back.
        """
        import collections

        import ray

        batches = [list(batch) for batch in batches]
        results: list = [None] * len(batches)
        pending: dict = {}
        todo = collections.deque(range(len(batches)))
        failure = None
        while todo or pending:
            while todo and failure is None:
                worker = self._take_worker(wait=not pending)
                if worker is None:
                    break
                index = todo.popleft()
                payload = pickle.dumps(batches[index], protocol=5)
                submitted = time.time()  # before the call: the worker may start before .remote() returns
                ref = self._actors[worker].call.remote(method, payload)
                pending[ref] = (index, worker, submitted)
            if not pending:
                break
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            index, worker, submitted = pending.pop(ref)
            try:
                payload, record = ray.get(ref)
            except ray.exceptions.RayActorError:
                self._give_back(worker, dead=True)
                todo.append(index)
                continue
            except Exception as exc:  # keep collecting, so every worker goes back to the free list
                self._give_back(worker, dead=False)
                failure = failure or exc
                continue
            self._give_back(worker, dead=False)
            results[index] = pickle.loads(payload)
            record.update(batch=index, method=method, submitted=submitted, received=time.time(),
                          label=labels[index] if labels is not None else None)
            with self._condition:
                self.calls.append(record)
        if failure is not None:
            raise failure
        return results

    def map_partitions(self, method: str, groups: Mapping[str, Sequence], batch_size: int,
                       mix_partitions: bool = False) -> dict[str, list]:
        """Per partition, its items' results in order. A batch holds one partition's items only,
        unless ``mix_partitions`` lets the last items of one share a batch with the next's."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        tagged = [[(key, item) for item in items] for key, items in groups.items()]
        if mix_partitions:
            tagged = [[pair for group in tagged for pair in group]]
        batches = [group[i:i + batch_size] for group in tagged for i in range(0, len(group), batch_size)]
        labels = ["+".join(dict.fromkeys(key for key, _ in batch)) for batch in batches]
        outputs = self.map(method, [[item for _, item in batch] for batch in batches], labels)
        results: dict[str, list] = {key: [] for key in groups}
        for batch, output in zip(batches, outputs):
            if len(output) != len(batch):
                raise RuntimeError(f"{method} returned {len(output)} results for a batch of {len(batch)}")
            for (key, _), result in zip(batch, output):
                results[key].append(result)
        return results

    def placement(self) -> dict:
        """Per worker: node, hostname, GPU ids, models loaded (with counts), batches and requests
        served, load seconds. Per batch served: worker, node, GPUs, submit/start/end/receive times
        (wall clock; start and end are the worker's)."""
        import ray

        live = [actor for i, actor in enumerate(self._actors) if i not in self._dead]
        workers = ray.get([actor.describe.remote() for actor in live]) if live else []
        with self._condition:
            calls = [dict(call) for call in self.calls]
        return {"workers": workers, "calls": calls, "lost_workers": sorted(self._dead)}

    def close(self, timeout_s: float = 60.0) -> None:
        """Close every backend (frees its model; ``timeout_s`` at most) and kill the actors; safe to call twice."""
        import ray

        actors, self._actors = self._actors, []
        if not actors:
            return
        if self.lease is not None:  # the run's workers outlive this step: its lease ends them
            with self._condition:
                self.lease.record(self.key, [dict(call) for call in self.calls])
            return
        # GPUs this pool holds: its started workers still alive (none when start-up failed).
        held = (len(getattr(self, "workers", [])) - len(self._dead)) * self._num_gpus
        free_before = ray.available_resources().get("GPU", 0.0)
        closing = [actor.close.remote() for actor in actors]
        try:
            ray.get(closing, timeout=timeout_s)
        except Exception:  # a dead or stuck worker is killed below all the same
            pass
        for actor in actors:
            ray.kill(actor)
        # ray.kill returns at once and the cluster's view of free GPUs follows a moment later:
        # wait for it, so a pool started next sees these GPUs (bounded: others may take them).
        wanted = min(free_before + held, ray.cluster_resources().get("GPU", 0.0))
        deadline = time.monotonic() + 10
        while held > 0 and time.monotonic() < deadline and ray.available_resources().get("GPU", 0.0) < wanted - 1e-6:
            time.sleep(0.05)
