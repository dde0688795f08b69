"""The report's comparison of trained models: the paper's main table, on the user's own concepts.

One row per model (training set x prompting strategy; the photos-only baseline among them) with
CP-CLIP, detection rate, personalisation, TI-CLIP on training and held-out prompts and their gap,
CLIP-T, CLIP-I and DINO, plus the same by number of concepts; and per prompt slot one figure with
every model's samples side by side (a row per model).
"""
from __future__ import annotations

import html
import io
import re

from PIL import Image, ImageDraw

COLUMNS = [("CP-CLIP", "cp_clip"), ("detection rate", "detection_rate"), ("personalisation", "personalisation"),
           ("TI-CLIP train", ("ti_clip", "train")), ("TI-CLIP held-out", ("ti_clip", "held_out")),
           ("TI-CLIP gap", ("ti_clip", "gap")), ("CLIP-T", "clip_t"), ("CLIP-I", "clip_i"), ("DINO", "dino")]


def _value(summary: dict, key):
    return summary[key[0]][key[1]] if isinstance(key, tuple) else summary[key]


def _fmt(value) -> str:
    return "–" if value is None else str(value) if isinstance(value, int) else f"{value:.3f}"


def trained_on(info: dict) -> str:
    return "photos only (baseline)" if info["source"] == "photos" else f"MyCanvas, {info['strategy']}"


def comparison_rows(evaluation: dict | None) -> list[tuple[str, str, str, dict]]:
    """(model, trained on, group, summary): each model overall, then by number of concepts."""
    rows = []
    for run, info in (evaluation or {}).get("models", {}).items():
        result = evaluation["sets"].get(f"model:{run}")
        if result is None:
            continue
        label = run + (" (stale)" if info["stale"] else "")
        rows.append((label, trained_on(info), "all", result["summary"]))
        rows += [(label, trained_on(info), f"{k} concepts", v)
                 for k, v in result["breakdowns"]["by_concept_count"].items()]
    return rows


def comparison_markdown(evaluation: dict | None, figures: list[str]) -> list[str]:
    rows = comparison_rows(evaluation)
    if not rows:
        return []
    lines = ["## Personalised models", "",
             "Each model's samples for training-style and held-out prompts (README: \"Personalisation\"); "
             "a stale model was trained on an older training set.", "",
             "| model | trained on | group | images | " + " | ".join(c for c, _ in COLUMNS) + " |",
             "|" + "---|" * (len(COLUMNS) + 4)]
    for model, source, group, summary in rows:
        lines.append(f"| {model} | {source} | {group} | {summary['images']} | "
                     + " | ".join(_fmt(_value(summary, key)) for _, key in COLUMNS) + " |")
    lines.append("")
    lines += [f"![{name}]({name})" for name in figures]
    return lines + [""]


def comparison_html(evaluation: dict | None, figures: list[str]) -> str:
    rows = comparison_rows(evaluation)
    if not rows:
        return ""
    esc = html.escape
    parts = ["<h2>Personalised models</h2><table><tr><th class='l'>model</th><th class='l'>trained on</th>"
             "<th class='l'>group</th><th>images</th>" + "".join(f"<th>{esc(c)}</th>" for c, _ in COLUMNS) + "</tr>"]
    for model, source, group, summary in rows:
        parts.append(f"<tr><td class='l'>{esc(model)}</td><td class='l'>{esc(source)}</td><td class='l'>{esc(group)}"
                     f"</td><td>{summary['images']}</td>"
                     + "".join(f"<td>{_fmt(_value(summary, key))}</td>" for _, key in COLUMNS) + "</tr>")
    parts.append("</table>")
    parts += [f"<p><img src='{esc(name)}' alt='{esc(name)}'></p>" for name in figures]
    return "".join(parts)


def slot_of(image_id: str) -> str:
    """``model:run/<composition>__train0_2.png`` -> ``<composition>/train0`` (generated_images names them so)."""
    name = image_id.split("/", 1)[1]
    return name.rsplit("_", 1)[0].replace("__", "/")


def comparison_figures(evaluation: dict | None, thumb: int = 128) -> dict[str, bytes]:
    """Per prompt slot, a PNG: a row per model (its name and prompt above), its samples side by side."""
    models = list((evaluation or {}).get("models", {}))
    by_slot: dict[str, dict[str, list[dict]]] = {}
    for run in models:
        result = evaluation["sets"].get(f"model:{run}")
        for record in (result or {}).get("images", []):
            by_slot.setdefault(slot_of(record["image_id"]), {}).setdefault(run, []).append(record)
    figures = {}
    for slot, rows in sorted(by_slot.items()):
        columns = max(len(r) for r in rows.values())
        label_h = 28
        sheet = Image.new("RGB", (columns * thumb, len(models) * (thumb + label_h)), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for i, run in enumerate(models):
            top = i * (thumb + label_h)
            records = sorted(rows.get(run, []), key=lambda r: r["image_id"])
            prompt = records[0]["prompt"] if records else "no samples"
            draw.text((3, top + 2), f"{run}: {prompt}"[: columns * thumb // 6], fill=(0, 0, 0))
            draw.text((3, top + 14), f"{'held-out' if 'held_out' in slot else 'training-style'} prompt",
                      fill=(90, 90, 90))
            for j, record in enumerate(records[:columns]):
                with Image.open(record["file"]) as handle:
                    image = handle.convert("RGB")
                image.thumbnail((thumb, thumb))
                sheet.paste(image, (j * thumb, top + label_h))
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG", compress_level=6)
        figures[f"models_{re.sub(r'[^A-Za-z0-9_.+-]', '_', slot)}.png"] = buffer.getvalue()
    return figures
