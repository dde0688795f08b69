"""Materialisation metadata a person reads in the UI: counts, timing, backend, warnings, previews."""
from __future__ import annotations

from pathlib import Path

from dagster import MetadataValue

from gen4gen.stages import StageResult
from gen4gen.thumbnails import markdown_thumbnails


def stage_metadata(result: StageResult, backend: str | dict, previews: list[Path] = (),
                   preview_cache: Path | None = None, **extra) -> dict:
    metadata = {
        "seconds": MetadataValue.float(round(result.seconds, 3)),
        "files_written": MetadataValue.int(len(result.written)),
        "backend": MetadataValue.json(backend) if isinstance(backend, dict) else MetadataValue.text(backend),
        "problems": MetadataValue.int(len(result.problems)),
    }
    if result.problems:
        metadata["problem_details"] = MetadataValue.md(
            "\n".join(f"- `{p['path']}`: {p['reason']}" for p in result.problems))
    if result.warnings:
        metadata["warnings"] = MetadataValue.md("\n".join(f"- **{w}**" for w in dict.fromkeys(result.warnings)))
    if previews:
        # Thumbnails cached by file identity: unchanged images (the export's first rows) decode once.
        metadata["preview"] = MetadataValue.md(markdown_thumbnails(list(previews), cache_dir=preview_cache))
    for key, value in extra.items():
        metadata[key] = value
    return metadata


def log_problems(context, result: StageResult) -> None:
    for problem in result.problems:
        context.log.warning(f"{problem['path']}: {problem['reason']}")
    for warning in dict.fromkeys(result.warnings):
        context.log.warning(warning)
