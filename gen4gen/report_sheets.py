"""Labelled contact sheets: the accepted images with their composition, scene and warnings, and
the rejected images with the reasons printed on each.

A sheet is a grid of cells, a thumbnail above a few lines of text. Where each image sits and what
its label says is returned too (report.json keeps it), so a cell can be traced to its image.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .thumbnails import cached_thumbnails

INK = (20, 20, 20)
MUTED = (95, 95, 95)
WARNING = (190, 110, 0)
REJECTED = (180, 20, 20)
MISSING_FILL = (225, 225, 225)
MIN_LABEL_WIDTH = 160


@dataclass
class Cell:
    image_id: str
    lines: list[tuple[str, tuple[int, int, int]]]  # label text and its colour, before wrapping
    image: Image.Image | None  # None: the file could not be read (a grey cell says so)


@dataclass
class Sheet:
    image: Image.Image
    # per cell: image_id, box (x0, y0, x1, y1) of its thumbnail area, label (as wrapped), label_box
    cells: list[dict]


def _font(thumb: int):
    return ImageFont.load_default(size=max(9, thumb // 16))


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; a word longer than a line is cut."""
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if draw.textlength(candidate, font=font) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while draw.textlength(word, font=font) > width and len(word) > 1:
            cut = len(word)
            while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def labelled_sheet(cells: list[Cell], thumb: int, columns: int, label_lines: int,
                   background: tuple[int, int, int] = (255, 255, 255)) -> Sheet:
    """Cells of ``thumb`` pixels wide, each a thumbnail over at most ``label_lines`` lines of text
    (the last line ends in "…" when the label is longer)."""
    font = _font(thumb)
    line_height = font.size + 3
    margin = 4
    width = max(thumb, MIN_LABEL_WIDTH)  # a reason code must fit on one line, whatever the thumbnail size
    cell_w, cell_h = width + 2 * margin, thumb + 2 * margin + label_lines * line_height
    columns = max(1, min(columns, len(cells) or 1))
    rows = max(1, -(-len(cells) // columns))
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), background)
    draw = ImageDraw.Draw(sheet)
    placed = []
    for i, cell in enumerate(cells):
        left, y = (i % columns) * cell_w + margin, (i // columns) * cell_h + margin
        x = left + (width - thumb) // 2
        if cell.image is None:
            draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=MISSING_FILL)
            draw.text((x + 4, y + thumb // 2 - font.size), "image missing", fill=REJECTED, font=font)
        else:
            image = cell.image.convert("RGB")
            image.thumbnail((thumb, thumb), Image.Resampling.BILINEAR)
            sheet.paste(image, (x + (thumb - image.width) // 2, y + (thumb - image.height) // 2))
        wrapped: list[tuple[str, tuple[int, int, int]]] = []
        for text, colour in cell.lines:
            wrapped += [(line, colour) for line in _wrap(draw, text, font, width)]
        if len(wrapped) > label_lines:
            last, colour = wrapped[label_lines - 1]
            while last and draw.textlength(last + "…", font=font) > width:
                last = last[:-1]
            wrapped = wrapped[:label_lines - 1] + [(last + "…", colour)]
        for k, (line, colour) in enumerate(wrapped):
            draw.text((left, y + thumb + 2 + k * line_height), line, fill=colour, font=font)
        placed.append({"image_id": cell.image_id, "box": [x, y, x + thumb, y + thumb],
                       "label": [line for line, _ in wrapped],
                       "label_box": [left, y + thumb, left + width, y + thumb + 2 + label_lines * line_height]})
    return Sheet(sheet, placed)


def accepted_cells(rows: list[dict], mycanvas_dir: Path, cache_dir: Path, thumb: int) -> list[Cell]:
    """One cell per exported image: its id, composition, scene and any warnings."""
    images = cached_thumbnails([(mycanvas_dir / r["file_name"], r["image_sha256"]) for r in rows], cache_dir, thumb)
    return [Cell(row["image_id"],
                 [(row["composition"], INK), (f"scene: {row['scene']}", MUTED)]
                 + [(f"⚠ {w}", WARNING) for w in row.get("warnings", [])], image)
            for row, image in zip(rows, images)]


def rejected_cells(rows: list[dict], data_dir: Path, cache_dir: Path, thumb: int,
                   problems: list[dict]) -> list[Cell]:
    """One cell per rejected image, with its reason codes and reasons; an image that cannot be read
    gets a grey cell and a line in ``problems`` naming the file and why."""
    from .roots import DATA, Root

    root = Root(DATA, data_dir, "data_dir")
    cells = []
    for row in rows:
        image = None
        try:
            path = root.locate(row["source_image"])
            image = cached_thumbnails([(path, row.get("source_sha256"))], cache_dir, thumb)[0]
        except (OSError, ValueError, KeyError) as exc:
            problems.append({"path": str(row.get("source_image", row.get("image_id"))),
                             "reason": f"rejected image not shown on the rejected sheet: {exc}"})
        cells.append(Cell(row["image_id"],
                          [(row["image_id"], INK), (f"scene: {row['scene']}", MUTED),
                           (" + ".join(dict.fromkeys(row.get("reason_codes", []))) or "rejected", REJECTED)]
                          + [(reason, REJECTED) for reason in row.get("reasons", [])], image))
    return cells


def one_of_each_reason_first(rows: list[dict], limit: int) -> list[dict]:
    """Up to ``limit`` rejected rows, taking them in turn from each set of reason codes, so that
    every kind of rejection shows on the sheet even when one photo causes most of them."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(set(row.get("reason_codes", [])))), []).append(row)
    chosen, queues = [], list(groups.values())
    while len(chosen) < limit and queues:
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
        queues = [q for q in queues if q]
    return chosen
