"""The report as a person looks at it: labelled contact sheets, the rejected images' sheet, the
per-composition table in report.html, and plot legends that cover no bar."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from gen4gen.config import PipelineConfig
from gen4gen.config.stages import FilterConfig, ReportConfig
from gen4gen.filtering import check_image
from gen4gen.report import dataset_statistics, write_report
from gen4gen.report_plots import dataset_figure, metrics_figure
from gen4gen.report_sheets import REJECTED, WARNING, one_of_each_reason_first

COLOURS = {"a+b/000": (220, 30, 30), "a+b/001": (30, 200, 40), "b+c/000": (30, 40, 220),
           "a+b/002": (240, 200, 20), "b+c/001": (200, 30, 200), "b+c/002": (20, 200, 200)}
THUMB = 64


def _row(image_id: str, scene: str, **extra) -> dict:
    composition, index = image_id.split("/")
    return {"image_id": image_id, "composition": composition, "scene": scene,
            "captions": {"detailed": "A photo of an a and a b on a lawn."},
            "concepts": [{"concept": "a", "checks": {"area_fraction": 0.1}},
                         {"concept": "b", "checks": {"area_fraction": 0.05}}], **extra}


@pytest.fixture
def export(tmp_path):
    """An export folder with three accepted images, three rejected ones (one of them missing) and stats."""
    data = tmp_path / "data"
    mycanvas = data / "mycanvas"
    mycanvas.mkdir(parents=True)
    accepted, rejected = [], []
    warnings = {"a+b/001": ["floating: b's base is 30 px above the floor"]}
    for image_id, scene in (("a+b/000", "lawn"), ("a+b/001", "brick_wall"), ("b+c/000", "gravel_path")):
        name = image_id.replace("/", "_") + ".png"
        Image.new("RGB", (128, 128), COLOURS[image_id]).save(mycanvas / name)
        accepted.append(_row(image_id, scene, file_name=name, image_sha256=image_id.replace("/", "-").ljust(24, "0"),
                             warnings=warnings.get(image_id, [])))
    reasons = {"a+b/002": (["truncated_source"], ["a (photo a.png): cut by its photo's frame"]),
               "b+c/001": (["too_small", "occluded"], ["c: visible area 0.4% is below 1%", "c: only 40% visible"]),
               "b+c/002": (["truncated_source"], ["a (photo a.png): cut by its photo's frame"])}
    for image_id, (codes, why) in reasons.items():
        relative = f"recoloured/{image_id}.png"
        if image_id != "b+c/002":  # this one's file is gone: the sheet says so, the report goes on
            (data / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (128, 128), COLOURS[image_id]).save(data / relative)
        rejected.append(_row(image_id, "lawn", source_image=relative, source_sha256=None, reason_codes=codes,
                             reasons=why, warnings=[]))
    for name, rows in (("metadata.jsonl", accepted), ("rejected.jsonl", rejected)):
        (mycanvas / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = {"problems": [], "photo_findings": [{"photo": "a/a.png", "code": "truncated_source", "threshold": 0.1,
                                                 "value": 0.9, "detail": "a/a.png: fails in all 2 of its uses: cut by "
                                                                         "its photo's frame; choose another photo"}],
             "dropped_layouts": {"b+c": [{"index": 3, "reason": "b cannot reach the minimum box size"}]}}
    (mycanvas / "stats.json").write_text(json.dumps(stats))
    return data, accepted, rejected


def _colour_near(pixel, colour, tolerance=6) -> bool:
    return all(abs(int(p) - c) <= tolerance for p, c in zip(pixel, colour))


def _has_colour(region: np.ndarray, colour, tolerance=40) -> bool:
    return bool((np.abs(region.astype(int) - np.array(colour)).max(axis=-1) <= tolerance).any())


def test_contact_sheet_labels_each_image_with_its_composition_scene_and_warnings(export, tmp_path):
    data, accepted, _ = export
    out = tmp_path / "reports"
    config = ReportConfig(contact_sheet_thumb=THUMB, contact_sheet_columns=2)
    write_report(data / "mycanvas", out, config, data_dir=data)
    report = json.loads((out / "report.json").read_text())
    cells = report["sheets"]["contact_sheet.png"]
    assert [c["image_id"] for c in cells] == [r["image_id"] for r in accepted]
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
    for cell, row in zip(cells, accepted):
        x0, y0, x1, y1 = cell["box"]
        # The thumbnail in the cell is the image the label names.
        assert _colour_near(sheet[(y0 + y1) // 2, (x0 + x1) // 2], COLOURS[row["image_id"]])
        label = " ".join(cell["label"])
        assert row["composition"] in label and f"scene: {row['scene']}" in label
        # The label's text is drawn under the thumbnail, in the warning colour only for a warned image.
        lx0, ly0, lx1, ly1 = cell["label_box"]
        strip = sheet[ly0:ly1, lx0:lx1]
        assert (strip.max(axis=-1) < 120).sum() > 20
        assert _has_colour(strip, WARNING, 30) == bool(row["warnings"])
        assert ("floating" in label) == bool(row["warnings"])


def test_rejected_sheet_prints_the_reasons_and_a_missing_file_is_named(export, tmp_path):
    data, _, rejected = export
    out = tmp_path / "reports"
    stats = write_report(data / "mycanvas", out, ReportConfig(contact_sheet_thumb=THUMB), data_dir=data)
    cells = {c["image_id"]: c for c in stats["sheets"]["rejected_sheet.png"]}
    assert set(cells) == {r["image_id"] for r in rejected}
    sheet = np.asarray(Image.open(out / "rejected_sheet.png").convert("RGB"))
    for row in rejected:
        cell = cells[row["image_id"]]
        label = " ".join(cell["label"])
        assert " + ".join(row["reason_codes"]) in label and row["reasons"][0].split(" ")[0] in label
        x0, y0, x1, y1 = cell["box"]
        centre = sheet[(y0 + y1) // 2 + 12, (x0 + x1) // 2]
        if row["image_id"] == "b+c/002":
            assert _colour_near(centre, (225, 225, 225))  # the grey "image missing" cell
        else:
            assert _colour_near(centre, COLOURS[row["image_id"]])
        lx0, ly0, lx1, ly1 = cell["label_box"]
        assert _has_colour(sheet[ly0:ly1, lx0:lx1], REJECTED)
    (problem,) = stats["report_problems"]
    assert problem["path"] == "recoloured/b+c/002.png" and "rejected image not shown" in problem["reason"]
    assert "recoloured/b+c/002.png" in (out / "report.md").read_text()


def test_rejected_sheet_shows_every_kind_of_reason_before_repeating_one():
    rows = [{"image_id": f"x/{i:03d}", "reason_codes": ["truncated_source"]} for i in range(10)]
    rows.insert(7, {"image_id": "y/000", "reason_codes": ["too_small"]})
    rows.append({"image_id": "z/000", "reason_codes": ["too_small", "occluded"]})
    chosen = one_of_each_reason_first(rows, 3)
    assert [r["image_id"] for r in chosen] == ["x/000", "y/000", "z/000"]
    assert len(one_of_each_reason_first(rows, 100)) == len(rows)


def test_html_has_the_per_composition_table_and_the_photos_to_replace(export, tmp_path):
    data, _, _ = export
    out = tmp_path / "reports"
    write_report(data / "mycanvas", out, ReportConfig(contact_sheet_thumb=THUMB), data_dir=data)
    html = (out / "report.html").read_text()
    rows = {m[0]: m[1:] for m in re.findall(
        r"<tr><td class='l'>([^<]+)</td><td>(\d+)</td><td>(\d+)</td><td class='l'>([^<]*)</td><td class='l'>([^<]*)</td></tr>",
        html)}
    assert rows["a+b"][:3] == ("2", "1", "truncated_source ×1")
    assert rows["b+c"][:3] == ("1", "2", "occluded ×1, too_small ×1, truncated_source ×1")
    assert rows["b+c"][3] == "image 003: b cannot reach the minimum box size" and rows["a+b"][3] == "–"
    markdown = (out / "report.md").read_text()
    assert "| b+c | 1 | 2 | occluded ×1, too_small ×1, truncated_source ×1 | image 003: b cannot reach" in markdown
    for text in (html, markdown):
        assert "Photos to replace" in text and "a/a.png" in text and "rejected_sheet.png" in text


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _assert_legends_clear(figure) -> int:
    """No legend covers a bar or a title anywhere in the figure; returns how many legends were checked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
    bars = [p.get_window_extent(renderer) for ax in figure.axes for p in ax.patches if p.get_height() and p.get_width()]
    titles = [t.get_window_extent(renderer) for ax in figure.axes for t in (ax.title, ax._left_title, ax._right_title)
              if t.get_text()]
    assert bars
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert not [b for b in bars if _overlaps(box, b)], "a legend covers a bar"
        assert not [t for t in titles if _overlaps(box, t)], "a legend covers a title"
    return len(legends)


