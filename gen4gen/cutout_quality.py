"""Cut-out clean-up and measurements: fragments, faint ghosts, rectangularity, frame contact.

Pure functions on a photo's HxW uint8 alpha (0..255, as :func:`gen4gen.segmentation.make_cutout`
stores it). :func:`clean_cutout` keeps the object's body and what is attached to it and drops
what a segmenter leaves around it; :class:`CutoutQuality` records what it saw and removed, and
:mod:`gen4gen.realism_checks` turns those numbers into findings. OpenCV is imported inside
functions so importing this module stays cheap.

Vocabulary (alpha levels):

* *solid*: alpha >= ``ghost_alpha`` (default 96). Connected solid regions are the candidate
  parts of the object. A thin handle or tail, even 1-3 px wide, is solid where it is drawn
  at all, so no morphological opening is ever applied (that would erase it).
* *soft*: 0 < alpha < ``ghost_alpha``. Kept within ``soft_edge_px`` of the kept solid pixels
  (the body's anti-aliased edge, fur, motion blur); beyond that it is a *ghost* (a faint
  shadow, reflection or leftover background smear) and is dropped.
* *opaque*: alpha >= 128 (:data:`gen4gen.compose.MASK_ON`), the mask the measurements use.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from gen4gen.config import SegmentationConfig

# The cleaning's defaults are the configuration's ([segmentation] ghost_alpha, attach_px,
# min_part_fraction, documented there).
_DEFAULTS = SegmentationConfig()
# Below this alpha a pixel is "soft": an edge pixel near the body, a ghost elsewhere.
GHOST_ALPHA = _DEFAULTS.ghost_alpha
# At or above this alpha a pixel belongs to the object's mask (same as compose.MASK_ON).
OPAQUE_ALPHA = 128
# Solid parts separated from the body by a gap of at most 2 * this many pixels count as
# attached (a handle seen through a thin seam of low alpha). 2 px radius bridges 4 px gaps.
ATTACH_DILATION_PX = _DEFAULTS.attach_px
# A detached solid part at least this share of the body's alpha mass is kept as a second
# part (a pair of shoes, an occluded limb), reported by ``parts`` for the checks to judge;
# smaller detached parts are fragments and dropped.
MIN_PART_FRACTION = _DEFAULTS.min_part_fraction
# Soft pixels this close to the kept body are its anti-aliased edge (default: at least 3 px,
# 0.5% of the photo's long side for large photos whose masks were upscaled from 1024 px).
MIN_SOFT_EDGE_PX = 3
SOFT_EDGE_FRACTION = 0.005
# A border pixel counts as touched when the opaque mask reaches within this many pixels of
# it (segmenters often leave a 1-px soft margin at the frame).
FRAME_BAND_PX = 2

SIDES = ("top", "bottom", "left", "right")


@dataclass
class CutoutQuality:
    """What a cut-out's alpha looks like after :func:`clean_cutout`, and what cleaning removed."""

    photo_size: tuple[int, int]  # (height, width) of the photo
    area_fraction: float  # opaque pixels of the cleaned cut-out / photo pixels
    components: int  # connected solid regions before cleaning (every one, however small)
    parts: int  # disconnected solid parts kept: 1 for a clean object, 0 when empty
    fragment_fraction: float  # share of the alpha mass removed as detached fragments
    ghost_fraction: float  # share of the alpha mass removed as faint regions far from the body
    rectangularity: float  # opaque area / area of its bounding box (0.0 when empty)
    frame_contact: dict[str, float] = field(default_factory=dict)  # side -> share of that border touched
    bbox: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1), end-exclusive, of the opaque mask

    @property
    def max_frame_contact(self) -> float:
        return max(self.frame_contact.values(), default=0.0)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["photo_size"] = list(self.photo_size)
        data["bbox"] = list(self.bbox) if self.bbox is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "CutoutQuality":
        bbox = data.get("bbox")
        return cls(photo_size=tuple(int(v) for v in data["photo_size"]),
                   area_fraction=float(data["area_fraction"]), components=int(data["components"]),
                   parts=int(data["parts"]), fragment_fraction=float(data["fragment_fraction"]),
                   ghost_fraction=float(data["ghost_fraction"]), rectangularity=float(data["rectangularity"]),
                   frame_contact={str(k): float(v) for k, v in data["frame_contact"].items()},
                   bbox=tuple(int(v) for v in bbox) if bbox is not None else None)


