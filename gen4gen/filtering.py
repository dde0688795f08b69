"""Per-image quality checks for MyCanvas; every rejection keeps its reasons and scores.

Like datatrove's filters with an exclusion writer: a check never drops an image silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CheckOutcome:
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    codes: list[str] = field(default_factory=list)  # one per reason: occluded, truncated, too_small, degenerate_mask


def check_image(objects: list[dict], config) -> CheckOutcome:
    """Apply the geometric checks to one image's objects (each with ``concept`` and ``stats``)."""
    reasons: list[str] = []
    codes: list[str] = []
    scores: dict = {}
    if not objects:
        return CheckOutcome(False, ["image has no objects"], {}, ["no_objects"])
    for obj in objects:
        stats, name = obj["stats"], obj["concept"]
        scores[name] = dict(stats)
        if stats["visible_fraction"] < config.min_visible_fraction:
            reasons.append(f"{name}: only {stats['visible_fraction']:.0%} visible after occlusion "
                           f"(min_visible_fraction {config.min_visible_fraction:.0%})")
            codes.append("occluded")
        if stats["inside_fraction"] < config.min_inside_fraction:
            reasons.append(f"{name}: truncated by the canvas edge, {stats['inside_fraction']:.0%} inside "
                           f"(min_inside_fraction {config.min_inside_fraction:.0%})")
            codes.append("truncated")
        if stats["area_fraction"] < config.min_area_fraction:
            reasons.append(f"{name}: visible area {stats['area_fraction']:.2%} of the canvas is below "
                           f"min_area_fraction {config.min_area_fraction:.2%}")
            codes.append("too_small")
        if stats["mask_fill"] < config.min_mask_fill:
            reasons.append(f"{name}: degenerate mask, it fills only {stats['mask_fill']:.0%} of its box "
                           f"(min_mask_fill {config.min_mask_fill:.0%})")
            codes.append("degenerate_mask")
        if stats.get("frame_fraction", 0.0) > config.max_frame_fraction:
            reasons.append(f"{name}: degenerate mask, it covers {stats['frame_fraction']:.0%} of its photo, "
                           f"so the background was kept (max_frame_fraction {config.max_frame_fraction:.0%})")
            codes.append("degenerate_mask")
    return CheckOutcome(not reasons, reasons, scores, codes)