def test_dataset_plot_legend_covers_no_bar():
    # Every composition full to the axis' right end: where a legend inside the axes would sit.
    accepted = [_row(f"c{k:02d}+d/{i:03d}", "lawn") for k in range(12) for i in range(6)]
    for row in accepted:
        row["captions"]["detailed"] = "word " * 40
    stats = dataset_statistics(accepted, [])
    assert _assert_legends_clear(dataset_figure(stats, accepted)) == 1


def test_metrics_plot_legends_cover_no_bar():
    summary = {"cp_clip": 0.98, "detection_rate": 1.0, "personalisation": 0.97, "ti_clip": {"train": 0.99},
               "clip_i": 0.99}
    result = {"summary": summary, "breakdowns": {"by_concept_count": {"2": summary, "3": summary},
                                                 "by_composition": {f"c{k}": summary for k in range(8)}}}
    assert _assert_legends_clear(metrics_figure({"sets": {"mycanvas": result, "generated": result}})) == 2


def test_a_switched_off_check_leaves_a_warning_on_the_accepted_image():
    # An object whose base is 40 px above the floor's top edge, from a photo cut by its frame.
    obj = {"concept": "a", "class_name": "cup", "source_photo": "a/a.png",
           "stats": {"visible_fraction": 1.0, "inside_fraction": 1.0, "area_fraction": 0.1, "mask_fill": 0.6},
           "photo_findings": [{"code": "truncated_source", "detail": "cup: cut by its photo's frame"}],
           "pasted_box": [10, 10, 60, 60], "ground": {"base_y": 60, "floor_top_y": 100, "height_px": 50,
                                                      "depth_scale": None}}
    strict = check_image([obj], FilterConfig())
    assert not strict.accepted and set(strict.codes) == {"truncated_source", "floating"} and not strict.warnings
    lenient = check_image([obj], FilterConfig(photo_checks=False), "sdxl")  # floating is off with a generative repaint
    assert lenient.accepted and not lenient.codes
    assert sorted(w.split(":")[0] for w in lenient.warnings) == ["floating", "truncated_source"]


def test_export_records_dropped_layouts_and_warnings(tmp_path):
    from gen4gen.stages.export import _dropped_layouts

    config = PipelineConfig(data_dir=str(tmp_path / "data"))
    folder = config.paths.layouts("a+b")
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"images": [], "dropped": [{"index": 2, "reason": "too small"}]}))
    bad = config.paths.layouts("b+c")
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_text("{not json")  # damaged: the layouts stage reports it; the stats go on
    registry = {"compositions": [{"key": "a+b"}, {"key": "b+c"}, {"key": "c+d"}]}
    assert _dropped_layouts(registry, config) == {"a+b": [{"index": 2, "reason": "too small"}]}
