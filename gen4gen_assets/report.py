from dagster import MetadataValue

from gen4gen.evaluation import run_evaluation
from gen4gen.report import write_report

from .factory import stage_asset
from .mycanvas import mycanvas


def _report(run):
    from gen4gen.stages import StageResult

    config, resources = run.config, run.resources
    evaluation = run_evaluation(config, run.registry, config.paths.mycanvas, resources.clip.backend,
                                resources.detector.backend, resources.dino.backend, log=run.context.log.info)
    stats = write_report(config.paths.mycanvas, run.out_dir, config.report, evaluation,
                         thumbnail_cache=config.paths.build / ".cache" / "thumbnails", data_dir=config.paths.data)
    for note in stats["not_computed"]:
        run.context.log.info(f"not computed: {note}")
    return StageResult({"stats": stats, "evaluation": {k: v["summary"] for k, v in evaluation["sets"].items()}},
                       seconds=stats["seconds"], lineage=_records(run))


def _records(run):
    from gen4gen.io import sha256_file
    from gen4gen.lineage import ArtifactRecord

    mycanvas_dir = run.config.paths.mycanvas
    dataset = [(str(p), sha256_file(p), "dataset") for p in
               (mycanvas_dir / "metadata.jsonl", mycanvas_dir / "rejected.jsonl") if p.is_file()]
    return [ArtifactRecord(str(p), sha256_file(p), dataset) for p in sorted(run.out_dir.iterdir()) if p.is_file()]


def _describe(run, result):
    stats = result.manifest["stats"]
    return {
        "accepted": MetadataValue.int(stats["accepted"]),
        "rejected": MetadataValue.int(stats["rejected"]),
        "pass_rate": MetadataValue.float(stats["pass_rate"] or 0.0),
        "rejection_reasons": MetadataValue.json(stats["rejection_reasons"]),
        "concepts_per_image": MetadataValue.json({str(k): v for k, v in stats["concepts_per_image"].items()}),
        "report": MetadataValue.md((run.final_dir / "report.md").read_text(encoding="utf-8").split("![contact")[0]),
        "report_path": MetadataValue.path(str(run.final_dir / "report.md")),
        "metrics": MetadataValue.json(result.manifest["evaluation"]),
        "not_computed": MetadataValue.md("\n".join(f"- {n}" for n in stats["not_computed"]) or "nothing"),
    }


evaluation_report = stage_asset(
    "evaluation_report", build=_report, describe=_describe, backend_name=lambda run, result: "report",
    deps=[mycanvas], kinds={"python", "markdown"}, resources=("clip", "detector", "dino"),
    description="Dataset statistics, a contact sheet and plots, as Markdown and JSON.")
