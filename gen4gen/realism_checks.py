"""Offline realism checks: each returns ``None`` or a :class:`Finding` with its number and limit.

Two kinds of check:

* *photo* checks look at one concept photo's cut-out (:class:`~gen4gen.cutout_quality.CutoutQuality`):
  :func:`truncated_source`, :func:`fragments`, :func:`rectangular_cutout`. They fail in every
  image that uses the photo, so :func:`photo_findings` reports such a photo once.
* *placement* checks look at one composed image: :func:`implausible_scale` (relative sizes
  against real-world priors, after perspective) and :func:`floating` (an object's base above
  the floor with nothing under it).

Like :mod:`gen4gen.filtering`, nothing is dropped silently: a finding names its code, says
what is wrong in words, and carries the measured value and the threshold it crossed (for
every check here, a value above the threshold is the bad side).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, NamedTuple, Sequence

from gen4gen.config import FilterConfig, SegmentationConfig
from gen4gen.cutout_quality import SIDES, CutoutQuality


@dataclass(frozen=True)
class RealismThresholds:
    """Limits of the realism checks (value above the limit is the bad side).

    Their defaults and the reasons for them live in the configuration: ``[segmentation]``
    (the photo checks, decided when a cut-out is made) and ``[filter]`` (the placement checks).
    """

    max_frame_contact: float  # segmentation.max_frame_contact (truncated_source)
    max_parts: int  # segmentation.max_parts (fragments)
    max_rectangularity: float  # segmentation.max_rectangularity (rectangular_cutout)
    max_scale_contradiction: float  # filter.max_scale_contradiction (implausible_scale)
    floating_tolerance_px: int  # filter.floating_tolerance_px (floating)

    @classmethod
    def from_config(cls, segmentation, filter_config) -> "RealismThresholds":
        """The thresholds of a :class:`~gen4gen.config.SegmentationConfig` and a :class:`~gen4gen.config.FilterConfig`."""
        return cls(max_frame_contact=segmentation.max_frame_contact, max_parts=segmentation.max_parts,
                   max_rectangularity=segmentation.max_rectangularity,
                   max_scale_contradiction=filter_config.max_scale_contradiction,
                   floating_tolerance_px=filter_config.floating_tolerance_px)


DEFAULT_THRESHOLDS = RealismThresholds.from_config(SegmentationConfig(), FilterConfig())

# Classes whose photos are normally cut by the frame, and whose cut-outs are used that way
# (standing against a canvas edge or as a backdrop): a building or a tree is rarely
# photographed whole at a usable resolution, a wall or a fence has no natural end. Short on
# purpose: for every object a personalisation dataset pastes into a scene (pets, toys, cups,
# bags, vehicles) a frame-cut photo is a defect.
FRAMED_CLASSES: frozenset[str] = frozenset({"building", "house", "wall", "fence", "tree"})

# Classes that are box-shaped seen from the front, so a near-rectangular mask is the object
# itself, not a failed cut-out.
BOXY_CLASSES: frozenset[str] = frozenset({
    "book", "box", "tv", "television", "monitor", "laptop", "microwave", "oven", "refrigerator",
    "fridge", "phone", "cell phone", "smartphone", "tablet", "suitcase", "keyboard", "remote",
    "toaster", "painting", "picture", "poster", "sign", "card", "door", "window", "cabinet",
    # cylinders seen from the side (DreamBooth's can: 0.92-0.94 of its box)
    "can", "tin", "jar", "candle", "canister", "gift box", "present",
})


@dataclass(frozen=True)
class Finding:
    code: str  # truncated_source, fragments, rectangular_cutout, implausible_scale, floating
    detail: str  # what is wrong, in words, naming the object
    value: float  # the measured number
    threshold: float  # the limit it crossed (value > threshold is the bad side)

    def to_dict(self) -> dict:
        return asdict(self)


class ScaleObservation(NamedTuple):
    """One object of an image for :func:`implausible_scale` (a plain 4-tuple works as well)."""

    class_name: str
    box_height_px: float
    prior_height_m: float | None  # gen4gen.size_priors.real_world_size(class_name); None: unknown
    depth_scale: float  # gen4gen.ground_plane.depth_scale at the object's base (1.0 without perspective)


# ---------------------------------------------------------------- photo checks
def truncated_source(quality: CutoutQuality, class_name: str,
                     framed_classes: frozenset[str] = FRAMED_CLASSES,
                     allowed_sides: Iterable[str] = (),
                     thresholds: RealismThresholds = DEFAULT_THRESHOLDS) -> Finding | None:
    """The object is cut by its own photo's frame: its mask runs along a border of the photo.

    Quiet for ``framed_classes`` and for ``allowed_sides`` (a caller that stands the object on
    the canvas's bottom edge, hiding a cut base, passes ``{"bottom"}``).
    """
    if _matches(class_name, framed_classes):
        return None
    allowed = set(allowed_sides)
    unknown = allowed - set(SIDES)
    if unknown:
        raise ValueError(f"allowed_sides must be among {SIDES}, got {sorted(unknown)}")
    limit = thresholds.max_frame_contact
    cut = {side: v for side, v in quality.frame_contact.items() if side not in allowed and v > limit}
    if not cut:
        return None
    worst = max(cut.values())
    sides = ", ".join(f"{side} {v:.0%}" for side, v in sorted(cut.items(), key=lambda kv: -kv[1]))
    return Finding("truncated_source",
                   f"{class_name}: cut by its photo's frame ({sides} of the border; "
                   f"max_frame_contact {limit:.0%}): part of the object is missing",
                   round(worst, 4), limit)


def fragments(quality: CutoutQuality, thresholds: RealismThresholds = DEFAULT_THRESHOLDS,
              class_name: str = "object") -> Finding | None:
    """Several disconnected parts remained after cleaning (two objects, or one split in pieces)."""
    limit = thresholds.max_parts
    if quality.parts <= limit:
        return None
    return Finding("fragments",
                   f"{class_name}: the cut-out has {quality.parts} disconnected parts (max_parts {limit}); "
                   f"the photo shows several objects or one split by an occluder",
                   float(quality.parts), float(limit))


def rectangular_cutout(quality: CutoutQuality, class_name: str = "object",
                       boxy_classes: frozenset[str] = BOXY_CLASSES,
                       thresholds: RealismThresholds = DEFAULT_THRESHOLDS) -> Finding | None:
    """The mask is close to its own bounding box: a rectangle of background was kept."""
    if quality.parts == 0 or _matches(class_name, boxy_classes):
        return None
    limit = thresholds.max_rectangularity
    if quality.rectangularity < limit:
        return None
    return Finding("rectangular_cutout",
                   f"{class_name}: the mask fills {quality.rectangularity:.0%} of its bounding box "
                   f"(max_rectangularity {limit:.0%}): a rectangle was cut, not the object's outline",
                   round(quality.rectangularity, 4), limit)


def cutout_findings(quality: CutoutQuality, class_name: str,
                    thresholds: RealismThresholds = DEFAULT_THRESHOLDS,
                    framed_classes: frozenset[str] = FRAMED_CLASSES,
                    boxy_classes: frozenset[str] = BOXY_CLASSES,
                    allowed_sides: Iterable[str] = ()) -> list[Finding]:
    """All photo checks of one cut-out, in a fixed order."""
    found = [truncated_source(quality, class_name, framed_classes, allowed_sides, thresholds),
             fragments(quality, thresholds, class_name),
             rectangular_cutout(quality, class_name, boxy_classes, thresholds)]
    return [f for f in found if f is not None]


# ---------------------------------------------------------------- placement checks
def implausible_scale(objects: Sequence[tuple[str, float, float | None, float]],
                      thresholds: RealismThresholds = DEFAULT_THRESHOLDS) -> Finding | None:
    """Relative sizes contradict the real-world priors by more than ``max_scale_contradiction``.

    Each object is (class name, box height in px, prior height in metres, depth scale). In a
    consistent picture every object implies the same camera scale, box height / (prior height
    x depth scale) px per metre at the canvas bottom; the finding's value is the largest over
    the smallest. Objects without a prior (None or not positive) are left out.
    """
    implied = []
    for name, height_px, prior_m, depth in objects:
        if prior_m is None or not prior_m > 0 or not depth > 0 or not height_px > 0:
            continue
        implied.append((float(height_px) / (float(prior_m) * float(depth)), name, float(height_px), float(prior_m)))
    if len(implied) < 2:
        return None
    low, high = min(implied), max(implied)
    ratio = high[0] / low[0]
    limit = thresholds.max_scale_contradiction
    if ratio <= limit:
        return None
    return Finding("implausible_scale",
                   f"{high[1]} ({high[2]:.0f} px for {high[3]:g} m) is drawn {ratio:.1f}x larger relative to "
                   f"{low[1]} ({low[2]:.0f} px for {low[3]:g} m) than their real sizes allow at their depths "
                   f"(max_scale_contradiction {limit:g})",
                   round(ratio, 4), limit)


def floating(box: tuple[int, int, int, int], floor_top_y: int, tolerance_px: int | None = None,
             supports: Sequence[tuple[int, int, int, int]] = (), class_name: str = "object",
             thresholds: RealismThresholds = DEFAULT_THRESHOLDS) -> Finding | None:
    """The object's base (box bottom) lies above the floor region, with nothing under it.

    ``supports`` are boxes of things it may stand on (a table): a support whose top edge is at
    or above the base and whose bottom is below it, overlapping the object horizontally, holds it.
    """
    tolerance = thresholds.floating_tolerance_px if tolerance_px is None else tolerance_px
    base = box[3]
    height_above = floor_top_y - base
    if height_above <= tolerance:
        return None
    for sx0, sy0, sx1, sy1 in supports:
        if sy0 - tolerance <= base <= sy1 and min(sx1, box[2]) > max(sx0, box[0]):
            return None
    return Finding("floating",
                   f"{class_name}: its base (y={base}) is {height_above} px above the floor, which starts at "
                   f"y={floor_top_y}, with nothing under it (tolerance {tolerance} px)",
                   float(height_above), float(tolerance))


# ---------------------------------------------------------------- aggregation
def photo_findings(photo: str, uses: Sequence[Sequence[Finding]]) -> list[Finding]:
    """The findings of a photo that failed in every one of its uses, one per code.

    ``uses`` holds, per image that used the photo, the findings about that photo's object in
    that image. A code present in all of them is reported once, with the mildest value seen
    (the photo fails even there) and the advice to choose another photo; a code present in only
    some uses belongs to those images, not to the photo. No uses: nothing to report.
    """
    if not uses:
        return []
    common = set.intersection(*({f.code for f in use} for use in uses))
    reported = []
    for code in sorted(common, key=lambda c: _first_position(c, uses[0])):
        cases = [next(f for f in use if f.code == code) for use in uses]
        mildest = min(cases, key=lambda f: f.value)
        reported.append(Finding(code, f"{photo}: fails in all {len(uses)} of its uses: {mildest.detail}; "
                                      f"choose another photo of this concept",
                                mildest.value, mildest.threshold))
    return reported


# What a photo's cut-out finding means for the user, in the words the manifest and the report use.
PHOTO_ADVICE = {
    "truncated_source": "this photo is cut by its frame",
    "fragments": "this photo's cut-out falls apart into several pieces",
    "rectangular_cutout": "this photo's cut-out is a rectangle, not the object's outline",
}


def photo_report(photo: str, findings: Sequence[Finding]) -> list[dict]:
    """One record per cut-out finding of a photo, reported once (the segmentation manifest's
    ``photo_findings``): the photo fails in every image that uses it, so the fix is the input."""
    return [{"photo": photo, "code": f.code, "value": f.value, "threshold": f.threshold, "detail": f.detail,
             "message": f"{photo}: {PHOTO_ADVICE.get(f.code, f.code)}; choose another (every image using it is "
                        f"rejected with {f.code}: {f.detail})"}
            for f in findings]


def _first_position(code: str, findings: Sequence[Finding]) -> int:
    return next(i for i, f in enumerate(findings) if f.code == code)


def _matches(class_name: str, classes: frozenset[str]) -> bool:
    """Whether a class name ends in one of ``classes`` ("old_brick-wall" matches "wall"; plurals too)."""
    words = class_name.lower().replace("_", " ").replace("-", " ").split()
    for start in range(len(words)):
        phrase = " ".join(words[start:])
        candidates = {phrase}
        if phrase.endswith("ies"):
            candidates.add(phrase[:-3] + "y")
        if phrase.endswith("es"):
            candidates.add(phrase[:-2])
        if phrase.endswith("s") and not phrase.endswith("ss"):
            candidates.add(phrase[:-1])
        if candidates & classes:
            return True
    return False
