"""Audit speed of the lineage store at scale: one image's full ancestry among 1,000,000 rows.

    .venv/bin/python bench/bench_lineage.py [--rows 1000000] [--audits 50]

Builds a synthetic lineage shaped like the pipeline's (photos -> cut-outs -> per-image layouts
-> composites, masks -> recoloured -> captions -> exported images) directly in DuckDB through
the store's schema, then times `LineageStore.tree` (what `gen4gen lineage` prints) for random
exported images. Target: median <= 20 ms (a plain recursive CTE measured 135-190 ms here).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gen4gen.lineage import SCHEMA, LineageStore  # noqa: E402


def build(store: LineageStore, rows: int) -> int:
    """About ``rows`` artifacts: six per image (layout, composite, mask, recoloured, caption, export)."""
    import duckdb

    images = rows // 6
    photos = max(1000, images // 50)
    store.folder.mkdir(parents=True, exist_ok=True)
    connection = duckdb.connect(str(store.db_path))
    connection.execute(SCHEMA)
    # Photos and their cut-outs; each image uses three cut-outs.
    connection.execute(f"""
        INSERT INTO artifacts SELECT 'p'||i, 'concepts/c'||(i%500)||'/'||i||'.jpg', md5(i::VARCHAR), 'concept_images',
            NULL, 'run0', '1', now(), '{{}}', 'null', NULL, [] FROM range({photos}) t(i);
        INSERT INTO artifacts SELECT 'c'||i, 'build/segmented/'||i||'.png', md5('c'||i), 'segmented_foregrounds',
            NULL, 'run1', '1', now(), '{{}}', 'null', NULL, ['p'||i] FROM range({photos}) t(i);
        INSERT INTO edges SELECT 'c'||i, 'p'||i, 'source_photo' FROM range({photos}) t(i);
        CREATE TEMP TABLE image AS SELECT i,
            'c'||(i*7%{photos}) AS a, 'c'||(i*13%{photos}) AS b, 'c'||(i*17%{photos}) AS c,
            'p'||(i*7%{photos}) AS pa, 'p'||(i*13%{photos}) AS pb, 'p'||(i*17%{photos}) AS pc FROM range({images}) t(i);
    """)
    base = "a, pa, b, pb, c, pc"
    # (prefix, asset, ancestor list, edges as (parent expression, role)) per pipeline step.
    stages = [
        ("L", "layouts", f"[{base}]", [("a", "cutout"), ("b", "cutout"), ("c", "cutout")]),
        ("M", "composed_images", f"['L'||i, {base}]", [("'L'||i", "layout"), ("a", "cutout"), ("b", "cutout"), ("c", "cutout")]),
        ("K", "composed_images", f"['L'||i, {base}]", [("'L'||i", "layout"), ("a", "cutout"), ("b", "cutout"), ("c", "cutout")]),
        ("R", "recoloured_images", f"['M'||i, 'K'||i, 'L'||i, {base}]", [("'M'||i", "composite"), ("'K'||i", "mask")]),
        ("T", "captions", f"['R'||i, 'M'||i, 'K'||i, 'L'||i, {base}]", [("'R'||i", "image"), ("'L'||i", "layout")]),
        ("E", "mycanvas", f"['R'||i, 'T'||i, 'M'||i, 'K'||i, 'L'||i, {base}]", [("'R'||i", "recoloured"), ("'T'||i", "caption")]),
    ]
    for prefix, asset, ancestors, edges in stages:
        connection.execute(f"""
            INSERT INTO artifacts SELECT '{prefix}'||i, 'build/{asset}/'||i, md5('{prefix}'||i), '{asset}', 'comp',
                'run2', '1', now(), '{{}}', 'null', NULL, {ancestors} FROM image;
        """)
        for parent, role in edges:
            connection.execute(f"INSERT OR IGNORE INTO edges SELECT '{prefix}'||i, {parent}, '{role}' FROM image")
    total = connection.execute("SELECT count(*) FROM artifacts").fetchone()[0]
    connection.close()
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--audits", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gen4gen-lineage-bench-") as folder:
        store = LineageStore(Path(folder))
        started = time.perf_counter()
        total = build(store, args.rows)
        print(f"synthetic lineage: {total:,} artifacts, built in {time.perf_counter() - started:.1f} s")
        images = (args.rows // 6)
        timings, sizes = [], []
        with store.reader() as connection:
            for _ in range(args.audits):
                target = f"E{random.randrange(images)}"
                began = time.perf_counter()
                tree = store.tree(connection, target)
                timings.append(time.perf_counter() - began)
                stack, count = [tree], 0
                while stack:
                    node = stack.pop()
                    count += 1
                    stack.extend(node["parents"])
                sizes.append(count)
        print(f"audit of one image's full ancestry (tree of {statistics.median(sizes):.0f} nodes): "
              f"median {statistics.median(timings) * 1000:.1f} ms, "
              f"p90 {sorted(timings)[int(len(timings) * 0.9)] * 1000:.1f} ms over {args.audits} audits (target <= 20 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
