"""Audit speed of the lineage store at scale: one image's full ancestry among 1,000,000 rows.

    .venv/bin/python bench/bench_lineage.py [--rows 1000000] [--audits 50]

Builds a synthetic lineage shaped like the pipeline's (photos -> cut-outs -> per-image layouts
-> composites, masks -> recoloured -> captions -> exported images, plus one metadata.jsonl that
lists every export) directly in DuckDB through the store's schema, including the ancestor
closure that ingestion maintains, then times `LineageReader.tree` (what `gen4gen lineage`
prints) for random exported images, and reports the database's rows per image.
Target: median <= 20 ms (a plain recursive CTE measured 135-190 ms here).
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

from gen4gen.lineage import SCHEMA, open_reader  # noqa: E402
from gen4gen.lineage.database import SCHEMA_VERSION, db_path  # noqa: E402

# (prefix, asset, direct parents as (expression, role)) per pipeline step; ancestors follow.
STAGES = [
    ("L", "layouts", [("a", "cutout"), ("b", "cutout"), ("c", "cutout")]),
    ("M", "composed_images", [("'L'||i", "layout"), ("a", "cutout"), ("b", "cutout"), ("c", "cutout")]),
    ("K", "composed_images", [("'L'||i", "layout"), ("a", "cutout"), ("b", "cutout"), ("c", "cutout")]),
    ("R", "recoloured_images", [("'M'||i", "composite"), ("'K'||i", "mask")]),
    ("T", "captions", [("'R'||i", "image"), ("'L'||i", "layout")]),
    ("E", "mycanvas", [("'R'||i", "recoloured"), ("'T'||i", "caption")]),
]
CUTOUTS = "a, pa, b, pb, c, pc"
CLOSURES = {"L": CUTOUTS, "M": f"'L'||i, {CUTOUTS}", "K": f"'L'||i, {CUTOUTS}",
            "R": f"'M'||i, 'K'||i, 'L'||i, {CUTOUTS}", "T": f"'R'||i, 'M'||i, 'K'||i, 'L'||i, {CUTOUTS}",
            "E": f"'R'||i, 'T'||i, 'M'||i, 'K'||i, 'L'||i, {CUTOUTS}"}


def build(data_dir: Path, rows: int) -> int:
    """About ``rows`` artifacts: six per image (layout, composite, mask, recoloured, caption, export).

    Fixed SQL text only: the sizes are bound parameters.
    """
    import duckdb

    images = rows // 6
    photos = max(1000, images // 50)
    path = db_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = duckdb.connect(str(path))
    connection.execute("SET enable_progress_bar = false")
    connection.execute(SCHEMA)
    connection.execute("INSERT INTO settings VALUES ('schema_version', ?)", [SCHEMA_VERSION])
    columns = ("SELECT {id}, {id}, {path}, md5({id}), ?, 'comp', 'run', '1', now(), '{{}}', 'null', NULL, {seq} "
               "FROM {source}")
    connection.execute(columns.format(id="'p'||i", path="'concepts/c'||(i%500)||'/'||i||'.jpg'", seq="i",
                                      source="range(?) t(i)").replace("SELECT", "INSERT INTO artifacts SELECT", 1),
                       ["concept_images", photos])
    connection.execute(columns.format(id="'c'||i", path="'build/segmented/'||i||'.png'", seq="i",
                                      source="range(?) t(i)").replace("SELECT", "INSERT INTO artifacts SELECT", 1),
                       ["segmented_foregrounds", photos])
    connection.execute("INSERT INTO edges SELECT 'c'||i, 'p'||i, 'source_photo' FROM range(?) t(i)", [photos])
    connection.execute("INSERT INTO closure SELECT 'c'||i, 'p'||i FROM range(?) t(i)", [photos])
    connection.execute("CREATE TEMP TABLE image AS SELECT i, 'c'||(i*7%$p) AS a, 'c'||(i*13%$p) AS b, "
                       "'c'||(i*17%$p) AS c, 'p'||(i*7%$p) AS pa, 'p'||(i*13%$p) AS pb, 'p'||(i*17%$p) AS pc "
                       "FROM range($n) t(i)", {"p": photos, "n": images})
    for prefix, asset, edges in STAGES:
        child = f"'{prefix}'||i"
        connection.execute(columns.format(id=child, path=f"'build/{asset}/{prefix}'||i", seq="i",
                                          source="image").replace("SELECT", "INSERT INTO artifacts SELECT", 1),
                           [asset])
        for parent, role in edges:
            connection.execute(f"INSERT OR IGNORE INTO edges SELECT {child}, {parent}, ? FROM image", [role])
        connection.execute(f"INSERT INTO closure SELECT DISTINCT {child}, unnest([{CLOSURES[prefix]}]) FROM image")
    # One listing of every export: its edges are kept, its closure is empty (an aggregate).
    connection.execute("INSERT INTO artifacts VALUES ('metadata', 'metadata', 'mycanvas/metadata.jsonl', 'x', "
                       "'mycanvas', NULL, 'run', '1', now(), '{}', 'null', NULL, 0)")
    connection.execute("INSERT INTO edges SELECT 'metadata', 'E'||i, 'listed' FROM image")
    total = connection.execute("SELECT (SELECT count(*) FROM artifacts), (SELECT count(*) FROM edges), "
                               "(SELECT count(*) FROM closure)").fetchone()
    connection.close()
    return total, images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--audits", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gen4gen-lineage-bench-") as folder:
        data_dir = Path(folder)
        started = time.perf_counter()
        (artifacts, edges, closure), images = build(data_dir, args.rows)
        print(f"synthetic lineage: {artifacts:,} artifacts, {edges:,} edges, {closure:,} closure rows, built in "
              f"{time.perf_counter() - started:.1f} s")
        print(f"rows per exported image (artifacts + edges + closure): {(artifacts + edges + closure) / images:.1f}")
        timings, sizes = [], []
        with open_reader(data_dir, ingest_first=False) as reader:
            for _ in range(args.audits):
                target = f"E{random.randrange(images)}"
                began = time.perf_counter()
                tree = reader.tree(target)
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
