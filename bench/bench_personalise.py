"""The personalisation loop's wall time on the CPU: `gen4gen personalise --tiny` on a built dataset.

    .venv/bin/python bench/bench_personalise.py [--config FILE] [--data-dir DIR]

Run it after `make demo` (it uses that dataset, in data/): it trains the tiny loop's two models
(MyCanvas with background-in-text prompts, and the photos-only baseline; or the configured
[[training.runs]]), samples them, rebuilds the report, and prints the wall time, the training
figures of each model and the report's comparison rows. Tiny random-weight models: the numbers
show the mechanics, not quality.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from gen4gen.cli import main; sys.exit(main(sys.argv[1:]))"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    command = [*CLI, *(["--config", args.config] if args.config else []), "personalise", "--tiny",
               *(["--data-dir", args.data_dir] if args.data_dir else [])]
    began = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    print(result.stdout[-2000:])
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        print(f"gen4gen personalise --tiny exited {result.returncode} after {seconds:.0f} s")
        return 1
    sys.path.insert(0, str(ROOT))
    from gen4gen.config import load_config

    data = load_config(args.config, **({"data_dir": args.data_dir} if args.data_dir else {})).paths.data
    report = json.loads((data / "reports" / "report.json").read_text(encoding="utf-8"))["evaluation"]
    print(f"\ngen4gen personalise --tiny: {seconds:.0f} s wall, exit 0")
    for run in report.get("models", {}):
        trained = json.loads((data / "personalised" / run / "training_set.json").read_text(encoding="utf-8"))
        summary = report["sets"][f"model:{run}"]["summary"]
        print(f"  {run}: {trained['images']} training images, {trained['steps']} steps at "
              f"{trained['seconds_per_step']:.2f} s/step, loss {trained['first_loss']:.3f} -> {trained['last_loss']:.3f}; "
              f"{summary['images']} samples: CP-CLIP {summary['cp_clip']:.3f}, TI-CLIP train "
              f"{summary['ti_clip']['train']:.3f} / held-out {summary['ti_clip']['held_out']:.3f}, "
              f"DINO {summary['dino']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
