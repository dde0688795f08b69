"""Publishing costs what changed: add concepts one by one and time the dataset's publish each time.

    .venv/bin/python bench/bench_publish.py [--base 20] [--add 10] [--images 3] [--canvas 256]
                                            [--rounds 1] [--max-compositions 20] [--per-new 2] [--json out.json]

Builds ``--base`` concepts (one photo each: the DreamBooth subjects of ../shared/data/dreambooth,
then ../shared/data/gen4gen-samples/concepts, then synthetic objects drawn like the tests' when
those run out) through Dagster in process, then adds ``--add`` concepts one at a time and runs
``materialize_all`` after each. The publish is the ``publish_dataset`` run (mycanvas +
evaluation_report); its wall time runs from ``materialize_all``'s "publishing the dataset" log line
to its "ok    mycanvas + evaluation_report" line (the seconds in that line are rounded to 0.1 s),
and its steps' times come from the run's STEP_START/STEP_SUCCESS events. After each addition it
prints the exported images, the publish time and the lineage database's rows (artifacts + edges +
closure) per exported image, with the listing edges of the whole-dataset files (metadata.jsonl,
rejected.jsonl, the catalogue) apart.

Growth per concept: the first catalogue proposes ``--max-compositions`` compositions (every concept
covered first); after that, existing compositions are kept and each newcomer brings
``[proposal] per_new_concept`` (``--per-new``, default 2) compositions that include it
(gen4gen/concepts.py, extend_compositions), i.e. ``--per-new x --images`` new images per concept.

Target: publishing after the last (30th) concept takes <= 1.3x the publish after the first
added (21st), and lineage rows per image stay flat. DVC is off: this measures the pipeline
(bench/bench_dvc.py measures DVC).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data"
DREAMBOOTH = SHARED / "dreambooth"
SAMPLES = SHARED / "gen4gen-samples" / "concepts"
CLASS_MAP = "prompts_and_classes.txt"
PUBLISH_LABEL = "mycanvas + evaluation_report"
TARGET = 1.3


def concept_sources(count: int) -> list[tuple[str, str, Path | None]]:
    """``count`` concepts as (folder name, class name, photo or None for a synthetic one), in adding order."""
    from gen4gen.concepts import read_class_map

    sources: list[tuple[str, str, Path | None]] = []
    if DREAMBOOTH.is_dir():
        classes = read_class_map(DREAMBOOTH / CLASS_MAP) if (DREAMBOOTH / CLASS_MAP).is_file() else {}
        for subject in sorted(p for p in DREAMBOOTH.iterdir() if p.is_dir()):
            photos = sorted(p for p in subject.iterdir() if p.is_file())
            if photos:
                sources.append((subject.name, classes.get(subject.name, subject.name.rstrip("0123456789")), photos[0]))
    if SAMPLES.is_dir():  # cat and dog: DreamBooth has folders of those names, so these get a prefix
        for subject in sorted(p for p in SAMPLES.iterdir() if p.is_dir()):
            photos = sorted(p for p in subject.iterdir() if p.is_file())
            if photos:
                sources.append((f"sample_{subject.name}", subject.name, photos[0]))
    shapes = ["ellipse", "rect", "triangle"]
    n = 0
    while len(sources) < count:
        sources.append((f"synthetic_{shapes[n % 3]}_{n + 1}", "toy", None))
        n += 1
    return sources[:count]


def place_concept(concepts: Path, name: str, photo: Path | None, index: int) -> None:
    folder = concepts / name
    folder.mkdir(parents=True)
    if photo is not None:
        shutil.copy(photo, folder)
        return
    from tests.conftest import object_photo  # the tests' synthetic photos (no downloads)

    shape = name.split("_")[1]
    colour = ((index * 67) % 200 + 40, (index * 131) % 200 + 40, (index * 29) % 200 + 40)
    object_photo(shape, colour, seed=index).save(folder / "photo.png")


def publish_steps(instance) -> dict[str, float]:
    """Seconds of each step of the latest ``publish_dataset`` run (STEP_START to STEP_SUCCESS)."""
    from dagster import DagsterEventType, RunsFilter

    runs = instance.get_runs(filters=RunsFilter(job_name="publish_dataset"), limit=1)
    if not runs:
        return {}
    starts, seconds = {}, {}
    for record in instance.get_records_for_run(runs[0].run_id, limit=100_000).records:
        event = record.event_log_entry
        if event.dagster_event is None or event.step_key is None:
            continue
        if event.dagster_event.event_type == DagsterEventType.STEP_START:
            starts[event.step_key] = event.timestamp
        elif event.dagster_event.event_type == DagsterEventType.STEP_SUCCESS and event.step_key in starts:
            seconds[event.step_key] = round(event.timestamp - starts[event.step_key], 3)
    return seconds


def lineage_figures(data_dir: Path) -> dict:
    """Row counts of the lineage tables (after ingesting what is pending), and the file's size."""
    from gen4gen.lineage import AGGREGATE_ROLES, open_reader
    from gen4gen.lineage.database import db_path, placeholders

    with open_reader(data_dir) as reader:
        counts = reader.counts()
        counts["paths"] = reader.connection.execute("SELECT count(DISTINCT path) FROM artifacts").fetchone()[0]
        by_asset = reader.connection.execute(
            "SELECT a.asset_key, count(*) FROM edges e JOIN artifacts a ON a.id = e.child_id "
            "GROUP BY a.asset_key").fetchall()
        counts["edges_by_asset"] = {str(k): v for k, v in sorted(by_asset, key=lambda r: str(r[0]))}
        # Listing edges of the whole-dataset files (metadata.jsonl, rejected.jsonl, the catalogue):
        # kept for each file's newest version only, so they grow with the dataset, not per publish.
        counts["aggregate_edges"] = reader.connection.execute(
            "SELECT count(*) FROM edges e JOIN artifacts a ON a.id = e.child_id WHERE a.partition_key IS NULL "
            f"AND e.role IN {placeholders(len(AGGREGATE_ROLES))}", sorted(AGGREGATE_ROLES)).fetchone()[0]
        rows_by_asset = reader.connection.execute(
            "SELECT asset_key, count(*) FROM artifacts GROUP BY asset_key").fetchall()
        counts["artifacts_by_asset"] = {str(k): v for k, v in sorted(rows_by_asset, key=lambda r: str(r[0]))}
    path = db_path(data_dir)
    wal = path.with_name(path.name + ".wal")
    counts["db_bytes"] = path.stat().st_size + (wal.stat().st_size if wal.is_file() else 0)
    counts["rows"] = counts["artifacts"] + counts["edges"] + counts["closure"]
    return counts


