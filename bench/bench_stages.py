"""Time each pipeline stage on DreamBooth subjects; print images/s per stage and peak memory.

    .venv/bin/python bench/bench_stages.py [--concepts 6] [--photos 2] [--rounds 3]

Reads ../shared/data/dreambooth (never copied into the repository). Runs the stage
functions directly, as the assets do, on a temporary data folder. Targets (2-core CPU):
composition + recolouring + captions under 0.3 s per 1024x1024 image.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gen4gen.concepts import build_registry, concept_lookup, load_registry  # noqa: E402
from gen4gen.config import PROJECT_ROOT  # noqa: E402
from gen4gen.lineage import LineageStore  # noqa: E402
from gen4gen.io import atomic_write_json  # noqa: E402
from gen4gen.scenes import discover_scene_bank  # noqa: E402
from gen4gen.stages import (caption_composition, compose_composition, export_mycanvas, plan_composition,  # noqa: E402
                            recolour_composition, segment_concept)
from resources.layout import LayoutPlannerResource  # noqa: E402
from resources.lineage import INGEST_EVERY  # noqa: E402
from resources.settings import PipelineSettings  # noqa: E402

DREAMBOOTH = ROOT.parent / "shared" / "data" / "dreambooth"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", type=int, default=6)
    parser.add_argument("--photos", type=int, default=2, help="photos per concept")
    parser.add_argument("--rounds", type=int, default=3, help="segmentation rounds (paper: 3)")
    parser.add_argument("--compositions", type=int, default=8)
    parser.add_argument("--images", type=int, default=6, help="images per composition")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not DREAMBOOTH.is_dir():
        print(f"{DREAMBOOTH} is absent: the benchmark needs ../shared/data/dreambooth", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="gen4gen-bench-"))
    try:
        concepts_dir = work / "data" / "concepts"
        subjects = sorted(p for p in DREAMBOOTH.iterdir() if p.is_dir())[:args.concepts]
        for subject in subjects:
            (concepts_dir / subject.name).mkdir(parents=True)
            for photo in sorted(subject.iterdir())[:args.photos]:
                shutil.copy(photo, concepts_dir / subject.name / photo.name)
        shutil.copy(DREAMBOOTH / "prompts_and_classes.txt", concepts_dir / "prompts_and_classes.txt")
        config_file = work / "gen4gen.toml"
        config_file.write_text(
            f'data_dir = "{(work / "data").as_posix()}"\n[segmentation]\nrounds = {args.rounds}\n'
            f"[proposal]\nmax_compositions = {args.compositions}\n"
            f"[layout]\nimages_per_composition = {args.images}\n", encoding="utf-8")
        settings = PipelineSettings(config_file=str(config_file))
        config = settings.config
        paths = config.paths
        timings: dict[str, dict] = {}

        start = time.perf_counter()
        registry = build_registry(config, load_registry(paths.registry))
        atomic_write_json(paths.registry, registry)
        timings["catalogue"] = {"seconds": time.perf_counter() - start, "items": sum(len(c["photos"]) for c in registry["concepts"])}

        from gen4gen.segmentation import IsNetOnnxSegmenter

        segmenter = IsNetOnnxSegmenter(config.segmentation, PROJECT_ROOT)
        store = LineageStore(paths.data)
        lineage_seconds: dict[str, float] = {}

        def record(stage: str, partition: str, result) -> None:
            """As LineageResource.record does it: journal, ingesting in batches."""
            began = time.perf_counter()
            store.commit(result.lineage, ingest=store.pending_journals() + 1 >= INGEST_EVERY, asset_key=stage,
                         partition_key=partition, run_id="bench", code_version="1", params={}, backend=None)
            lineage_seconds[stage] = lineage_seconds.get(stage, 0.0) + time.perf_counter() - began

        photos, seconds = 0, 0.0
        for concept in concept_lookup(registry).values():
            began = time.perf_counter()
            result = segment_concept(concept, segmenter, paths.segmented(concept.key), config)
            seconds += time.perf_counter() - began
            photos += len(result.manifest["photos"])
            record("segmentation", concept.key, result)
        timings["segmentation"] = {"seconds": seconds, "items": photos, "backend": segmenter.name}

        from gen4gen.captions import LayoutRetellingCaptioner
        from gen4gen.recolour import SceneBankRepainter

        planner = LayoutPlannerResource(settings=settings).backend
        scenes = discover_scene_bank(paths.backgrounds, config.input.image_extensions)
        repainter = SceneBankRepainter(scenes, config.recolour)
        captioner = LayoutRetellingCaptioner()
        compositions = [c["key"] for c in registry["compositions"]]
        stage_seconds = {"layouts": 0.0, "composition": 0.0, "recolouring": 0.0, "captions": 0.0}
        for key in compositions:
            for stage, run in (("layouts", lambda: plan_composition(key, registry, config, planner, scenes)),
                               ("composition", lambda: compose_composition(key, config)),
                               ("recolouring", lambda: recolour_composition(key, config, repainter)),
                               ("captions", lambda: caption_composition(key, registry, config, captioner))):
                began = time.perf_counter()
                result = run()
                stage_seconds[stage] += time.perf_counter() - began
                record(stage, key, result)
        images = len(compositions) * args.images
        for stage, seconds in stage_seconds.items():
            timings[stage] = {"seconds": seconds, "items": images}
        start = time.perf_counter()
        result = export_mycanvas(registry, config)
        exported = result.manifest
        timings["mycanvas"] = {"seconds": time.perf_counter() - start, "items": images}
        record("mycanvas", "", result)

        per_image = (stage_seconds["composition"] + stage_seconds["recolouring"] + stage_seconds["captions"]) / images
        print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}")
        print(f"{len(subjects)} DreamBooth concepts x {args.photos} photos, {len(compositions)} compositions x "
              f"{args.images} images at {config.composition.canvas_size}px; accepted {exported['accepted']}, "
              f"rejected {exported['rejected']}")
        rejected_rows = [json.loads(line) for line in (paths.mycanvas / "rejected.jsonl").read_text().splitlines() if line]
        codes = Counter(code for row in rejected_rows for code in set(row["reason_codes"]))
        print("rejection reasons (images):", ", ".join(f"{c} {n}" for c, n in codes.most_common()) or "none")
        for finding in exported.get("photo_findings", []):
            print(f"  photo to replace: {finding['photo']} ({finding['code']}, {finding['value']})")
        print(f"{'stage':<14}{'items':>7}{'seconds':>10}{'items/s':>10}")
        for stage, row in timings.items():
            rate = row["items"] / row["seconds"] if row["seconds"] else float("inf")
            row["items_per_second"] = round(rate, 3)
            print(f"{stage:<14}{row['items']:>7}{row['seconds']:>10.2f}{rate:>10.2f}")
        print(f"composition + recolouring + captions: {per_image:.3f} s per image (target <= 0.3)")
        began = time.perf_counter()
        store.ingest_pending()  # what the next reader would do; counted against the whole run
        final_ingest = time.perf_counter() - began
        total_stage = sum(row["seconds"] for row in timings.values())
        total_lineage = sum(lineage_seconds.values()) + final_ingest
        print(f"lineage recording, whole run: {total_lineage:.2f} s = {total_lineage / total_stage * 100:.1f}% "
              f"of {total_stage:.1f} s of stage time (target <= 5%)")
        print("lineage recording (journal, batched DuckDB ingestion) as a share of each stage's time:")
        for stage, seconds in lineage_seconds.items():
            share = seconds / timings[stage]["seconds"] * 100 if timings[stage]["seconds"] else float("inf")
            timings[stage]["lineage_seconds"] = round(seconds, 4)
            print(f"  {stage:<14}{seconds:>8.3f} s  {share:>6.1f}%")
        print(f"peak RSS: {peak_rss_mib():.0f} MiB")
        if args.json:
            Path(args.json).write_text(json.dumps({"stages": timings, "compose_recolour_caption_s_per_image": per_image,
                                                   "peak_rss_mib": peak_rss_mib()}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
