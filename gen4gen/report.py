"""Dataset statistics of a MyCanvas export: JSON, Markdown, a contact sheet and plots."""
from __future__ import annotations

import io
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from .io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from .report_models import comparison_figures, comparison_html, comparison_markdown
from .report_plots import SET_TITLES, dataset_figure, metric_value, metrics_figure, render
from .report_sheets import accepted_cells, labelled_sheet, one_of_each_reason_first, rejected_cells


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON Lines file; none when the file does not exist."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def dataset_statistics(accepted: list[dict], rejected: list[dict]) -> dict:
    """Counts and distributions over accepted and rejected images (no pixels needed)."""
    per_composition: dict[str, dict] = {}
    for row, verdict in [(r, "accepted") for r in accepted] + [(r, "rejected") for r in rejected]:
        entry = per_composition.setdefault(row["composition"], {"accepted": 0, "rejected": 0, "reasons": {}})
        entry[verdict] += 1
        for code in dict.fromkeys(row.get("reason_codes", []) if verdict == "rejected" else []):
            entry["reasons"][code] = entry["reasons"].get(code, 0) + 1
    for entry in per_composition.values():
        entry["reasons"] = dict(sorted(entry["reasons"].items()))
    total = len(accepted) + len(rejected)
    reason_counts = Counter(code for row in rejected for code in set(row.get("reason_codes", [])))
    scales = [c["checks"]["area_fraction"] for row in accepted for c in row["concepts"]]
    words = [len(row["captions"]["detailed"].split()) for row in accepted]
    histogram, edges = np.histogram(scales, bins=10, range=(0.0, max(scales, default=0.5) or 0.5))
    return {
        "images": total,
        "accepted": len(accepted),
        "rejected": len(rejected),
        "pass_rate": round(len(accepted) / total, 4) if total else None,
        "rejection_reasons": dict(sorted(reason_counts.items())),
        "images_per_composition": dict(sorted(per_composition.items())),
        "concepts_per_image": dict(sorted(Counter(len(r["concepts"]) for r in accepted).items())),
        "scenes": dict(sorted(Counter(r["scene"] for r in accepted).items())),
        "object_scale": {
            "measure": "visible object area / canvas area",
            "mean": round(float(np.mean(scales)), 5) if scales else None,
            "histogram": {"counts": histogram.tolist(), "edges": [round(float(e), 5) for e in edges]},
        },
        "caption_words": {
            "mean": round(float(np.mean(words)), 2) if words else None,
            "min": min(words, default=None),
            "max": max(words, default=None),
        },
    }


ACCEPTED_LABEL_LINES = 4  # composition, scene and room for a warning
REJECTED_LABEL_LINES = 7  # id, scene, codes and the reasons


def _reasons_text(reasons: dict[str, int]) -> str:
    return ", ".join(f"{code} ×{n}" for code, n in reasons.items()) or "–"


def composition_rows(stats: dict) -> list[tuple[str, int, int, str, str]]:
    """Per composition: accepted, rejected, rejection codes with counts, and layouts dropped (with why)."""
    dropped = stats.get("dropped_layouts", {})
    rows = []
    for key in sorted(set(stats["images_per_composition"]) | set(dropped)):
        entry = stats["images_per_composition"].get(key, {"accepted": 0, "rejected": 0, "reasons": {}})
        lost = dropped.get(key, [])
        rows.append((key, entry["accepted"], entry["rejected"], _reasons_text(entry.get("reasons", {})),
                     "; ".join(f"image {d['index']:03d}: {d['reason']}" for d in lost) or "–"))
    return rows


COMPOSITION_COLUMNS = ("composition", "accepted", "rejected", "rejection reasons", "layouts dropped")


