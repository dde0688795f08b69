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
from .thumbnails import cached_thumbnails, thumbnail_grid


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON Lines file; none when the file does not exist."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def dataset_statistics(accepted: list[dict], rejected: list[dict]) -> dict:
    """Counts and distributions over accepted and rejected images (no pixels needed)."""
    per_composition: dict[str, dict] = {}
    for row, verdict in [(r, "accepted") for r in accepted] + [(r, "rejected") for r in rejected]:
        entry = per_composition.setdefault(row["composition"], {"accepted": 0, "rejected": 0})
        entry[verdict] += 1
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


PLOTTED_COMPOSITIONS = 40  # a bar per composition stops being readable beyond this


def _plots(stats: dict, accepted: list[dict]) -> bytes:
    # The object API without pyplot: no global state, and cheaper to import and render.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 7), dpi=80)
    axes = figure.subplots(2, 2)
    per_comp = stats["images_per_composition"]
    names = list(per_comp)[:PLOTTED_COMPOSITIONS]
    axes[0, 0].barh(names, [per_comp[n]["accepted"] for n in names], label="accepted", color="tab:green")
    axes[0, 0].barh(names, [per_comp[n]["rejected"] for n in names], left=[per_comp[n]["accepted"] for n in names],
                    label="rejected", color="tab:red")
    axes[0, 0].set_title("images per composition" + (f" (first {len(names)} of {len(per_comp)})"
                                                       if len(names) < len(per_comp) else ""))
    axes[0, 0].legend(fontsize=7)
    axes[0, 0].tick_params(axis="y", labelsize=6)
    cpi = stats["concepts_per_image"]
    axes[0, 1].bar([str(k) for k in cpi], list(cpi.values()), color="tab:blue")
    axes[0, 1].set_title("concepts per image")
    scales = [c["checks"]["area_fraction"] for row in accepted for c in row["concepts"]]
    axes[1, 0].hist(scales, bins=10, color="tab:purple")
    axes[1, 0].set_title("object scale (visible area / canvas)")
    words = [len(row["captions"]["detailed"].split()) for row in accepted]
    axes[1, 1].hist(words, bins=10, color="tab:orange")
    axes[1, 1].set_title("caption length (words)")
    # Fixed margins: tight_layout measures every label and costs as much as the drawing.
    figure.subplots_adjust(left=0.24, right=0.98, top=0.95, bottom=0.07, hspace=0.35, wspace=0.25)
    buffer = io.BytesIO()
    # Fixed metadata keeps the bytes identical between runs.
    figure.savefig(buffer, format="png", metadata={"Software": None}, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def _markdown(stats: dict, notes: list[str], evaluation: dict | None = None, figures: list[str] = ()) -> str:
    lines = ["# MyCanvas dataset report", "",
             f"- images built: {stats['images']}, accepted: {stats['accepted']}, rejected: {stats['rejected']}"
             f" (pass rate {stats['pass_rate'] if stats['pass_rate'] is not None else 'n/a'})",
             f"- rejection reasons: {stats['rejection_reasons'] or 'none'}",
             f"- concepts per image: {stats['concepts_per_image']}",
             f"- scenes: {stats['scenes']}",
             f"- mean object scale: {stats['object_scale']['mean']}",
             f"- caption words: {stats['caption_words']}", "",
             "| composition | accepted | rejected |", "|---|---|---|"]
    lines += [f"| {k} | {v['accepted']} | {v['rejected']} |" for k, v in stats["images_per_composition"].items()]
    lines += ["", "![contact sheet](contact_sheet.png)", "", "![plots](plots.png)", ""]
    lines += _metrics_markdown(evaluation)
    lines += comparison_markdown(evaluation, figures)
    if notes:
        lines += ["## Not computed", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def write_report(mycanvas_dir: Path, out_dir: Path, config, evaluation: dict | None = None,
                 thumbnail_cache: Path | None = None) -> dict:
    """Write report.json, report.md, report.html, contact_sheet.png, plots.png (and metrics.png); returns the statistics.

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
    shown = accepted[:config.contact_sheet_max_images]
    thumbs = cached_thumbnails([(mycanvas_dir / r["file_name"], r["image_sha256"]) for r in shown],
                               thumbnail_cache or out_dir / ".thumbnails", config.contact_sheet_thumb)
    sheet = thumbnail_grid(thumbs, config.contact_sheet_thumb, config.contact_sheet_columns)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", compress_level=1)  # level 6 takes ~5x longer for a few % smaller
    files = {
        "contact_sheet.png": buffer.getvalue(),
        "plots.png": _plots(stats, accepted),
    }
    figures = comparison_figures(evaluation)  # trained models' samples side by side, one figure per prompt
    files.update(figures)
    metrics_plot = _metrics_plot(evaluation) if evaluation and evaluation.get("sets") else None
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
_SET_TITLES = {"mycanvas": "MyCanvas", "generated": "Generated images"}
_METRIC_COLUMNS = [("images", "images"), ("CP-CLIP", "cp_clip"), ("detection rate", "detection_rate"),
                   ("personalisation", "personalisation"), ("TI-CLIP train", ("ti_clip", "train")),
                   ("TI-CLIP held-out", ("ti_clip", "held_out")), ("TI-CLIP gap", ("ti_clip", "gap")),
                   ("CLIP-T", "clip_t"), ("CLIP-I", "clip_i"), ("DINO", "dino")]


def _default_not_computed() -> list[str]:
    from .config import PipelineConfig
    from .evaluation import not_computed

    return not_computed(PipelineConfig(), None, None, None)


def _value(summary: dict, key):
    if isinstance(key, tuple):
        return summary[key[0]][key[1]]
    return summary[key]


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
        lines.append(f"| {_SET_TITLES.get(name, name)} | {group} | "
                     + " | ".join(_fmt(_value(summary, key)) for _, key in _METRIC_COLUMNS) + " |")
    lines += ["", "![metrics](metrics.png)", ""]
    if evaluation.get("problems"):
        lines += ["### Evaluation problems", ""] + [f"- `{p['path']}`: {p['reason']}" for p in evaluation["problems"]]
        lines.append("")
    return lines


def _metrics_plot(evaluation: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(evaluation["sets"].items())
    figure, axes = plt.subplots(len(sets), 2, figsize=(12, 3.8 * len(sets)), dpi=80, squeeze=False)
    measures = [("CP-CLIP", "cp_clip"), ("detection rate", "detection_rate"), ("personalisation", "personalisation"),
                ("TI-CLIP train", ("ti_clip", "train")), ("CLIP-I", "clip_i")]
    for row, (name, result) in enumerate(sets):
        title = _SET_TITLES.get(name, name)
        groups = result["breakdowns"]["by_concept_count"]
        labels = list(groups)
        width = 0.8 / len(measures)
        ax = axes[row, 0]
        for m, (label, key) in enumerate(measures):
            values = [_value(groups[g], key) for g in labels]
            ax.bar([i + m * width for i in range(len(labels))], [v if v is not None else 0.0 for v in values],
                   width, label=label)
        ax.set_xticks([i + width * (len(measures) - 1) / 2 for i in range(len(labels))], [f"{g} concepts" for g in labels])
        ax.set_title(f"{title}: by number of concepts per image")
        ax.legend(fontsize=7)
        comps = result["breakdowns"]["by_composition"]
        names = list(comps)
        key = "cp_clip" if result["summary"]["cp_clip"] is not None else ("ti_clip", "train")
        label = "CP-CLIP" if key == "cp_clip" else "TI-CLIP (train)"
        axes[row, 1].barh(names, [(_value(comps[n], key) or 0.0) for n in names], color="tab:purple")
        axes[row, 1].set_title(f"{title}: {label} by composition")
        axes[row, 1].tick_params(axis="y", labelsize=6)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


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
             f"<li>concepts per image: {esc(json.dumps(stats['concepts_per_image']))}</li></ul>",
             "<img src='contact_sheet.png' alt='contact sheet'><br><img src='plots.png' alt='plots'>"]
    if evaluation and evaluation.get("sets"):
        display = evaluation.get("display", {})
        side, limit = display.get("html_thumb", 160), display.get("html_max_images", 200)
        parts.append("<h2>Metrics</h2><p>Definitions: README.md, “Metrics and screening”. Backends: "
                     + esc(json.dumps(evaluation["backends"])) + ". Parameters: "
                     + esc(json.dumps(evaluation["parameters"])) + ".</p><table><tr><th class='l'>set</th>"
                     "<th class='l'>group</th>" + "".join(f"<th>{esc(c)}</th>" for c, _ in _METRIC_COLUMNS) + "</tr>")
        for name, group, summary in _metric_rows(evaluation):
            parts.append(f"<tr><td class='l'>{esc(_SET_TITLES.get(name, name))}</td><td class='l'>{esc(group)}</td>"
                         + "".join(f"<td>{_fmt(_value(summary, key))}</td>" for _, key in _METRIC_COLUMNS) + "</tr>")
        parts.append("</table><img src='metrics.png' alt='metrics'>")
        for name, result in evaluation["sets"].items():
            images = result["images"]
            parts.append(f"<h3>{esc(_SET_TITLES.get(name, name))}: per image"
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
