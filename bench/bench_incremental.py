"""Absorbing a 21st concept into a dataset built from 20 DreamBooth concepts.

    .venv/bin/python bench/bench_incremental.py [--concepts 20] [--rounds 3]

Builds 20 concepts (one photo each) through Dagster in process, adds a 21st with
`gen4gen add-concept`'s code path, and times the incremental materialisation (catalogue,
new partitions, export, report). Then it deletes the new partitions' outputs and times
materialising just those partitions on their own. Target: absorb <= 1.2x the partitions alone.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DREAMBOOTH = ROOT.parent / "shared" / "data" / "dreambooth"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="IS-Net rounds (the paper's and the default: 3)")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--newcomers", type=int, default=3, help="concepts added one after another (timed each)")
    args = parser.parse_args()
    if not DREAMBOOTH.is_dir():
        print(f"{DREAMBOOTH} is absent: the benchmark needs ../shared/data/dreambooth", file=sys.stderr)
        return 2
    from dagster import DagsterInstance

    from gen4gen.concepts import load_registry
    from gen4gen_assets.definitions import build_definitions
    from gen4gen_assets.runner import QUIET_RUN_CONFIG, materialize_all

    subjects = sorted(p for p in DREAMBOOTH.iterdir() if p.is_dir())[:args.concepts + args.newcomers]
    work = Path(tempfile.mkdtemp(prefix="gen4gen-incremental-"))
    try:
        concepts = work / "data" / "concepts"
        for subject in subjects[:args.concepts]:
            (concepts / subject.name).mkdir(parents=True)
            shutil.copy(sorted(subject.iterdir())[0], concepts / subject.name)
        shutil.copy(DREAMBOOTH / "prompts_and_classes.txt", concepts / "prompts_and_classes.txt")
        config_file = work / "gen4gen.toml"
        config_file.write_text(f'data_dir = "{(work / "data").as_posix()}"\n[segmentation]\nrounds = {args.rounds}\n'
                               f"[proposal]\nmax_compositions = {args.concepts}\n"
                               f"[layout]\nimages_per_composition = {args.images}\n", encoding="utf-8")
        defs = build_definitions(config_file=str(config_file))
        instance = DagsterInstance.ephemeral()
        began = time.perf_counter()
        summary = materialize_all(defs, instance, log=lambda *_: None, incremental=True)
        print(f"built {args.concepts} concepts: {len(summary.succeeded)} runs in {time.perf_counter() - began:.1f} s")

        paths = defs.resources["settings"].paths
        ratios = []
        # One newcomer after another (21st, 22nd, ...): a single timing is too noisy on 2 cores.
        for newcomer in subjects[args.concepts:]:
            (concepts / newcomer.name).mkdir()
            shutil.copy(sorted(newcomer.iterdir())[0], concepts / newcomer.name)
            before = {c["key"] for c in load_registry(paths.registry)["compositions"]}
            began = time.perf_counter()
            summary = materialize_all(defs, instance, log=lambda *_: None, incremental=True)
            absorb = time.perf_counter() - began
            new = sorted({c["key"] for c in load_registry(paths.registry)["compositions"]} - before)
            print(f"absorbing {newcomer.name}: {absorb:.2f} s ({summary.steps} steps: {', '.join(summary.succeeded)})")

            for folder in [paths.segmented(newcomer.name)] + [f(k) for k in new
                                                               for f in (paths.layouts, paths.composed, paths.recoloured,
                                                                         paths.captions)]:
                shutil.rmtree(folder)
            began = time.perf_counter()
            defs.resolve_job_def("segment_concepts").execute_in_process(
                instance=instance, partition_key=newcomer.name, run_config=QUIET_RUN_CONFIG)
            for key in new:
                defs.resolve_job_def("build_compositions").execute_in_process(
                    instance=instance, partition_key=key, run_config=QUIET_RUN_CONFIG)
            alone = time.perf_counter() - began
            ratios.append(absorb / alone)
            print(f"  its new partitions alone (1 segmentation + {len(new)} compositions): {alone:.2f} s; "
                  f"ratio {ratios[-1]:.2f}x")
            # Put the dataset back in step with the catalogue before the next newcomer.
            materialize_all(defs, instance, log=lambda *_: None, incremental=True)
        print(f"median ratio over {len(ratios)} newcomers: {statistics.median(ratios):.2f}x (target <= 1.2x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
