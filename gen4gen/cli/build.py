"""`gen4gen materialize` and `gen4gen plan`: bring the dataset up to date, or say what that would do."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..config import load_config
from .common import instance, overrides, preflight

# Exit code of a run that was refused until the user confirms (README: exit codes).
EXIT_REFUSED = 4


def data_dir_ok(config, args) -> bool:
    """A --data-dir that does not exist is an error unless asked to create it."""
    data = config.paths.data
    if getattr(args, "data_dir", None) and not data.is_dir():
        if getattr(args, "create", False):
            data.mkdir(parents=True)
            return True
        print(f"the data folder {data} does not exist; check the path, or pass --create to start a new one",
              file=sys.stderr)
        return False
    return True


def instance_for(config):
    """The Dagster instance of this data folder: the default one, unless it holds another folder."""
    import shutil

    from gen4gen_assets.concepts import DATA_DIR_KEY

    default = instance()
    bound = default.run_storage.get_cursor_values({DATA_DIR_KEY}).get(DATA_DIR_KEY)
    if bound is None or bound == str(config.paths.data):
        return default
    home = config.paths.data / ".dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    settings = Path(default.root_directory) / "dagster.yaml"
    if settings.is_file() and not (home / "dagster.yaml").is_file():
        shutil.copy2(settings, home / "dagster.yaml")  # the same pools and telemetry settings
    print(f"note: {default.root_directory} holds the partitions of {bound}; using the instance in {home} for "
          f"{config.paths.data}", file=sys.stderr)
    from dagster import DagsterInstance

    return DagsterInstance.from_config(str(home))


def cmd_materialize(args) -> int:
    from gen4gen_assets.definitions import build_definitions
    from gen4gen_assets.runner import materialize_all

    if args.ray_address:
        from ..config.loading import RAY_ADDRESS_ENV

        os.environ[RAY_ADDRESS_ENV] = args.ray_address  # the resources load the configuration again
    config = load_config(args.config, **overrides(args))
    if not data_dir_ok(config, args):
        return 2
    preflight(config)  # ends the command (exit 3) when weights are missing
    if args.confirm_removals:
        from ..removals import confirm_removals, missing_concepts

        missing = missing_concepts(config)
        confirm_removals(config.paths, missing)
        print(f"removal confirmed for: {', '.join(missing) or 'nothing (no concept is missing)'}")
    if args.retry_failed:
        _reset_failures(config.paths)
    defs = build_definitions(config_file=args.config, data_dir=args.data_dir)
    summary = materialize_all(defs, instance_for(config), incremental=not args.all, verify=args.verify)
    paths = config.paths
    print(f"\n{len(summary.succeeded)} runs ({summary.steps} steps) succeeded, {len(summary.failed)} failed, "
          f"in {summary.seconds:.1f} s")
    for label, message in summary.failed.items():
        print(f"  failed: {label}: {message}")
    for label, message in summary.skipped.items():
        print(f"  held back: {label}: {message}")
    print(f"dataset: {paths.mycanvas}  (metadata.jsonl, rejected.jsonl)")
    print(f"report:  {paths.reports / 'report.md'}")
    if "concept_images" in summary.failed and "confirm" in summary.failed["concept_images"]:
        return EXIT_REFUSED
    return 1 if summary.failed else 0


def _reset_failures(paths) -> None:
    import shutil

    shutil.rmtree(paths.build / ".state" / "failures", ignore_errors=True)


def cmd_plan(args) -> int:
    """What `materialize` would build and why, one line per partition and stage."""
    from ..concepts import build_registry, load_registry
    from ..incremental import plan_updates
    from ..io import BadInput
    from ..personalisation_state import plan_lines

    config = load_config(args.config, **overrides(args))
    if not data_dir_ok(config, args):
        return 2
    previous = load_registry(config.paths.registry)
    try:
        # The catalogue as the next run would see it (nothing is written).
        registry = build_registry(config, previous)
    except BadInput as exc:
        print(f"the catalogue would refuse: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    plan = plan_updates(config, registry, verify=args.verify, force=args.all)
    new_concepts = sorted({c["key"] for c in registry["concepts"]} - {c["key"] for c in previous.get("concepts", [])})
    # Trained models are not part of `materialize`: their state is said, never acted on.
    personalisation = plan_lines(config, registry)
    if args.json:
        print(json.dumps({**plan.to_dict(), "new_concepts": new_concepts, "personalisation": personalisation},
                         indent=2, ensure_ascii=False))
        return 0
    for line in personalisation:
        print(line)
    if plan.empty and not plan.held_back:
        print("nothing to do: every partition is current")
        return 0
    for step in plan.steps:
        line = step.line()
        if step.stage == "segmented_foregrounds" and step.key in new_concepts and step.reasons == ["never built"]:
            line = f"{step.label}: new concept"
        print(line)
    return 0


def register(sub) -> None:
    materialize = sub.add_parser("materialize", help="bring every asset up to date (only what changed is rebuilt)")
    materialize.add_argument("--data-dir")
    materialize.add_argument("--create", action="store_true", help="create --data-dir if it does not exist")
    materialize.add_argument("--all", action="store_true",
                             help="rebuild every partition (default: only the missing, out-of-date or damaged ones)")
    materialize.add_argument("--verify", action="store_true",
                             help="re-hash every recorded file (default: size and mtime, the hash when they differ)")
    materialize.add_argument("--confirm-removals", action="store_true",
                             help="retire the concepts whose folders are gone (the catalogue refuses otherwise)")
    materialize.add_argument("--retry-failed", action="store_true",
                             help="forget the failure counts: partitions given up are tried again")
    materialize.add_argument("--ray-address", help="run the GPU models in Ray workers on this cluster (HEAD:6379); "
                                                  "the same as [ray] enabled = true, address = ...")
    materialize.set_defaults(func=cmd_materialize)
    plan = sub.add_parser("plan", help="what `materialize` would build and why (nothing is built)")
    plan.add_argument("--data-dir")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.add_argument("--verify", action="store_true", help="re-hash every recorded file")
    plan.add_argument("--all", action="store_true", help="as `materialize --all` would")
    plan.set_defaults(func=cmd_plan)

