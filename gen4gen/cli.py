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
    if not _preflight(config):
        return 2
    defs = build_definitions(config_file=args.config, data_dir=args.data_dir)
    summary = materialize_all(defs, _instance(), incremental=not args.all)
    paths = config.paths
    print(f"\n{len(summary.succeeded)} runs ({summary.steps} steps) succeeded, {len(summary.failed)} failed, "
          f"in {summary.seconds:.1f} s")
    for label, message in summary.failed.items():
        print(f"  failed: {label}: {message}")
    print(f"dataset: {paths.mycanvas}  (metadata.jsonl, rejected.jsonl)")
    print(f"report:  {paths.reports / 'report.md'}")
    return 1 if summary.failed else 0


def _preflight(config) -> bool:
    """Weights and libraries of the configured backends; False (after saying why) when missing."""
    from .models.preflight import check

    report = check(config, PROJECT_ROOT)
    if not report.ok:
        print(report.text(), file=sys.stderr)
        print("nothing was run: provide the weights above (README.md, \"The paper profile\") or choose another "
              "profile", file=sys.stderr)
        return False
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return True


def cmd_check_weights(args) -> int:
    from .models.preflight import check

    report = check(load_config(args.config), PROJECT_ROOT)
    print(report.text(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 2


def cmd_convert_isnet(args) -> int:
    from .config import resolve_path
    from .models.isnet_onnx_import import convert_onnx_to_checkpoint

    config = load_config(args.config)
    source = resolve_path(args.onnx) if args.onnx else config.paths.segmentation_weights
    target = resolve_path(args.output or config.segmentation.isnet_checkpoint)
    if not source.is_file():
        print(f"{source} does not exist; run `make weights` first", file=sys.stderr)
        return 1
    convert_onnx_to_checkpoint(source, target)
    print(f"IS-Net PyTorch checkpoint written: {target} (weights from {source})")
    return 0


def cmd_lineage(args) -> int:
    import json

    from .lineage import LineageStore, format_tree

    config = load_config(args.config, **_overrides(args))
    store = LineageStore(config.paths.data)
    if not store.db_path.exists() and not store.journal_dir.is_dir():
        print(f"no lineage recorded yet in {store.folder}; materialise some assets first", file=sys.stderr)
        return 2
    with store.reader() as connection:
        artifact = store.resolve(connection, args.target)
        if artifact is None:
            print(f"{args.target}: no lineage row for this id or path (under {config.paths.data})", file=sys.stderr)
            return 2
        if args.descendants:
            rows = store.descendants(connection, artifact["id"])
            if args.json:
                print(json.dumps({"artifact": artifact, "descendants": rows}, indent=2, ensure_ascii=False))
            else:
                print(f"{len(rows)} artifacts derived from {artifact['path']} ({artifact['id']}):")
                for row in rows:
                    print(f"  {row['asset_key']}[{row['partition_key'] or ''}] {row['path']}  id {row['id']}")
            return 0
        tree = store.tree(connection, artifact["id"])
        nodes, _ = store.ancestry(connection, artifact["id"])
    if args.json:
        print(json.dumps(tree, indent=2, ensure_ascii=False))
    else:
        print("\n".join(format_tree(tree)))
    if args.verify:
        problems = store.verify(nodes)
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"verified {len(nodes)} files: {len(problems)} missing or changed", file=sys.stderr)
        return 1 if problems else 0
    return 0


def cmd_add_concept(args) -> int:
    """Copy a folder of photos in as a new concept, then build only what it adds."""
    import shutil
    import tempfile

    from .concepts import find_class_map
    from .io import BadInput, atomic_write_text, check_concept_name

    config = load_config(args.config, **_overrides(args))
    paths = config.paths
    source = Path(args.path)
    try:
        check_concept_name(args.name)
        if not source.is_dir():
            raise BadInput(source, "is not a folder of photos")
        photos = [p for p in sorted(source.iterdir())
                  if p.is_file() and p.suffix.lower() in config.input.image_extensions]
        if not photos:
            raise BadInput(source, f"has no image files ({', '.join(config.input.image_extensions)})")
        target = paths.concepts / args.name
        if target.exists():
            raise BadInput(target, "a concept with this name exists; edit its folder and run `gen4gen materialize`")
    except BadInput as exc:
        print(f"add-concept: {exc}", file=sys.stderr)
        return 2
    paths.concepts.mkdir(parents=True, exist_ok=True)
    # Copy into a hidden folder, then rename: the sensor never sees a half-copied concept.
    staging = Path(tempfile.mkdtemp(prefix=".adding-", dir=paths.concepts))
    for photo in photos:
        shutil.copy2(photo, staging / photo.name)
    staging.rename(target)
    if args.class_name:
        class_map = (find_class_map(paths.concepts, paths.data, paths.class_map_file)
                     or paths.concepts / "prompts_and_classes.txt")
        existing = class_map.read_text(encoding="utf-8") if class_map.is_file() else "subject_name,class\n"
        atomic_write_text(class_map, existing.rstrip("\n") + f"\n{args.name},{args.class_name}\n")
    print(f"added concept {args.name!r} ({len(photos)} photos) to {paths.concepts}")
    if args.no_build:
        return 0
    if not _preflight(config):
        return 2
    from gen4gen_assets.definitions import build_definitions
    from gen4gen_assets.runner import materialize_all

    summary = materialize_all(build_definitions(config_file=args.config, data_dir=args.data_dir), _instance(),
                              incremental=True)
    print(f"{len(summary.succeeded)} runs ({summary.steps} steps) succeeded, {len(summary.failed)} failed, "
          f"in {summary.seconds:.1f} s")
    for label, message in summary.failed.items():
        print(f"  failed: {label}: {message}")
    return 1 if summary.failed else 0


def cmd_versions(args) -> int:
    """Dataset versions (DVC, issue 4): git commits of dvc.lock with DVC hashes and image counts per stage."""
    import json

    from .versioning import format_versions, list_versions

    config = load_config(args.config, **_overrides(args))
    versions = list_versions(config, limit=args.limit)
    if args.json:
        print(json.dumps(versions, indent=2, ensure_ascii=False))
    elif not versions:
        print("no dataset version yet: materialise with DVC set up (`make dvc-setup`), then commit dvc.yaml and "
              "dvc.lock to git", file=sys.stderr)
    else:
        print("\n".join(format_versions(versions)))
    return 0


def cmd_dvc(args) -> int:
    """DVC operations (issue 4) under gen4gen's lock, with messages that say what to do."""
    import json

    from . import versioning

    config = load_config(args.config, **_overrides(args))
    try:
        if args.action == "setup":
            versioning.setup_repository(config)
        elif args.action == "commit":
            outcome = versioning.commit_existing(config)
            print(outcome.message() if outcome.status != "committed" else
                  f"committed {len(outcome.stages)} stages; {outcome.lineage_rows} lineage rows labelled")
            return 0 if outcome.status == "committed" else 1
        elif args.action == "push":
            print(versioning.push_data(config) or "pushed")
        elif args.action == "pull":
            print(versioning.pull_data(config, force=args.force) or "pulled")
        elif args.action == "checkout":
            result = versioning.checkout_data(config, force=args.force)
            print(result["output"] or "data folder matches dvc.lock")
            for folder in result["untracked"]:
                print(f"not part of this version (kept): {folder}")
        elif args.action == "status":
            changes = versioning.status(config)
            print(json.dumps(changes, indent=2) if changes else "data and stages are up to date")
            return 1 if changes else 0
    except versioning.DvcError as exc:
        print(f"dvc {args.action}: {exc.message}", file=sys.stderr)
        if exc.advice:
            print(exc.advice, file=sys.stderr)
        return 2
    return 0


def _overrides(args) -> dict:
    return {"data_dir": args.data_dir} if getattr(args, "data_dir", None) else {}


def main(argv: list[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `gen4gen lineage ... | head` ends quietly
    parser = argparse.ArgumentParser(prog="gen4gen", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file (default: $GEN4GEN_CONFIG or ./gen4gen.toml)")
    parser.add_argument("--profile", help="backend profile: embedded or paper (default: $GEN4GEN_PROFILE, the file's "
                                          "`profile`, else embedded)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo-data", help="write the sample concepts (photos shipped in installed packages)")
    demo.add_argument("--data-dir")
    demo.set_defaults(func=cmd_demo_data)
    weights = sub.add_parser("fetch-weights", help="obtain IS-Net from the npm package @imgly/background-removal-data")
    weights.add_argument("--tarball", help="use an already downloaded package .tgz instead of `npm pack`")
    weights.set_defaults(func=cmd_fetch_weights)
    materialize = sub.add_parser("materialize", help="materialise every asset for every concept and composition")
    materialize.add_argument("--data-dir")
    materialize.add_argument("--all", action="store_true",
                             help="rebuild every partition (default: only the missing or out-of-date ones)")
    materialize.set_defaults(func=cmd_materialize)
    add = sub.add_parser("add-concept", help="copy a folder of photos in as a new concept and build what it adds")
    add.add_argument("path", help="folder with the concept's photos")
    add.add_argument("--name", required=True, help="concept name (the folder name under concepts/)")
    add.add_argument("--class", dest="class_name", help="class name, e.g. 'stuffed animal' (default: from the name)")
    add.add_argument("--no-build", action="store_true", help="only copy; let the sensor or `materialize` build it")
    add.add_argument("--data-dir")
    add.set_defaults(func=cmd_add_concept)
    check_weights = sub.add_parser("check-weights", help="list the weights the configured backends need; exit 2 "
                                                         "when any is missing (nothing is downloaded)")
    check_weights.set_defaults(func=cmd_check_weights)
    convert = sub.add_parser("convert-isnet", help="write a PyTorch IS-Net checkpoint (isnet_torch) from the ONNX weights")
    convert.add_argument("--onnx", help="ONNX file (default: segmentation.weights_path)")
    convert.add_argument("--output", help="checkpoint to write (default: segmentation.isnet_checkpoint)")
    convert.set_defaults(func=cmd_convert_isnet)
    lineage = sub.add_parser("lineage", help="audit an artifact: its ancestry down to the source photos, or its descendants")
    lineage.add_argument("target", help="a file path (e.g. data/mycanvas/cat+dog_000.png) or a lineage id")
    lineage.add_argument("--json", action="store_true", help="print JSON instead of a tree")
    lineage.add_argument("--verify", action="store_true", help="re-hash every file in the chain; exit 1 on any difference")
    lineage.add_argument("--descendants", action="store_true", help="list every artifact derived from the target")
    lineage.add_argument("--data-dir")
    lineage.set_defaults(func=cmd_lineage)
    versions = sub.add_parser("versions", help="dataset versions: git commits of dvc.lock, DVC hashes, images per stage")
    versions.add_argument("--json", action="store_true")
    versions.add_argument("--limit", type=int, help="at most this many commits")
    versions.add_argument("--data-dir")
    versions.set_defaults(func=cmd_versions)
    dvc = sub.add_parser("dvc", help="DVC: setup (repository, cache, default remote), commit, push, pull, checkout, "
                                     "status")
    dvc.add_argument("action", choices=["setup", "commit", "push", "pull", "checkout", "status"])
    dvc.add_argument("--force", action="store_true", help="pull/checkout: overwrite uncommitted data")
    dvc.add_argument("--data-dir")
    dvc.set_defaults(func=cmd_dvc)
    args = parser.parse_args(argv)
    if args.profile:
        # Through the environment, so the Dagster resources of an in-process run see it too.
        os.environ["GEN4GEN_PROFILE"] = args.profile
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
