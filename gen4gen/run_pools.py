"""The Ray workers of one run, when no process of the run can own them (steps in processes of their own).

Under `make ui`, a sensor's run or a backfill, Dagster's multiprocess executor runs each step in
a process of its own. A :class:`RunLease` lets the steps of one run share its workers
(:class:`~gen4gen.gpu_pool.GpuWorkerPool` with ``lease=``): named, detached actors, ended by the
run's :class:`RunPools` actor once no step holds them. Ray is imported inside functions.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Mapping, Sequence

# Detached actors of pools leased to a run live in this Ray namespace, named after the run.
RUN_NAMESPACE = "gen4gen"


class RunPools:
    """The body of one detached Ray actor per run: the lease on that run's pools.

    Under `make ui` every step is a process of its own, so no step process can own the pools of
    its run. The steps of one run (one UI launch, or every run of one backfill) share its workers
    instead: named, detached actors that this lease ends once no step has held them for
    ``linger_s``. A step holds them while it heartbeats; a step killed without leaving is dropped
    after ``holder_timeout_s``. Both are measured on this actor's own monotonic clock, so nothing
    depends on the hosts' clocks agreeing. Each step that leaves hands in the batches it ran, and
    this actor (one writer) rewrites ``placement_path``.
    """

    def __init__(self, run: str, linger_s: float, holder_timeout_s: float, placement_path: str | None):
        self.run, self.linger_s, self.holder_timeout_s = run, linger_s, holder_timeout_s
        self.placement_path = placement_path
        self.sizes: dict[str, int] = {}
        self.pools: dict[str, dict] = {}  # key -> backend, actor names, start seconds, calls
        self.holders: dict[str, float] = {}
        self.idle_since = time.monotonic()
        self.ending = False
        self.dirty = False  # calls handed in since placement_path was last written
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, daemon=True).start()

    def join(self, holder: str) -> bool:
        """False once the lease is ending: the caller waits for this actor to go, then makes a new one."""
        with self._lock:
            if not self.ending:
                self.holders[holder] = time.monotonic()
            return not self.ending

    def heartbeat(self, holder: str) -> None:
        with self._lock:
            if holder in self.holders:
                self.holders[holder] = time.monotonic()

    def size(self, key: str, proposed: int | None) -> int | None:
        """The pool's worker count: the first step's proposal, so every step sees the same actors."""
        with self._lock:
            if proposed is not None and proposed >= 1:
                self.sizes.setdefault(key, proposed)
            return self.sizes.get(key)

    def register(self, key: str, backend: str, names: list[str], start_seconds: float) -> None:
        with self._lock:
            self.pools.setdefault(key, {"backend": backend, "names": names, "start_seconds": start_seconds,
                                        "calls": []})

    def leave(self, holder: str, calls: dict[str, list]) -> None:
        with self._lock:
            self.holders.pop(holder, None)
            for key, records in calls.items():
                if key in self.pools:
                    self.pools[key]["calls"].extend(records)
            if not self.holders:
                self.idle_since = time.monotonic()
            self.dirty = True  # written by the watcher: describing busy workers may wait for their batch

    def _actors(self, names: list[str]) -> list:
        import ray

        found = []
        for name in names:
            try:
                found.append(ray.get_actor(name, namespace=RUN_NAMESPACE))
            except ValueError:  # lost: its node went, or it was killed
                pass
        return found

    def placement(self) -> dict:
        import ray

        with self._lock:
            pools = {key: dict(pool, calls=list(pool["calls"])) for key, pool in self.pools.items()}
        out = []
        for pool in pools.values():
            actors = self._actors(pool["names"])
            try:
                workers = ray.get([actor.describe.remote() for actor in actors], timeout=60)
            except Exception:  # a worker lost meanwhile: the calls still say where it ran
                workers = []
            out.append({"backend": pool["backend"], "start_seconds": round(pool["start_seconds"], 3),
                        "workers": workers, "calls": pool["calls"], "steps": step_summary(pool["calls"]),
                        "lost_workers": sorted(set(range(len(pool["names"]))) - {w["worker"] for w in workers})})
        return {"run": self.run, "pools": out}

    def _write_placement(self) -> None:
        if not self.placement_path:
            return
        import json

        from .io import atomic_write_text

        atomic_write_text(self.placement_path, json.dumps(self.placement(), indent=1, sort_keys=True))

    def _write_placement_or_say(self) -> None:
        try:
            self._write_placement()
        except Exception as exc:  # the lease must still end the run's workers
            print(f"gen4gen: placement of run {self.run} not written to {self.placement_path}: {exc}", flush=True)

    def _watch(self) -> None:
        import ray

        while True:
            time.sleep(0.25)
            if self.dirty:
                self.dirty = False
                self._write_placement_or_say()
            now = time.monotonic()
            with self._lock:
                for holder, seen in list(self.holders.items()):
                    if now - seen > self.holder_timeout_s:  # its step died without leaving
                        del self.holders[holder]
                        if not self.holders:
                            self.idle_since = now
                if self.holders or now - self.idle_since < self.linger_s:
                    continue
                self.ending = True
                names = [name for pool in self.pools.values() for name in pool["names"]]
            try:
                self._write_placement_or_say()
            finally:
                actors = self._actors(names)
                for actor in actors:
                    try:
                        ray.get(actor.close.remote(), timeout=60)  # frees the model before the process goes
                    except Exception:
                        pass
                    ray.kill(actor)
                os._exit(0)  # a detached actor is not restarted: the run's name is free again


def step_summary(calls: Sequence[Mapping]) -> list[dict]:
    """Per step (a call's label, ``asset[partition]``): its nodes, GPUs, batches, first start and last end."""
    steps: dict[str, dict] = {}
    for call in calls:
        label = call.get("label")
        if not label:
            continue
        asset, _, partition = label.partition("[")
        step = steps.setdefault(label, {"asset": asset, "partition": partition.rstrip("]") or None, "nodes": set(),
                                        "gpu_ids": set(), "batches": 0, "start": call["start"], "end": call["end"]})
        step["nodes"].add(call["hostname"] + ":" + call["node_id"])
        step["gpu_ids"].update(call["gpu_ids"])
        step["batches"] += 1
        step["start"], step["end"] = min(step["start"], call["start"]), max(step["end"], call["end"])
    return [dict(step, nodes=sorted(step["nodes"]), gpu_ids=sorted(step["gpu_ids"])) for step in steps.values()]


@dataclass
class RunLease:
    """A step's hold on its run's pools (:class:`RunPools`): ``run`` names the run (or backfill)."""

    run: str
    placement_path: str | None = None
    linger_s: float = 60.0
    holder_timeout_s: float = 30.0
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")

    def __post_init__(self):
        self._actor = None
        self._stop = threading.Event()
        self._calls: dict[str, list] = {}
        self._lock = threading.Lock()

    @property
    def prefix(self) -> str:
        return f"gen4gen-run-{self.run}"

    def actor(self):
        """The run's lease actor, joined (made when this step is the run's first)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        with self._lock:
            if self._actor is not None:
                return self._actor
            for _ in range(40):
                # On this step's node (soft): it writes placement_path, which this step can see.
                here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
                actor = ray.remote(RunPools).options(
                    name=f"{self.prefix}-lease", namespace=RUN_NAMESPACE, lifetime="detached", get_if_exists=True,
                    num_cpus=0, max_concurrency=4, scheduling_strategy=here).remote(self.run, self.linger_s, self.holder_timeout_s,
                                                          self.placement_path)
                try:
                    if ray.get(actor.join.remote(self.holder), timeout=60):
                        break
                except ray.exceptions.RayActorError:
                    pass
                time.sleep(0.5)  # the lease of a run that just ended is going: then make a new one
            else:
                raise RuntimeError(f"could not join the Ray workers of run {self.run}")
            self._actor = actor
            threading.Thread(target=self._beat, daemon=True).start()
            return actor

    def _beat(self) -> None:
        while not self._stop.wait(self.holder_timeout_s / 4):
            try:
                self._actor.heartbeat.remote(self.holder)
            except Exception:
                pass

    def record(self, key: str, calls: list) -> None:
        with self._lock:
            self._calls.setdefault(key, []).extend(calls)

    def leave(self) -> None:
        """Hand in the batches this step ran; the run's workers stay for its next steps."""
        import ray

        with self._lock:
            actor, self._actor = self._actor, None
            calls, self._calls = self._calls, {}
        self._stop.set()
        if actor is not None:
            try:
                ray.get(actor.leave.remote(self.holder, calls), timeout=120)
            except Exception:  # the lease drops this step after holder_timeout_s all the same
                pass