def _markdown(stats: dict, notes: list[str], evaluation: dict | None = None, figures: list[str] = ()) -> str:
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["# MyCanvas dataset report", "",
             f"- images built: {stats['images']}, accepted: {stats['accepted']}, rejected: {stats['rejected']}"
             f" (pass rate {stats['pass_rate'] if stats['pass_rate'] is not None else 'n/a'})",
             f"- rejection reasons: {_reasons_text(stats['rejection_reasons']) if stats['rejection_reasons'] else 'none'}",
             f"- layouts dropped: {sum(len(v) for v in stats.get('dropped_layouts', {}).values())}",
             f"- concepts per image: {stats['concepts_per_image']}",
             f"- scenes: {stats['scenes']}",
             f"- mean object scale: {stats['object_scale']['mean']}",
             f"- caption words: {stats['caption_words']}", ""]
    if stats.get("photos_to_replace"):
        lines += ["## Photos to replace", "",
                  "Every image using these photos was rejected: the fix is the input, not the pipeline.", ""]
        lines += [f"- `{f['photo']}` ({f['code']}): {f['detail'].removeprefix(f['photo'] + ': ')}" for f in stats["photos_to_replace"]] + [""]
    lines += ["## Compositions", "", "| " + " | ".join(COMPOSITION_COLUMNS) + " |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in composition_rows(stats)]
    lines += ["", "Accepted images (composition, scene and warnings under each):", "",
              "![contact sheet](contact_sheet.png)", ""]
    if stats["rejected"]:
        shown = len(stats.get("sheets", {}).get("rejected_sheet.png", []))
        lines += [f"Rejected images ({shown} of {stats['rejected']}, each kind of reason first; all in rejected.jsonl):",
                  "", "![rejected images](rejected_sheet.png)", ""]
    lines += ["![plots](plots.png)", ""]
    if stats.get("report_problems"):
        lines += ["## Report problems", ""] + [f"- `{p['path']}`: {p['reason']}" for p in stats["report_problems"]] + [""]
    lines += _metrics_markdown(evaluation)
    lines += comparison_markdown(evaluation, figures)
    if notes:
        lines += ["## Not computed", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def write_report(mycanvas_dir: Path, out_dir: Path, config, evaluation: dict | None = None,
                 thumbnail_cache: Path | None = None, data_dir: Path | None = None) -> dict:
    """Write report.json, report.md, report.html, contact_sheet.png, rejected_sheet.png, plots.png
    (and metrics.png); returns the statistics.

    ``data_dir``: the data folder that rejected images are named relative to (rejected.jsonl's
    ``source_image``); by default the export folder's parent.

    ``evaluation`` is :func:`gen4gen.evaluation.run_evaluation`'s result; without it, the report
    states that the CLIP-based metrics were not computed because no backend is configured.
    ``thumbnail_cache``: where contact-sheet thumbnails are kept by image sha256 between reports
    (a report written into a fresh staging folder would otherwise make every one again).
    """
    start = time.perf_counter()
    accepted = read_jsonl(mycanvas_dir / "metadata.jsonl")
    rejected = read_jsonl(mycanvas_dir / "rejected.jsonl")
    stats = dataset_statistics(accepted, rejected)
    export_stats = read_json(mycanvas_dir / "stats.json") if (mycanvas_dir / "stats.json").is_file() else {}
    stats["build_problems"] = export_stats.get("problems", [])
    notes = list(evaluation["not_computed"]) if evaluation is not None else _default_not_computed()
    stats["not_computed"] = notes
    stats["evaluation"] = evaluation  # metrics over MyCanvas and generated images (None: not run)
    stats["photos_to_replace"] = export_stats.get("photo_findings", [])
    stats["dropped_layouts"] = export_stats.get("dropped_layouts", {})
    stats["report_problems"] = []
    cache = thumbnail_cache or out_dir / ".thumbnails"
    thumb, columns = config.contact_sheet_thumb, config.contact_sheet_columns
    sheet = labelled_sheet(accepted_cells(accepted[:config.contact_sheet_max_images], mycanvas_dir, cache, thumb),
                           thumb, columns, ACCEPTED_LABEL_LINES)
    shown_rejected = one_of_each_reason_first(rejected, config.rejected_sheet_max_images)
    rejected_sheet = labelled_sheet(
        rejected_cells(shown_rejected, data_dir or mycanvas_dir.parent, cache, thumb, stats["report_problems"]),
        thumb, columns, REJECTED_LABEL_LINES)
    stats["sheets"] = {"contact_sheet.png": sheet.cells, "rejected_sheet.png": rejected_sheet.cells}
    buffer, rejected_buffer = io.BytesIO(), io.BytesIO()
    sheet.image.save(buffer, format="PNG", compress_level=1)  # level 6 takes ~5x longer for a few % smaller
    rejected_sheet.image.save(rejected_buffer, format="PNG", compress_level=1)
    files = {
        "contact_sheet.png": buffer.getvalue(),
        "rejected_sheet.png": rejected_buffer.getvalue(),
        "plots.png": render(dataset_figure(stats, accepted)),
    }
    figures = comparison_figures(evaluation)  # trained models' samples side by side, one figure per prompt
    files.update(figures)
    metrics_plot = render(metrics_figure(evaluation)) if evaluation and evaluation.get("sets") else None
    if metrics_plot is not None:
        files["metrics.png"] = metrics_plot
    elif (out_dir / "metrics.png").is_file():
        (out_dir / "metrics.png").unlink()  # from an earlier run with backends: would no longer match
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
    atomic_write_json(out_dir / "report.json", stats)
    atomic_write_text(out_dir / "report.md", _markdown(stats, notes, evaluation, list(figures)))
    atomic_write_text(out_dir / "report.html", _html(stats, notes, evaluation, list(figures)))
    stats["seconds"] = round(time.perf_counter() - start, 3)
    return stats


# ------------------------------------------------------------------ metrics
_METRIC_COLUMNS = [("images", "images"), ("CP-CLIP", "cp_clip"), ("detection rate", "detection_rate"),
                   ("personalisation", "personalisation"), ("TI-CLIP train", ("ti_clip", "train")),
                   ("TI-CLIP held-out", ("ti_clip", "held_out")), ("TI-CLIP gap", ("ti_clip", "gap")),
                   ("CLIP-T", "clip_t"), ("CLIP-I", "clip_i"), ("DINO", "dino")]


def _default_not_computed() -> list[str]:
    from .config import PipelineConfig
    from .evaluation import not_computed

    return not_computed(PipelineConfig(), None, None, None)


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}"


def _metric_rows(evaluation: dict) -> list[tuple[str, str, dict]]:
    """(set, group label, summary) for the overall figures and every breakdown."""
    rows = []
    for name, result in evaluation.get("sets", {}).items():
        rows.append((name, "all", result["summary"]))
        rows += [(name, f"{k} concepts", v) for k, v in result["breakdowns"]["by_concept_count"].items()]
        rows += [(name, k, v) for k, v in result["breakdowns"]["by_composition"].items()]
    return rows


def _metrics_markdown(evaluation: dict | None) -> list[str]:
    if not evaluation or not evaluation.get("sets"):
        return []
    params = evaluation["parameters"]
    lines = ["## Metrics", "",
             "Definitions: README.md, \"Metrics and screening\". Backends: "
             + ", ".join(f"{k}: `{json.dumps(v)}`" for k, v in evaluation["backends"].items() if v) + ".",
             f"Parameters: crop padding {params['crop_padding']}, missing-concept score "
             f"{params['missing_concept_score']}, detector threshold {params['detector_threshold']}, "
             f"references: {params['reference_images']}.", ""]
    header = "| set | group | " + " | ".join(c for c, _ in _METRIC_COLUMNS) + " |"
    lines += [header, "|" + "---|" * (len(_METRIC_COLUMNS) + 2)]
    for name, group, summary in _metric_rows(evaluation):
        lines.append(f"| {SET_TITLES.get(name, name)} | {group} | "
                     + " | ".join(_fmt(metric_value(summary, key)) for _, key in _METRIC_COLUMNS) + " |")
    lines += ["", "![metrics](metrics.png)", ""]
    if evaluation.get("problems"):
        lines += ["### Evaluation problems", ""] + [f"- `{p['path']}`: {p['reason']}" for p in evaluation["problems"]]
        lines.append("")
    return lines


def _thumb_uri(path: str, side: int) -> str | None:
    import base64

    try:
        with Image.open(path) as handle:
            image = handle.convert("RGB")
    except OSError:
        return None
    image.thumbnail((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _html(stats: dict, notes: list[str], evaluation: dict | None, figures: list[str] = ()) -> str:
    """The report as one HTML page: statistics, figures, metric tables and per-image scores with thumbnails."""
    import html

    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>MyCanvas report</title><style>"
             "body{font-family:system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td.l,th.l{text-align:left}"
             ".grid{display:flex;flex-wrap:wrap;gap:10px}.card{font-size:11px;border:1px solid #ccc;padding:4px}"
             ".miss{color:#b00}</style></head><body><h1>MyCanvas dataset report</h1><ul>",
             f"<li>images built: {stats['images']}, accepted: {stats['accepted']}, rejected: {stats['rejected']}</li>",
             f"<li>rejection reasons: {esc(json.dumps(stats['rejection_reasons']))}</li>",
             f"<li>layouts dropped: {sum(len(v) for v in stats.get('dropped_layouts', {}).values())}</li>",
             f"<li>concepts per image: {esc(json.dumps(stats['concepts_per_image']))}</li></ul>"]
    if stats.get("photos_to_replace"):
        parts.append("<h2>Photos to replace</h2><p>Every image using these photos was rejected: the fix is the "
                     "input, not the pipeline.</p><ul>" + "".join(
                         f"<li><code>{esc(f['photo'])}</code> ({esc(f['code'])}): {esc(f['detail'])}</li>"
                         for f in stats["photos_to_replace"]) + "</ul>")
    parts.append("<h2>Compositions</h2><table><tr>" + "".join(
        f"<th class='l'>{esc(c)}</th>" if i in (0, 3, 4) else f"<th>{esc(c)}</th>"
        for i, c in enumerate(COMPOSITION_COLUMNS)) + "</tr>")
    for row in composition_rows(stats):
        parts.append("<tr>" + "".join(f"<td class='l'>{esc(str(v))}</td>" if i in (0, 3, 4) else f"<td>{v}</td>"
                                      for i, v in enumerate(row)) + "</tr>")
    parts.append("</table><h2>Accepted images</h2><p>Composition, scene and warnings under each image.</p>"
                 "<img src='contact_sheet.png' alt='contact sheet'>")
    if stats["rejected"]:
        shown = len(stats.get("sheets", {}).get("rejected_sheet.png", []))
        parts.append(f"<h2>Rejected images</h2><p>{shown} of {stats['rejected']}, each kind of reason first; "
                     "all in rejected.jsonl.</p><img src='rejected_sheet.png' alt='rejected images'>")
    parts.append("<h2>Plots</h2><img src='plots.png' alt='plots'>")
    if stats.get("report_problems"):
        parts.append("<h2>Report problems</h2><ul>" + "".join(
            f"<li><code>{esc(p['path'])}</code>: {esc(p['reason'])}</li>" for p in stats["report_problems"]) + "</ul>")
    if evaluation and evaluation.get("sets"):
        display = evaluation.get("display", {})
        side, limit = display.get("html_thumb", 160), display.get("html_max_images", 200)
        parts.append("<h2>Metrics</h2><p>Definitions: README.md, “Metrics and screening”. Backends: "
                     + esc(json.dumps(evaluation["backends"])) + ". Parameters: "
                     + esc(json.dumps(evaluation["parameters"])) + ".</p><table><tr><th class='l'>set</th>"
                     "<th class='l'>group</th>" + "".join(f"<th>{esc(c)}</th>" for c, _ in _METRIC_COLUMNS) + "</tr>")
        for name, group, summary in _metric_rows(evaluation):
            parts.append(f"<tr><td class='l'>{esc(SET_TITLES.get(name, name))}</td><td class='l'>{esc(group)}</td>"
                         + "".join(f"<td>{_fmt(metric_value(summary, key))}</td>" for _, key in _METRIC_COLUMNS) + "</tr>")
        parts.append("</table><img src='metrics.png' alt='metrics'>")
        for name, result in evaluation["sets"].items():
            images = result["images"]
            parts.append(f"<h3>{esc(SET_TITLES.get(name, name))}: per image"
                         + (f" (first {limit} of {len(images)}; all in report.json)" if len(images) > limit else "")
                         + "</h3><div class='grid'>")
            for record in images[:limit]:
                uri = _thumb_uri(record["file"], side) if record.get("file") else None
                lines = [f"<b>{esc(record['image_id'])}</b> ({esc(record['kind'])})", esc(record["prompt"]),
                         f"CP-CLIP {_fmt(record['cp_clip'])} · TI-CLIP {_fmt(record['ti_clip'])} · "
                         f"CLIP-T {_fmt(record['clip_t'])} · CLIP-I {_fmt(record['clip_i'])}"
                         + (f" · DINO {_fmt(record['dino'])}" if record.get("dino") is not None else "")]
                for c in record["concept_scores"]:
                    lines.append(f"{esc(c['concept'])}: sim {_fmt(c['similarity'])}, det {_fmt(c['detection_score'])}"
                                 if c["found"] else f"<span class='miss'>{esc(c['concept'])}: not found</span>")
                image = f"<img src='{uri}' width='{side}'><br>" if uri else ""
                parts.append(f"<div class='card' style='width:{side}px'>{image}" + "<br>".join(lines) + "</div>")
            parts.append("</div>")
    parts.append(comparison_html(evaluation, figures))
    if notes:
        parts.append("<h2>Not computed</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    if evaluation and evaluation.get("problems"):
        parts.append("<h2>Evaluation problems</h2><ul>" + "".join(
            f"<li><code>{esc(p['path'])}</code>: {esc(p['reason'])}</li>" for p in evaluation["problems"]) + "</ul>")
    parts.append("</body></html>")
    return "".join(parts)
