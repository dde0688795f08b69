"""A two-node Ray cluster on this machine, with fake GPUs: for the demo, the bench and the tests.

Two raylets (`ray start`), a head at 127.0.0.2 and a second node at 127.0.0.3, each declaring
``gpus_per_node`` GPUs and a resource naming it (``node_a``, ``node_b``), sharing a fresh token.
Ray refuses a multi-node cluster in its loopback-only mode, so its servers listen on every
interface of the network namespace they run in: run it inside one of its own (``unshare -n``,
as `make ray-demo` and the test do) to keep it on loopback. Everything started is stopped on exit.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAD_IP, NODE_IP = "127.0.0.2", "127.0.0.3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(command: list[str], log: Path, env: dict, timeout: float = 90.0) -> subprocess.Popen:
    """`ray start --block ...` in its own process group; returns once the node says it is up."""
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "Ray runtime started" in text:
            return process
        if process.poll() is not None:
            raise RuntimeError(f"{' '.join(command[:3])} exited {process.returncode}:\n{text[-2000:]}")
        time.sleep(0.3)
    raise RuntimeError(f"{' '.join(command[:3])} not up within {timeout:.0f} s:\n{log.read_text()[-2000:]}")


def stop_node(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM the node's process group (Ray drains, then stops its processes); SIGKILL after ``grace``."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
    except ProcessLookupError:
        pass
    process.wait()


def without_local_only(environ) -> dict:
    """The environment without the setting that confines a Ray to one node (``gen4gen.gpu_pool.connect``
    sets it for a local Ray): with it, the nodes and drivers of a multi-node cluster refuse to start."""
    from .gpu_pool import LOCAL_ONLY_ENV

    return {k: v for k, v in environ.items() if k != LOCAL_ONLY_ENV}


def isolated() -> bool:
    """Whether this process runs in a network namespace with loopback only (``unshare -n``)."""
    names = [line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]]
    return names == ["lo"]


class LocalCluster:
    """``with LocalCluster() as cluster:`` — ``cluster.address``, ``cluster.env`` (the token, for
    every process that joins), ``cluster.head_ip``; the nodes are stopped on exit."""

    def __init__(self, gpus_per_node: int = 2, cpus_per_node: int = 1):
        self.gpus_per_node, self.cpus_per_node = gpus_per_node, cpus_per_node
        self.head_ip, self.node_ip = HEAD_IP, NODE_IP
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0",
                    # Nothing runs on the nodes once the work is done: stop at SIGTERM, no drain period.
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        self.processes: list[subprocess.Popen] = []
        self.work: Path | None = None
        self.address = ""

    def __enter__(self) -> "LocalCluster":
        env = {**without_local_only(os.environ), **self.env}
        ray_bin = str(Path(sys.executable).with_name("ray"))
        self.work = Path(tempfile.mkdtemp(prefix="g4g-ray-", dir="/tmp"))  # short: Ray's socket paths must fit
        port = free_port()
        self.address = f"{self.head_ip}:{port}"
        common = ["--block", f"--num-gpus={self.gpus_per_node}", f"--num-cpus={self.cpus_per_node}",
                  "--object-store-memory=150000000", "--disable-usage-stats"]
        try:
            self.processes.append(start_node(
                [ray_bin, "start", "--head", f"--node-ip-address={self.head_ip}", f"--port={port}",
                 "--include-dashboard=false", '--resources={"node_a": 1}', f"--temp-dir={self.work / 'a'}",
                 "--min-worker-port=47000", "--max-worker-port=47499", *common], self.work / "head.log", env))
            self.processes.append(start_node(
                [ray_bin, "start", f"--address={self.address}", f"--node-ip-address={self.node_ip}",
                 '--resources={"node_b": 1}', f"--temp-dir={self.work / 'b'}", "--min-worker-port=47500",
                 "--max-worker-port=47999", "--dashboard-agent-listen-port=0", *common], self.work / "node.log", env))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for process in reversed(self.processes):  # the second node first, the head last
            stop_node(process, grace=10.0)
        self.processes = []
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
