"""`make ray-demo` as CI runs it: the demo pipeline on a two-node Ray cluster with fake GPUs and the
Dagster instance in Postgres, inside a network namespace with loopback only (tests/ray_demo.py)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from .conftest import PROJECT_ROOT

CLAIMS = ["every GPU batch ran on exactly one declared GPU", "no two workers of a pool had the same (node, GPU)",
          "both nodes did work", "each worker loaded its models once", "the exported images equal the reference's",
          "every cut-out, repainted image and caption equals the reference's",
          "every exported image's lineage, written on both nodes, verifies to its photos",
          "a UI launch's steps (each a process) shared its workers, each loading its models once"]


def _why_not() -> str | None:
    for module, extra in (("ray", "cluster"), ("pgserver", "dev"), ("dagster_postgres", "cluster"),
                          ("diffusers", "paper")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (the `{extra}` extra; make setup-paper)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is not available: the demo's cluster needs a network namespace of its own"
    probe = subprocess.run(["unshare", *([] if os.geteuid() == 0 else ["-r"]), "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"this machine allows no network namespace here ({probe.stderr.decode().strip()})"
    return None


@pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))
def test_ray_demo_on_two_nodes_and_postgres():
    command = ["unshare", *([] if os.geteuid() == 0 else ["-r"]), "-n", "sh", "-c",
               f"ip link set lo up && exec {sys.executable} -m tests.ray_demo"]
    # Earlier tests' local Rays leave the one-node setting in this process's environment.
    from gen4gen.local_cluster import without_local_only

    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900,
                            env=without_local_only(os.environ))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for claim in CLAIMS:
        assert f"yes  {claim}" in output, output[-4000:]
    assert "Dagster instance in Postgres" in output
