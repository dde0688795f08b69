"""Absorbing a 21st concept into a dataset built from 20 DreamBooth concepts.

    .venv/bin/python bench/bench_incremental.py [--concepts 20] [--rounds 1]

Builds 20 concepts (one photo each) through Dagster in process, adds a 21st with
`gen4gen add-concept`'s code path, and times the incremental materialisation (catalogue,
new partitions, export, report). Then it deletes the new partitions' outputs and times
materialising just those partitions on their own. Target: absorb <= 1.2x the partitions alone.
"""
from __future__ import annotations

import argparse
import shutil
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
    parser.add_argument("--rounds", type=int, default=1, help="IS-Net rounds (1 keeps the set-up short)")
    parser.add_argument("--images", type=int, default=6)
    args = parser.parse_args()
    if not DREAMBOOTH.is_dir():
        print(f"{DREAMBOOTH} is absent: the benchmark needs ../shared/data/dreambooth", file=sys.stderr)
        return 2
    from dagster import DagsterInstance

    from gen4gen.concepts import load_registry
    from gen4gen_assets.definitions import build_definitions
    from gen4gen_assets.runner import QUIET_RUN_CONFIG, materialize_all

    subjects = sorted(p for p in DREAMBOOTH.iterdir() if p.is_dir())[:args.concepts + 1]
    work = Path(tempfile.mkdtemp(prefix="gen4gen-incremental-"))
    try:
        concepts = work / "data" / "concepts"
        for subject in subjects[:-1]:
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

        newcomer = subjects[-1]
        (concepts / newcomer.name).mkdir()
        shutil.copy(sorted(newcomer.iterdir())[0], concepts / newcomer.name)
        before = {c["key"] for c in load_registry(work / "data/build/concepts.json")["compositions"]}
        began = time.perf_counter()
        summary = materialize_all(defs, instance, log=lambda *_: None, incremental=True)
        absorb = time.perf_counter() - began
        new = sorted({c["key"] for c in load_registry(work / "data/build/concepts.json")["compositions"]} - before)
        print(f"absorbing {newcomer.name}: {absorb:.2f} s ({summary.steps} steps: {', '.join(summary.succeeded)})")

        paths = defs.resources["settings"].paths
        for folder in [paths.segmented(newcomer.name)] + [f(k) for k in new
                                                           for f in (paths.layouts, paths.composed, paths.recoloured,
                                                                     paths.captions)]:
            shutil.rmtree(folder)
        quiet = QUIET_RUN_CONFIG
        began = time.perf_counter()
        defs.resolve_job_def("segment_concepts").execute_in_process(instance=instance, partition_key=newcomer.name,
                                                                    run_config=quiet)
        for key in new:
            defs.resolve_job_def("build_compositions").execute_in_process(instance=instance, partition_key=key,
                                                                          run_config=quiet)
        alone = time.perf_counter() - began
        print(f"its new partitions alone (1 segmentation + {len(new)} compositions): {alone:.2f} s")
        print(f"ratio: {absorb / alone:.2f}x (target <= 1.2x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
