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
from .thumbnails import thumbnail_grid


def _read_jsonl(path: Path) -> list[dict]:
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


def _plots(stats: dict, accepted: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(10, 7), dpi=80)
    per_comp = stats["images_per_composition"]
    names = list(per_comp)
    axes[0, 0].barh(names, [per_comp[n]["accepted"] for n in names], label="accepted", color="tab:green")
    axes[0, 0].barh(names, [per_comp[n]["rejected"] for n in names], left=[per_comp[n]["accepted"] for n in names],
                    label="rejected", color="tab:red")
    axes[0, 0].set_title("images per composition")
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
    figure.tight_layout()
    buffer = io.BytesIO()
    # Fixed metadata keeps the bytes identical between runs.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def _markdown(stats: dict, notes: list[str]) -> str:
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
    if notes:
        lines += ["## Not computed", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def write_report(mycanvas_dir: Path, out_dir: Path, config) -> dict:
    """Write report.json, report.md, contact_sheet.png and plots.png; returns the statistics."""
    start = time.perf_counter()
    accepted = _read_jsonl(mycanvas_dir / "metadata.jsonl")
    rejected = _read_jsonl(mycanvas_dir / "rejected.jsonl")
    stats = dataset_statistics(accepted, rejected)
    export_stats = read_json(mycanvas_dir / "stats.json") if (mycanvas_dir / "stats.json").is_file() else {}
    stats["build_problems"] = export_stats.get("problems", [])
    notes = ["CLIP-based metrics (CP-CLIP, TI-CLIP, CLIP-T, CLIP-I): no CLIP backend is configured"]
    stats["not_computed"] = notes
    thumbs = [Image.open(mycanvas_dir / row["file_name"]) for row in accepted]
    sheet = thumbnail_grid(thumbs, config.contact_sheet_thumb, config.contact_sheet_columns)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    files = {
        "contact_sheet.png": buffer.getvalue(),
        "plots.png": _plots(stats, accepted),
    }
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
    atomic_write_json(out_dir / "report.json", stats)
    atomic_write_text(out_dir / "report.md", _markdown(stats, notes))
    stats["seconds"] = round(time.perf_counter() - start, 3)
    return stats