def exported_images(mycanvas: Path) -> int:
    metadata = mycanvas / "metadata.jsonl"
    return sum(1 for line in metadata.read_text(encoding="utf-8").splitlines() if line.strip()) \
        if metadata.is_file() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=20, help="concepts built first")
    parser.add_argument("--add", type=int, default=10, help="concepts then added one at a time (each timed)")
    parser.add_argument("--images", type=int, default=3, help="[layout] images_per_composition")
    parser.add_argument("--canvas", type=int, default=256, help="[composition] canvas_size")
    parser.add_argument("--rounds", type=int, default=1, help="[segmentation] rounds (IS-Net)")
    parser.add_argument("--max-compositions", type=int, default=None,
                        help="[proposal] max_compositions: the first catalogue's compositions (default: --base)")
    parser.add_argument("--per-new", type=int, default=2, help="[proposal] per_new_concept: compositions per newcomer")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is printed)")
    args = parser.parse_args()
    if args.base < 2 or args.add < 1:
        parser.error("--base must be >= 2 and --add >= 1")
    max_compositions = args.max_compositions or args.base

    from dagster import DagsterInstance

    from gen4gen_assets.definitions import build_definitions
    from gen4gen_assets.runner import materialize_all

    total = args.base + args.add
    sources = concept_sources(total)
    kinds = {"dreambooth": sum(1 for _, _, p in sources if p is not None and DREAMBOOTH in p.parents),
             "gen4gen-samples": sum(1 for _, _, p in sources if p is not None and SAMPLES in p.parents),
             "synthetic": sum(1 for _, _, p in sources if p is None)}
    print(f"concepts: {total} ({', '.join(f'{v} {k}' for k, v in kinds.items() if v)})"
          + ("" if SHARED.is_dir() else f"; {SHARED} is absent, so all are synthetic"))
    if kinds["synthetic"]:
        print(f"  synthetic (tests/conftest.py's object_photo): "
              f"{', '.join(n for n, _, p in sources if p is None)}")
    print(f"settings: canvas {args.canvas}, {args.images} images per composition, segmentation rounds {args.rounds}, "
          f"first proposal {max_compositions} compositions, +{args.per_new} per new concept "
          f"(+{args.per_new * args.images} images), DVC off")

    work = Path(tempfile.mkdtemp(prefix="gen4gen-publish-"))
    figures: dict = {"settings": {**{k: v for k, v in vars(args).items() if k != "json"},
                                  "max_compositions": max_compositions, "json": str(args.json) if args.json else None},
                     "concepts": kinds, "steps": []}
    wall_start = time.perf_counter()
    try:
        data = work / "data"
        concepts = data / "concepts"
        concepts.mkdir(parents=True)
        (concepts / CLASS_MAP).write_text(
            "subject_name,class\n" + "".join(f"{name},{cls}\n" for name, cls, _ in sources), encoding="utf-8")
        for index, (name, _, photo) in enumerate(sources[:args.base]):
            place_concept(concepts, name, photo, index)
        config_file = work / "gen4gen.toml"
        config_file.write_text(
            f'data_dir = "{data.as_posix()}"\nseed = 7\n[dvc]\nenabled = false\n'
            f"[segmentation]\nrounds = {args.rounds}\n"
            f"[proposal]\nmax_compositions = {max_compositions}\nper_new_concept = {args.per_new}\n"
            f"[layout]\nimages_per_composition = {args.images}\n"
            f"[composition]\ncanvas_size = {args.canvas}\n", encoding="utf-8")
        defs = build_definitions(config_file=str(config_file))
        paths = defs.resources["settings"].paths
        instance = DagsterInstance.ephemeral()

        def build() -> tuple[object, float | None, float]:
            """``materialize_all``; the publish's wall time is from the runner's "publishing the dataset"
            line to its "ok    mycanvas + evaluation_report (X s)" line (X itself has 0.1 s steps)."""
            logged: list[tuple[float, str]] = []
            began = time.perf_counter()
            summary = materialize_all(defs, instance, log=lambda line: logged.append((time.perf_counter(), line)),
                                      incremental=True)
            seconds = time.perf_counter() - began
            if summary.failed:
                raise SystemExit("runs failed: " + "; ".join(f"{k}: {v}" for k, v in summary.failed.items()))
            publish, started = None, None
            for stamp, line in logged:
                if line.strip() == "publishing the dataset":
                    started = stamp
                elif started is not None and re.match(rf"\s*ok\s+{re.escape(PUBLISH_LABEL)} \(", line):
                    publish = stamp - started
            return summary, publish, seconds

        summary, publish, seconds = build()
        base_lineage = lineage_figures(paths.data)
        print(f"built {args.base} concepts in {seconds:.1f} s ({len(summary.succeeded)} runs); "
              f"{exported_images(paths.mycanvas)} images exported; publish {publish:.2f} s; "
              f"lineage {base_lineage['rows']:,} rows")
        figures["base"] = {"seconds": round(seconds, 2), "publish_s": publish,
                           "images": exported_images(paths.mycanvas), "lineage": base_lineage}

        # publish s: the publish_dataset run; mycanvas, report: its two steps; total s: the whole
        # materialize_all; listed: listing edges of whole-dataset files (metadata.jsonl, rejected.jsonl,
        # the catalogue), which every new version of those files records again for every image;
        # +rows/+img: rows this concept added per image it added.
        print(f"{'concept':>7} {'images':>6} {'publish s':>9} {'mycanvas':>8} {'report':>7} {'total s':>7} "
              f"{'rows':>8} {'rows/img':>8} {'rows/file':>9} {'+rows/+img':>10} {'artifacts':>9} {'edges':>7} "
              f"{'listed':>6} {'closure':>7} {'db bytes':>10}")
        previous, previous_images = base_lineage, figures["base"]["images"]
        for number, (name, _, photo) in enumerate(sources[args.base:], start=args.base + 1):
            place_concept(concepts, name, photo, number - 1)
            summary, publish, seconds = build()
            if publish is None:
                raise SystemExit(f"concept {number} ({name}): the dataset was not published ({summary.skipped})")
            steps = publish_steps(instance)
            lineage = lineage_figures(paths.data)
            images = exported_images(paths.mycanvas)
            step = {"concept": number, "name": name, "images": images, "publish_s": publish,
                    "publish_steps_s": steps, "materialize_s": round(seconds, 2), "runs": len(summary.succeeded),
                    "rows": lineage["rows"], "rows_per_image": lineage["rows"] / max(images, 1),
                    "rows_per_file": lineage["rows"] / max(lineage["paths"], 1),
                    "rows_per_image_without_listings": (lineage["rows"] - lineage["aggregate_edges"]) / max(images, 1),
                    "rows_added": {t: lineage[t] - previous[t] for t in ("artifacts", "edges", "aggregate_edges",
                                                                         "closure")},
                    "rows_added_per_image_added": ((lineage["rows"] - previous["rows"])
                                                   / max(images - previous_images, 1)),
                    "lineage": lineage}
            figures["steps"].append(step)
            previous, previous_images = lineage, images
            print(f"{number:>7} {images:>6} {publish:>9.2f} {steps.get('mycanvas', float('nan')):>8.2f} "
                  f"{steps.get('evaluation_report', float('nan')):>7.2f} {seconds:>7.1f} {lineage['rows']:>8,} "
                  f"{step['rows_per_image']:>8.1f} {step['rows_per_file']:>9.2f} "
                  f"{step['rows_added_per_image_added']:>10.1f} {lineage['artifacts']:>9,} {lineage['edges']:>7,} "
                  f"{lineage['aggregate_edges']:>6,} {lineage['closure']:>7,} {lineage['db_bytes']:>10,}", flush=True)

        done = figures["steps"]
        first, last = done[0], done[-1]
        ratio = last["publish_s"] / first["publish_s"]
        head = statistics.median(s["publish_s"] for s in done[:2])
        tail = statistics.median(s["publish_s"] for s in done[-2:])
        per_image = [s["rows_per_image"] for s in done]
        flat = max(per_image) / min(per_image)
        added = {t: [s["rows_added"][t] for s in done] for t in ("artifacts", "edges", "aggregate_edges", "closure")}
        print("lineage rows added per concept: " + "; ".join(
            f"{t} {min(v):,}..{max(v):,}" for t, v in added.items()))
        print(f"images: {first['images']} after concept {first['concept']}, {last['images']} after concept "
              f"{last['concept']} ({last['images'] / max(first['images'], 1):.2f}x)")
        print(f"publish after concept {last['concept']} / after concept {first['concept']}: "
              f"{last['publish_s']:.2f} / {first['publish_s']:.2f} s = {ratio:.2f}x (target <= {TARGET}x): "
              f"{'met' if ratio <= TARGET else 'NOT met'}")
        print(f"median of the last 2 / median of the first 2: {tail:.2f} / {head:.2f} s = {tail / head:.2f}x "
              f"(target <= {TARGET}x): {'met' if tail / head <= TARGET else 'NOT met'}")
        print(f"lineage rows per exported image: {min(per_image):.1f} .. {max(per_image):.1f} "
              f"(max/min {flat:.2f}; first {per_image[0]:.1f}, last {per_image[-1]:.1f}): "
              f"{'flat' if flat <= 1.1 else 'NOT flat'} (flat: max/min <= 1.1)")
        without = [s["rows_per_image_without_listings"] for s in done]
        print(f"  without the listing edges: {min(without):.1f} .. {max(without):.1f} "
              f"(max/min {max(without) / min(without):.2f}); listing edges "
              f"{first['lineage']['aggregate_edges']:,} -> {last['lineage']['aggregate_edges']:,} "
              f"(+{min(added['aggregate_edges']):,}..{max(added['aggregate_edges']):,} per publish)")
        step_ratios = {}
        for key in sorted(set(first["publish_steps_s"]) & set(last["publish_steps_s"])):
            early = statistics.median(s["publish_steps_s"].get(key, 0.0) for s in done[:2])
            late = statistics.median(s["publish_steps_s"].get(key, 0.0) for s in done[-2:])
            step_ratios[key] = late / early if early else None
            print(f"  step {key}: {early:.2f} -> {late:.2f} s (median of 2: {step_ratios[key] or 0:.2f}x)")
        wall = time.perf_counter() - wall_start
        print(f"wall time {wall:.0f} s")
        figures["result"] = {"publish_ratio": ratio, "publish_ratio_median2": tail / head, "target": TARGET,
                             "images_ratio": last["images"] / max(first["images"], 1),
                             "step_ratios_median2": step_ratios,
                             "rows_per_image_max_over_min": flat,
                             "rows_per_image_without_listings_max_over_min": max(without) / min(without),
                             "wall_s": round(wall, 1)}
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            print(f"figures written to {args.json}")
    finally:
        if args.keep:
            print(f"scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