def clean_cutout(alpha: np.ndarray, ghost_alpha: int = GHOST_ALPHA,
                 attach_dilation_px: int = ATTACH_DILATION_PX, soft_edge_px: int | None = None,
                 min_part_fraction: float = MIN_PART_FRACTION) -> tuple[np.ndarray, CutoutQuality]:
    """The alpha with detached fragments and far faint ghosts removed, and its :class:`CutoutQuality`.

    The *body* is the solid region (alpha >= ``ghost_alpha``) with the largest alpha mass:
    mass rather than pixel count, so a wide halo just above the ghost level cannot outvote a
    smaller opaque object. Solid regions within ``2 * attach_dilation_px`` of the body (or of
    another attached region) are attached and kept; a detached region with at least
    ``min_part_fraction`` of the body's mass is kept as a further part (``parts`` > 1, for
    :func:`gen4gen.realism_checks.fragments`); the others are fragments. Soft pixels are kept
    within ``soft_edge_px`` of the kept solid pixels. Kept pixels keep their exact alpha.
    """
    alpha = _check_alpha(alpha)
    keep, components, parts, edge_px = _analyse(alpha, ghost_alpha, attach_dilation_px, soft_edge_px,
                                                 min_part_fraction)
    cleaned = np.where(keep, alpha, 0).astype(np.uint8)
    removed = (alpha > 0) & ~keep
    total = float(alpha.sum(dtype=np.float64))
    fragment_mass = ghost_mass = 0.0
    if total > 0 and removed.any():
        import cv2

        solid = alpha >= ghost_alpha
        # Removed pixels that are solid, or soft but hugging a solid region, went with a fragment;
        # the rest were faint ghosts on their own.
        near_solid = cv2.distanceTransform((~solid).astype(np.uint8), cv2.DIST_L2, 3) <= edge_px
        fragment_pixels = removed & near_solid
        fragment_mass = float(alpha[fragment_pixels].sum(dtype=np.float64))
        ghost_mass = float(alpha[removed & ~fragment_pixels].sum(dtype=np.float64))
    quality = _measure(cleaned, components, parts,
                       fragment_mass / total if total else 0.0, ghost_mass / total if total else 0.0)
    return cleaned, quality


def measure_cutout(alpha: np.ndarray, ghost_alpha: int = GHOST_ALPHA,
                   attach_dilation_px: int = ATTACH_DILATION_PX, soft_edge_px: int | None = None,
                   min_part_fraction: float = MIN_PART_FRACTION) -> CutoutQuality:
    """The :class:`CutoutQuality` of ``alpha`` as :func:`clean_cutout` would leave it.

    For an alpha that is already clean the removed fractions are 0 and the measurements are
    those of the alpha itself.
    """
    return clean_cutout(alpha, ghost_alpha, attach_dilation_px, soft_edge_px, min_part_fraction)[1]


def frame_contact(mask: np.ndarray, band_px: int = FRAME_BAND_PX) -> dict[str, float]:
    """Per side of the photo, the share of that border's length the mask reaches (within ``band_px``)."""
    mask = np.asarray(mask).astype(bool)
    height, width = mask.shape
    band_y, band_x = max(1, min(band_px, height)), max(1, min(band_px, width))
    return {
        "top": float(mask[:band_y].any(axis=0).mean()),
        "bottom": float(mask[height - band_y:].any(axis=0).mean()),
        "left": float(mask[:, :band_x].any(axis=1).mean()),
        "right": float(mask[:, width - band_x:].any(axis=1).mean()),
    }


