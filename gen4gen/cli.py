"""The ``gen4gen`` command: demo data, weights, and materialising the asset graph."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import PROJECT_ROOT, load_config


def _instance():
    """The project's Dagster instance (``DAGSTER_HOME``, by default ``.dagster_home/`` here)."""
    from dagster import DagsterInstance

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    return DagsterInstance.get()


def cmd_demo_data(args) -> int:
    from .demo_data import write_demo_concepts

    config = load_config(args.config, **_overrides(args))
    written = write_demo_concepts(config.paths.concepts)
    print(f"demo concepts in {config.paths.concepts} ({len(written)} photos written)")
    return 0


def cmd_fetch_weights(args) -> int:
    from .weights import fetch_isnet

    config = load_config(args.config)
    try:
        path = fetch_isnet(config.paths.segmentation_weights, tarball=Path(args.tarball) if args.tarball else None)
    except (RuntimeError, OSError) as exc:
        print(f"could not obtain the IS-Net weights: {exc}", file=sys.stderr)
        print("segmentation will fall back to OpenCV GrabCut until they are present", file=sys.stderr)
        return 1
    print(f"IS-Net weights ready: {path}")
    return 0


def cmd_materialize(args) -> int:
    from gen4gen_assets.definitions import build_definitions
    from gen4gen_assets.runner import materialize_all

    config = load_config(args.config, **_overrides(args))
    defs = build_definitions(config_file=args.config, data_dir=args.data_dir)
    summary = materialize_all(defs, _instance())
    paths = config.paths
    print(f"\n{len(summary.succeeded)} runs succeeded, {len(summary.failed)} failed, in {summary.seconds:.1f} s")
    for label, message in summary.failed.items():
        print(f"  failed: {label}: {message}")
    print(f"dataset: {paths.mycanvas}  (metadata.jsonl, rejected.jsonl)")
    print(f"report:  {paths.reports / 'report.md'}")
    return 1 if summary.failed else 0


def _overrides(args) -> dict:
    return {"data_dir": args.data_dir} if getattr(args, "data_dir", None) else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen4gen", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file (default: $GEN4GEN_CONFIG or ./gen4gen.toml)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo-data", help="write the sample concepts (photos shipped in installed packages)")
    demo.add_argument("--data-dir")
    demo.set_defaults(func=cmd_demo_data)
    weights = sub.add_parser("fetch-weights", help="obtain IS-Net from the npm package @imgly/background-removal-data")
    weights.add_argument("--tarball", help="use an already downloaded package .tgz instead of `npm pack`")
    weights.set_defaults(func=cmd_fetch_weights)
    materialize = sub.add_parser("materialize", help="materialise every asset for every concept and composition")
    materialize.add_argument("--data-dir")
    materialize.set_defaults(func=cmd_materialize)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
