"""The human side of MyCanvas screening: review decisions that override it, and the review sheet.

A review file (``mycanvas_overrides.csv`` or ``.json``) accepts or rejects images by id and has
the last word over the automatic checks; the HTML review sheet beside the export shows every
candidate with its scores, its decision and the line to paste into the review file to flip it.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from .config import PipelineConfig
from .io import atomic_write_json, atomic_write_text, read_json

if TYPE_CHECKING:
    from .screening import Candidate, Decision

_ACCEPT = {"accept", "accepted", "keep", "yes", "y", "1", "true"}
_REJECT = {"reject", "rejected", "drop", "no", "n", "0", "false"}


# ------------------------------------------------------------------ overrides
def load_overrides(path: Path, problems: list[dict] | None = None) -> dict[str, dict]:
    """Review decisions by image id: CSV lines ``image_id,accept|reject[,note]`` or a JSON object/list.

    Lines starting with ``#`` and a header line are ignored; for a repeated id the last line wins.
    """
    if not path.is_file():
        return {}
    rows: list[tuple[str, str, str, str]] = []  # (where, image id, decision, note)
    if path.suffix.lower() == ".json":
        data = read_json(path)
        if isinstance(data, dict):
            data = [{"image_id": k, **(v if isinstance(v, dict) else {"decision": v})} for k, v in data.items()]
        for n, entry in enumerate(data if isinstance(data, list) else []):
            rows.append((f"{path}[{n}]", str(entry.get("image_id", "")), str(entry.get("decision", "")),
                         str(entry.get("note", ""))))
    else:
        text = path.read_text(encoding="utf-8-sig")
        for n, row in enumerate(csv.reader(text.splitlines()), 1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if row[0].strip().lower() == "image_id":
                continue
            rows.append((f"{path}:{n}", row[0].strip(), row[1].strip() if len(row) > 1 else "",
                         ",".join(row[2:]).strip()))
    decisions: dict[str, dict] = {}
    for where, image_id, decision, note in rows:
        value = decision.strip().lower()
        if not image_id or value not in _ACCEPT | _REJECT:
            if problems is not None:
                problems.append({"path": where, "reason": f"review override needs an image id and accept or reject, "
                                                          f"got {image_id!r}, {decision!r}"})
            continue
        decisions[image_id] = {"decision": "accept" if value in _ACCEPT else "reject", "note": note, "where": where}
    return decisions


# ------------------------------------------------------------------ review sheet
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{width:%dpx;border:3px solid #999;border-radius:6px;padding:6px;font-size:12px}
.card.accept{border-color:#2a2}.card.reject{border-color:#c22}
.card img{width:100%%;display:block}
.id{font-weight:bold;word-break:break-all}.reasons{color:#a00}.review{color:#06c}
code{background:#f3f3f3;user-select:all}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}
"""


def _thumb(path: Path, side: int) -> str:
    with Image.open(path) as handle:
        image = handle.convert("RGB")
    image.thumbnail((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_review_sheet(config: PipelineConfig, candidates: list[Candidate], decisions: dict[str, Decision],
                       summary: dict) -> Path:
    """``<data_dir>/mycanvas_review/index.html`` (every candidate, rejected first) and ``summary.json``."""
    folder = config.paths.review
    side = config.screening.review_thumb
    esc = html.escape
    order = sorted(candidates, key=lambda c: (decisions[c.image_id].accepted, c.image_id))
    cards = []
    for cand in order:
        d = decisions[cand.image_id]
        verdict = "accept" if d.accepted else "reject"
        lines = [f'<div class="id">{esc(cand.image_id)}</div>', f"<div><b>{verdict.upper()}</b></div>"]
        if d.caption_score is not None:
            lines.append(f"<div>caption score {d.caption_score:.3f}</div>")
        for k, obj in enumerate(cand.objects):
            parts = [esc(obj["concept"])]
            if k < len(d.concept_similarity):
                parts.append(f"sim {d.concept_similarity[k]:.3f}")
            if k < len(d.detected):
                score = d.detection_score[k]
                parts.append(f"det {score:.2f}" if score is not None else "not detected")
            lines.append(f"<div>{' · '.join(parts)}</div>")
        reasons = cand.geometric.reasons + d.reasons
        if reasons:
            lines.append('<div class="reasons">' + "<br>".join(esc(r) for r in reasons) + "</div>")
        if d.review:
            note = f": {esc(d.review_note)}" if d.review_note else ""
            lines.append(f'<div class="review">review: {d.review}{note}</div>')
        flip = "reject" if d.accepted else "accept"
        lines.append(f"<div>override: <code>{esc(cand.image_id)},{flip}</code></div>")
        cards.append(f'<div class="card {verdict}"><img src="{_thumb(cand.path, side)}" alt="{esc(cand.image_id)}">'
                     + "".join(lines) + "</div>")
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(json.dumps(v))}</td></tr>" for k, v in summary.items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>MyCanvas review</title>"
            f"<style>{_STYLE % side}</style></head><body><h1>MyCanvas review sheet</h1>"
            f"<p>{summary['accepted']} of {summary['candidates']} images accepted. To change a decision, add the "
            f"line under an image to <code>{esc(summary['overrides']['file'])}</code> and materialise "
            f"<code>mycanvas</code> again.</p><table>{rows}</table><h2>Images (rejected first)</h2>"
            f"<div class='grid'>{''.join(cards)}</div></body></html>")
    atomic_write_text(folder / "index.html", page)
    atomic_write_json(folder / "summary.json", summary)
    return folder / "index.html"
