"""`gen4gen lineage`: audit an artifact's ancestry or descendants; `gen4gen lineage rebuild`."""
from __future__ import annotations

import sys

from ..config import load_config
from .common import overrides

REBUILD = "rebuild"


def cmd_lineage(args) -> int:
    import duckdb

    from ..lineage import LineageDatabaseDamaged

    config = load_config(args.config, **overrides(args))
    data_dir = config.paths.data
    try:
        if args.target == REBUILD:
            return _rebuild(data_dir)
        return _audit(args, data_dir)
    except LineageDatabaseDamaged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, duckdb.Error) as exc:  # a full disk, a file we may not read: the message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _rebuild(data_dir) -> int:
    from ..lineage import rebuild

    result = rebuild(data_dir)
    if result.moved_aside is not None:
        print(f"moved the previous database aside to {result.moved_aside}", file=sys.stderr)
    ingested = result.ingested
    print(f"rebuilt the lineage database from {ingested.journals_ingested} journals on disk "
          f"({ingested.new_rows} rows)", file=sys.stderr)
    return 0


def _audit(args, data_dir) -> int:
    import json

    from ..lineage import discover_journals, format_tree, open_reader
    from ..lineage.database import db_path

    if not db_path(data_dir).exists() and not discover_journals(data_dir):
        print(f"no lineage recorded yet under {data_dir}; materialise some assets first", file=sys.stderr)
        return 2
    with open_reader(data_dir) as reader:
        artifact = reader.resolve(args.target)
        if artifact is None:
            print(f"{args.target}: no lineage row for this id or path (under {data_dir})", file=sys.stderr)
            return 2
        if args.descendants:
            rows = reader.descendants(artifact["id"])
            if args.json:
                print(json.dumps({"artifact": artifact, "descendants": rows}, indent=2, ensure_ascii=False))
            else:
                print(f"{len(rows)} artifacts derived from {artifact['path']} ({artifact['id']}):")
                for row in rows:
                    print(f"  {row['asset_key']}[{row['partition_key'] or ''}] {row['path']}  id {row['id']}")
            return 0
        tree = reader.tree(artifact["id"])
        nodes, _ = reader.ancestry(artifact["id"])
    if args.json:
        print(json.dumps(tree, indent=2, ensure_ascii=False))
    else:
        print("\n".join(format_tree(tree)))
    if args.verify:
        problems = reader.verify(nodes)
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"verified {len(nodes)} files: {len(problems)} missing or changed", file=sys.stderr)
        return 1 if problems else 0
    return 0


def register(sub) -> None:
    lineage = sub.add_parser(
        "lineage", help="audit an artifact: its ancestry down to the source photos, or its descendants; "
                        "`gen4gen lineage rebuild` rebuilds the database from the journals")
    lineage.add_argument("target", help="a file path (e.g. data/mycanvas/cat+dog_000.png) or a lineage id; or "
                                        f"`{REBUILD}` to move the database aside and rebuild it from the journals "
                                        "on disk (a file named so: ./rebuild)")
    lineage.add_argument("--json", action="store_true", help="print JSON instead of a tree")
    lineage.add_argument("--verify", action="store_true", help="re-hash every file in the chain; exit 1 on any difference")
    lineage.add_argument("--descendants", action="store_true", help="list every artifact derived from the target")
    lineage.add_argument("--data-dir")
    lineage.set_defaults(func=cmd_lineage)
