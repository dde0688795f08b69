from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from gen4gen.report import write_report
from resources import PipelineSettings

from .mycanvas import mycanvas


@asset(group_name="gen4gen", deps=[mycanvas], kinds={"python", "markdown"})
def evaluation_report(context: AssetExecutionContext, settings: PipelineSettings) -> MaterializeResult:
    """Dataset statistics, a contact sheet and plots, as Markdown and JSON."""
    config = settings.config
    out_dir = config.paths.reports
    stats = write_report(config.paths.mycanvas, out_dir, config.report)
    for note in stats["not_computed"]:
        context.log.info(f"not computed: {note}")
    return MaterializeResult(metadata={
        "accepted": MetadataValue.int(stats["accepted"]),
        "rejected": MetadataValue.int(stats["rejected"]),
        "pass_rate": MetadataValue.float(stats["pass_rate"] or 0.0),
        "rejection_reasons": MetadataValue.json(stats["rejection_reasons"]),
        "concepts_per_image": MetadataValue.json({str(k): v for k, v in stats["concepts_per_image"].items()}),
        "report": MetadataValue.md((out_dir / "report.md").read_text(encoding="utf-8").split("![contact")[0]),
        "report_path": MetadataValue.path(str(out_dir / "report.md")),
        "seconds": MetadataValue.float(stats["seconds"]),
    })
