"""Peak memory of `make demo`'s materialisation: the sample concepts in a temporary data folder,
then `gen4gen materialize` as a subprocess, with a fresh Dagster instance.

Two figures are printed:
- the peak RSS of the whole process tree: /proc is polled every --interval seconds and the RSS of
  `gen4gen materialize` and of every descendant (step processes, DVC) is summed; the largest sum
  is the figure compared with --target-gb. Pages shared between processes count once per
  process, so this is an upper bound; a peak shorter than the interval can be missed;
- the largest single process's peak RSS from getrusage(RUSAGE_CHILDREN).ru_maxrss, exact (the
  kernel's high-water mark) but per process, not summed.

Run: `make bench-memory`, or `.venv/bin/python bench/bench_memory.py [--profile paper] [--keep]`.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GENERATOR = Path(sys.executable).with_name("gen4gen")


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, resident bytes) for every process readable in /proc."""
    page = os.sysconf("SC_PAGE_SIZE")
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:  # ended while we looked
            continue
        # Fields after the command name, which may itself hold spaces and parentheses.
        fields = stat[stat.rindex(b")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[21]) * page)
    return table


def tree_of(root: int, table: dict[int, tuple[int, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            found.append(pid)
            stack.extend(children.get(pid, []))
    return found


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return "?"


def measure(command: list[str], env: dict, interval: float, cwd: Path) -> dict:
    """Runs ``command``; its exit code, seconds, tree peak and the processes at that peak."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, at_peak, output = 0, [], []
    # Output is drained by a thread so a full pipe never stalls the run being measured.
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    while process.poll() is None:
        table = process_table()
        members = tree_of(process.pid, table)
        total = sum(table[pid][1] for pid in members)
        if total > peak:
            peak = total
            at_peak = sorted(((table[pid][1], pid, command_line(pid)) for pid in members), reverse=True)[:5]
        time.sleep(interval)
    reader.join()
    return {"code": process.returncode, "seconds": time.perf_counter() - start, "peak": peak,
            "at_peak": at_peak, "output": "".join(output)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="embedded", help="backend profile (default: embedded, as `make demo`)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between /proc samples")
    parser.add_argument("--target-gb", type=float, default=3.0, help="exit 1 when the tree peak is above this")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args()
    if not GENERATOR.is_file():
        print(f"{GENERATOR} not found; run `make setup` first", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="gen4gen-memory-"))
    data = workdir / "data"
    env = {**os.environ, "DAGSTER_HOME": str(workdir / "dagster_home"), "GEN4GEN_PROFILE": args.profile,
           "HF_HUB_OFFLINE": "1"}
    for name in ("GEN4GEN_CONFIG", "GEN4GEN_DATA_DIR"):
        env.pop(name, None)
    (workdir / "dagster_home").mkdir()
    try:
        # From the checkout, as `make demo` (its gen4gen.toml, if any, applies).
        subprocess.run([str(GENERATOR), "demo-data", "--data-dir", str(data)], env=env, cwd=PROJECT_ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        result = measure([str(GENERATOR), "materialize", "--data-dir", str(data)], env, args.interval, PROJECT_ROOT)
    finally:
        if args.keep:
            print(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    largest_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    print(result["output"].rstrip().splitlines()[-1] if result["output"].strip() else "(no output)")
    print(f"gen4gen materialize ({args.profile}): exit {result['code']} in {result['seconds']:.0f} s")
    print(f"peak RSS of the process tree (sum, sampled every {args.interval * 1000:.0f} ms): "
          f"{result['peak'] / 2**30:.2f} GiB")
    print(f"largest single process's peak RSS (getrusage RUSAGE_CHILDREN): {largest_kib / 2**20:.2f} GiB")
    print("processes at the tree's peak:")
    for rss, pid, line in result["at_peak"]:
        print(f"  {rss / 2**30:6.2f} GiB  {pid}  {line}")
    if result["code"] != 0:
        print(result["output"][-3000:], file=sys.stderr)
        return 1
    within = result["peak"] <= args.target_gb * 2**30
    print(f"target ≤ {args.target_gb:g} GiB: {'met' if within else 'NOT met'}")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