def rectangularity(mask: np.ndarray) -> float:
    """Mask area / the area of its axis-aligned bounding box; 0.0 for an empty mask."""
    mask = np.asarray(mask).astype(bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0.0
    box_area = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    return float(np.count_nonzero(mask) / box_area)


# ---------------------------------------------------------------- internals
def _check_alpha(alpha: np.ndarray) -> np.ndarray:
    alpha = np.asarray(alpha)
    if alpha.ndim != 2 or alpha.dtype != np.uint8:
        raise ValueError(f"expected an HxW uint8 alpha, got shape {alpha.shape} dtype {alpha.dtype}")
    return alpha


def _soft_edge_px(shape: tuple[int, int], soft_edge_px: int | None) -> int:
    if soft_edge_px is not None:
        return max(0, int(soft_edge_px))
    return max(MIN_SOFT_EDGE_PX, round(SOFT_EDGE_FRACTION * max(shape)))


def _analyse(alpha: np.ndarray, ghost_alpha: int, attach_dilation_px: int, soft_edge_px: int | None,
             min_part_fraction: float) -> tuple[np.ndarray, int, int, int]:
    """(pixels to keep, solid components before, parts kept, soft edge width used)."""
    import cv2

    edge_px = _soft_edge_px(alpha.shape, soft_edge_px)
    solid = (alpha >= ghost_alpha).astype(np.uint8)
    count, labels = cv2.connectedComponents(solid, connectivity=8)
    components = count - 1
    if components == 0:
        return np.zeros(alpha.shape, bool), 0, 0, edge_px
    mass = np.bincount(labels.ravel(), weights=alpha.ravel().astype(np.float64), minlength=count)
    mass[0] = 0.0
    # Groups: solid regions joined across gaps of at most 2 * attach_dilation_px. Grouping on
    # the dilated mask is transitive, so a part attached to an attached part is attached too.
    if attach_dilation_px > 0 and components > 1:
        size = 2 * attach_dilation_px + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        _, group_labels = cv2.connectedComponents(cv2.dilate(solid, kernel), connectivity=8)
        # Each solid component lies inside exactly one dilated group: read it at any of its pixels.
        group_of = np.zeros(count, np.int64)
        group_of[labels.ravel()] = group_labels.ravel()
        group_of[0] = 0
    else:
        group_of = np.arange(count)
    group_mass = np.bincount(group_of, weights=mass)
    group_mass[0] = 0.0
    body = int(np.argmax(group_mass))
    kept_groups = np.flatnonzero(group_mass >= min_part_fraction * group_mass[body])
    kept_groups = kept_groups[kept_groups != 0]
    keep_label = np.isin(group_of, kept_groups)
    keep_label[0] = False
    kept_solid = keep_label[labels]
    keep = kept_solid.copy()
    soft = (alpha > 0) & (alpha < ghost_alpha)
    if soft.any() and edge_px > 0:
        distance = cv2.distanceTransform((~kept_solid).astype(np.uint8), cv2.DIST_L2, 3)
        keep |= soft & (distance <= edge_px)
    return keep, components, int(len(kept_groups)), edge_px


def _measure(alpha: np.ndarray, components: int, parts: int, fragment_fraction: float,
             ghost_fraction: float) -> CutoutQuality:
    opaque = alpha >= OPAQUE_ALPHA
    height, width = alpha.shape
    return CutoutQuality(
        photo_size=(height, width),
        area_fraction=round(float(np.count_nonzero(opaque)) / (height * width), 6),
        components=components,
        parts=parts,
        fragment_fraction=round(fragment_fraction, 6),
        ghost_fraction=round(ghost_fraction, 6),
        rectangularity=round(rectangularity(opaque), 6),
        frame_contact={side: round(value, 6) for side, value in frame_contact(opaque).items()},
        bbox=_bbox(opaque),
    )


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """As :func:`gen4gen.segmentation.mask_bbox` (not imported: that module loads the configuration)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
