from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from gen4gen.report import write_report
from gen4gen.io import sha256_file
from gen4gen.lineage import ArtifactRecord
from resources import ClipResource, DetectorResource, DinoResource, DvcResource, LineageResource, PipelineSettings

from .mycanvas import mycanvas


@asset(group_name="gen4gen", deps=[mycanvas], kinds={"python", "markdown"}, code_version="1")
def evaluation_report(context: AssetExecutionContext, settings: PipelineSettings,
                      lineage: LineageResource, clip: ClipResource, detector: DetectorResource,
                      dino: DinoResource, dvc: DvcResource) -> MaterializeResult:
    """Dataset statistics, a contact sheet and plots, as Markdown and JSON."""
    config = settings.config
    out_dir = config.paths.reports
    # ---- metrics hook (issue 7): CP-CLIP, TI-CLIP, CLIP-T, CLIP-I, DINO where backends are configured
    from gen4gen.concepts import load_registry
    from gen4gen.evaluation import run_evaluation

    evaluation = run_evaluation(config, load_registry(config.paths.registry), config.paths.mycanvas, clip.backend,
                                detector.backend, dino.backend, log=context.log.info)
    stats = write_report(config.paths.mycanvas, out_dir, config.report, evaluation)
    # ---- end of metrics hook
    for note in stats["not_computed"]:
        context.log.info(f"not computed: {note}")
    dataset = [(str(p), sha256_file(p), "dataset") for p in
               (config.paths.mycanvas / "metadata.jsonl", config.paths.mycanvas / "rejected.jsonl") if p.is_file()]
    records = [ArtifactRecord(str(p), sha256_file(p), dataset) for p in sorted(out_dir.iterdir()) if p.is_file()]
    lineage_metadata = lineage.record(context, records, params=config.report.model_dump())
    return MaterializeResult(metadata={
        "accepted": MetadataValue.int(stats["accepted"]),
        "rejected": MetadataValue.int(stats["rejected"]),
        "pass_rate": MetadataValue.float(stats["pass_rate"] or 0.0),
        "rejection_reasons": MetadataValue.json(stats["rejection_reasons"]),
        "concepts_per_image": MetadataValue.json({str(k): v for k, v in stats["concepts_per_image"].items()}),
        "report": MetadataValue.md((out_dir / "report.md").read_text(encoding="utf-8").split("![contact")[0]),
        "report_path": MetadataValue.path(str(out_dir / "report.md")),
        "seconds": MetadataValue.float(stats["seconds"]),
        "metrics": MetadataValue.json({k: v["summary"] for k, v in evaluation["sets"].items()}),  # issue 7
        "not_computed": MetadataValue.md("\n".join(f"- {n}" for n in stats["not_computed"]) or "nothing"),
        **lineage_metadata,
        **dvc.commit(context, records),  # DVC version (issue 4)
    })
