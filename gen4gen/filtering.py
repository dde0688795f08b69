"""Per-image quality checks for MyCanvas; every rejection keeps its reasons and scores.

Like datatrove's filters with an exclusion writer: a check never drops an image silently.
Besides the geometric checks: the cut-out findings of each object's photo (recorded by the
segmentation stage) and the placement checks of gen4gen.realism_checks (``implausible_scale``,
``floating``), each reason with its finding's code.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import PurePath


@dataclass
class CheckOutcome:
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    # one per reason: occluded, truncated, too_small, degenerate_mask, truncated_source, fragments,
    # rectangular_cutout, implausible_scale, floating
    codes: list[str] = field(default_factory=list)
    # What a check that is switched off would have said (``code: reason``): kept on an accepted
    # image's row and label, so a person looking at it knows what to look for.
    warnings: list[str] = field(default_factory=list)


def check_image(objects: list[dict], config, repaint_backend: str = "scene_bank") -> CheckOutcome:
    """Apply the checks to one image's objects (each with ``concept`` and ``stats``; from a
    ground-plane composite also ``ground``, ``pasted_box`` and ``photo_findings``).

    ``config`` is the [filter] section. The placement checks are on by default only for the
    embedded scene-bank repainter (``repaint_backend``); a generative one draws its own ground.
    """
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
    warnings: list[str] = []
    for code, reason, enforced in realism_findings(objects, config, repaint_backend):
        if enforced:
            reasons.append(reason)
            codes.append(code)
        else:
            warnings.append(f"{code}: {reason}")
    return CheckOutcome(not reasons, reasons, scores, codes, warnings)


def placement_checks_on(setting: bool | None, repaint_backend: str) -> bool:
    """A placement check's setting: None means on with the scene-bank repainter only."""
    return repaint_backend == "scene_bank" if setting is None else setting


def realism_findings(objects: list[dict], config, repaint_backend: str) -> list[tuple[str, str, bool]]:
    """(code, reason, enforced) for each realism finding of one image's objects; a finding of a
    check that is switched off is returned with ``enforced`` false (a warning, not a rejection)."""
    from .realism_checks import DEFAULT_THRESHOLDS, floating, implausible_scale
    from .size_priors import real_world_size

    found = []
    for obj in objects:
        photo = PurePath(obj.get("source_photo", "")).name
        for finding in obj.get("photo_findings", []):
            detail = finding["detail"].removeprefix(f"{obj['class_name']}: ")
            found.append((finding["code"], f"{obj['concept']} (photo {photo}): {detail}", bool(config.photo_checks)))
    thresholds = dataclasses.replace(DEFAULT_THRESHOLDS, max_scale_contradiction=config.max_scale_contradiction,
                                     floating_tolerance_px=config.floating_tolerance_px)
    standing = [o for o in objects if o.get("ground")]
    enforced = placement_checks_on(config.floating, repaint_backend)
    for obj in standing:
        x0, _, x1, _ = obj["pasted_box"]
        base = obj["ground"]["base_y"]
        finding = floating((x0, base - 1, x1, base), obj["ground"]["floor_top_y"], class_name=obj["concept"],
                           thresholds=thresholds)
        if finding:
            found.append((finding.code, finding.detail, enforced))
    observations = [(o["concept"], o["ground"]["height_px"], real_world_size(o["class_name"]),
                     o["ground"]["depth_scale"]) for o in standing if o["ground"]["depth_scale"]]
    finding = implausible_scale(observations, thresholds)
    if finding:
        found.append((finding.code, finding.detail, placement_checks_on(config.implausible_scale, repaint_backend)))
    return found
