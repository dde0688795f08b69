"""Commands about versions of the data: `gen4gen versions` and `gen4gen dvc ...`."""
from __future__ import annotations

import sys

from ..config import load_config
from .common import overrides


def cmd_versions(args) -> int:
    """Dataset versions (DVC): git commits of dvc.lock with DVC hashes and image counts per stage."""
    import json

    from ..versioning import format_versions, list_versions

    config = load_config(args.config, **overrides(args))
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
    """DVC operations under gen4gen's lock, with messages that say what to do."""
    import json

    from .. import versioning

    config = load_config(args.config, **overrides(args))
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


def register(sub) -> None:
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
