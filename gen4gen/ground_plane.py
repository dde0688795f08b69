"""Scenes with a ground plane, and objects standing on it.

* :func:`perspective_floor_scene` turns a top-down texture (grass, gravel, a rug) into a floor
  receding to a horizon, with sky or a wall above it. A top-down texture is never an upright
  scene: pasted behind objects as it is, grass seen from above reads as a green wall and the
  objects float in front of it.
* :func:`depth_scale` and :func:`place_on_floor`: a pinhole camera over a flat floor, so an
  object's apparent height is proportional to how far its base lies below the horizon. Higher
  base, smaller object; at equal depth, real-world size ratios are kept.
* The per-object finishing (shadows, local harmonisation, edges, blur and noise, pasting) is in
  :mod:`gen4gen.compositing`.

Pure functions of their inputs (random choices come from a seed or a generator passed in):
a warped scene can be cached by (texture, backdrop, size, horizon_frac, seed, options).
OpenCV is imported inside functions so importing this module stays cheap.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from gen4gen.compositing import Box, as_rgb
from gen4gen.config import LayoutConfig

# Focal length in canvas widths (about 53 degrees of horizontal field of view): a guess
# recorded in GroundScene.guessed, used for the floor's foreshortening.
FOCAL_CANVAS = 1.0
# Distance (in units of the canvas-bottom row's distance) over which the floor fades 63% of
# the way to the haze colour, and how much darker the far floor is than the near floor.
FOG_DISTANCE = 12.0
FAR_DARKENING = 0.18
# No box wider than this fraction of the canvas (as gen4gen.layout).
MAX_BOX_WIDTH = 0.9
# No box shorter than this many pixels, whatever min_box_px says.
_MIN_BOX_HEIGHT = 8.0
# Candidate horizontal positions tried at once per object.
_CANDIDATES = 64
# Defaults of the placement knobs [layout] exposes (documented there).
_LAYOUT = LayoutConfig()


@dataclass
class GroundScene:
    image: np.ndarray  # HxWx3 uint8
    horizon_y: int  # row of the horizon (vanishing line of the floor)
    floor_top_y: int  # first floor row: the horizon, or lower where a wall stands on the floor
    light_direction: tuple[float, float]  # unit (dx, dy) in the image: where shadows fall from an object's base
    source: str  # what the scene was built from
    guessed: list[str] = field(default_factory=list)  # assumptions that were not measured

    def describe(self) -> dict:
        """The scene without its pixels (for lineage and reports)."""
        return {"size": list(self.image.shape[:2]), "horizon_y": self.horizon_y, "floor_top_y": self.floor_top_y,
                "light_direction": list(self.light_direction), "source": self.source, "guessed": list(self.guessed)}


@dataclass(frozen=True)
class Placement:
    index: int  # position in the input lists
    box: Box  # (x0, y0, x1, y1), end-exclusive; box[3] == base_y
    base_y: int  # row where the object stands on the floor
    depth: float  # distance relative to an object standing on the canvas's bottom row (1.0 there)
    depth_scale: float  # 1 / depth: apparent size factor, depth_scale(base_y, horizon, canvas)
    scale: float  # pixels per metre of real-world height at this depth
    height_m: float  # the real-world height the box was sized for

    def to_dict(self) -> dict:
        data = asdict(self)
        data["box"] = list(self.box)
        return data


# ---------------------------------------------------------------- the floor scene
def perspective_floor_scene(floor_texture: np.ndarray, backdrop: np.ndarray | None = None, size: int = 1024,
                            horizon_frac: float = 0.45, seed: int = 0, *, wall_gap_frac: float | None = None,
                            texture_span: float = 1.0, fog_distance: float = FOG_DISTANCE,
                            source: str = "floor_texture") -> GroundScene:
    """A ``size`` x ``size`` scene: ``floor_texture`` (seen from above) as a floor receding to the horizon.

    Each floor row ``y`` below the horizon ``y_h`` lies at distance proportional to 1 / (y - y_h),
    so the texture is sampled through the ground plane's homography: rows near the horizon are
    compressed, lateral lines converge. The bottom row spans ``texture_span`` texture widths;
    the texture is mirror-tiled beyond its edges and sampled from a pyramid level matched to the
    footprint of each row (no aliasing near the horizon). The floor darkens and fades into haze
    with distance.

    Above the floor: ``backdrop`` scaled to cover, or a vertical sky gradient without one. With
    ``wall_gap_frac`` the backdrop is a wall standing on the floor: the floor ends at
    ``floor_top_y = y_h + wall_gap_frac * (size - y_h)`` and the wall (or a plain wall
    gradient) fills the rows above. The seed chooses the texture offset and mirror, the crop of
    the backdrop and the light direction.
    """
    texture = as_rgb(floor_texture, "floor_texture")
    if not 0.05 <= horizon_frac <= 0.9:
        raise ValueError(f"horizon_frac must be within [0.05, 0.9], got {horizon_frac}")
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    rng = np.random.default_rng(seed)
    horizon_y = int(round(horizon_frac * size))
    floor_top_y = horizon_y
    if wall_gap_frac is not None:
        if not 0.0 < wall_gap_frac < 0.9:
            raise ValueError(f"wall_gap_frac must be within (0, 0.9), got {wall_gap_frac}")
        floor_top_y = horizon_y + max(1, int(round(wall_gap_frac * (size - horizon_y))))
    guessed = [f"horizon at {horizon_frac:g} of the height (not measured)",
               f"focal length {FOCAL_CANVAS:g} canvas width (about 53 degrees field of view)",
               "light direction drawn from the seed"]

    upper = _backdrop(backdrop, size, floor_top_y, wall_gap_frac is not None, rng)
    if backdrop is None:
        guessed.append("no backdrop: " + ("plain wall" if wall_gap_frac is not None else "sky") + " gradient")
    haze = upper[max(0, floor_top_y - max(2, floor_top_y // 20)):floor_top_y].reshape(-1, 3).mean(0) \
        if floor_top_y > 0 else texture.reshape(-1, 3).mean(0)
    floor = _warp_floor(texture, size, horizon_y, floor_top_y, texture_span, fog_distance, haze, rng)

    image = np.empty((size, size, 3), np.uint8)
    image[:floor_top_y] = upper
    image[floor_top_y:] = floor
    angle = rng.uniform(0.1, 0.5) * math.pi / 2  # below horizontal: shadows fall towards the viewer a little
    side = 1.0 if rng.random() < 0.5 else -1.0
    light = (round(side * math.cos(angle), 6), round(math.sin(angle), 6))
    return GroundScene(image=image, horizon_y=horizon_y, floor_top_y=floor_top_y, light_direction=light,
                       source=source, guessed=guessed)



def _backdrop(backdrop: np.ndarray | None, size: int, rows: int, wall: bool, rng: np.random.Generator) -> np.ndarray:
    """``rows`` x ``size`` pixels for above the floor."""
    if rows <= 0:
        return np.zeros((0, size, 3), np.uint8)
    if backdrop is not None:
        from PIL import Image

        photo = as_rgb(backdrop, "backdrop")
        h, w = photo.shape[:2]
        scale = max(size / w, rows / h)
        new_w, new_h = max(size, round(w * scale)), max(rows, round(h * scale))
        scaled = np.asarray(Image.fromarray(photo).resize((new_w, new_h), Image.Resampling.BICUBIC))
        x = int(rng.integers(0, new_w - size + 1))
        # A wall stands on the floor: keep its bottom. A distant view: keep the middle.
        y = new_h - rows if wall else (new_h - rows) // 2
        return np.ascontiguousarray(scaled[y:y + rows, x:x + size])
    if wall:
        top, bottom = np.array([214, 208, 198.0]), np.array([182, 176, 166.0])
    else:
        top, bottom = np.array([112, 156, 214.0]), np.array([206, 220, 234.0])
    jitter = rng.uniform(-8, 8, 3)
    t = np.linspace(0.0, 1.0, rows)[:, None]
    column = np.clip(top + jitter + (bottom - top) * t, 0, 255)
    return np.ascontiguousarray(np.broadcast_to((column + 0.5).astype(np.uint8)[:, None, :], (rows, size, 3)))


def _mirror(coords: np.ndarray, length: int) -> np.ndarray:
    """Continuous coordinates folded into [0, length] by mirror tiling (period 2 * length)."""
    period = 2.0 * length
    folded = np.mod(coords, period)
    return np.where(folded < length, folded, period - folded)


def _warp_floor(texture: np.ndarray, size: int, horizon_y: int, floor_top_y: int, span: float,
                fog_distance: float, haze: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The floor rows (floor_top_y .. size - 1) through the ground plane's homography."""
    import cv2

    th, tw = texture.shape[:2]
    focal = FOCAL_CANVAS * size
    bottom_t = size - horizon_y - 0.5  # the bottom row's centre below the horizon
    lateral = span * tw * bottom_t / size  # texture px per (output px x 1 / t) sideways
    ys = np.arange(floor_top_y, size, dtype=np.float64) + 0.5
    t = ys - horizon_y  # > 0: every floor row is below the horizon
    xs = np.arange(size, dtype=np.float64) + 0.5 - size / 2
    u0 = rng.uniform(0, 2 * tw)
    v_near = rng.uniform(0, 2 * th)
    # v grows towards the viewer; it is v_near at the bottom row.
    v = v_near - lateral * focal * (1.0 / t - 1.0 / bottom_t)
    # Texture px per output px: sideways lateral / t, in depth lateral * focal / t^2 (larger);
    # the pyramid level follows the larger, as trilinear filtering does: no moire near the
    # horizon, where the haze hides the lateral softness anyway.
    footprint = np.maximum(lateral / t, lateral * focal / t ** 2)
    level = np.log2(np.maximum(footprint, 1.0))
    pyramid = [texture.astype(np.float32)]
    while min(pyramid[-1].shape[:2]) >= 16 and len(pyramid) < 8:
        pyramid.append(cv2.pyrDown(pyramid[-1]))
    level = np.minimum(level, len(pyramid) - 1)
    low = np.floor(level).astype(int)
    frac = (level - low)[:, None, None]
    flip = rng.random() < 0.5
    out = np.zeros((len(ys), size, 3), np.float32)
    for lv in range(len(pyramid)):
        rows = np.flatnonzero((low == lv) | ((low == lv - 1) & (frac[:, 0, 0] > 0)))
        if rows.size == 0:
            continue
        src = pyramid[lv]
        factor = 2.0 ** lv
        u = u0 + lateral * xs[None, :] / t[rows, None]
        if flip:
            u = -u
        # Continuous texture coordinates (pixel i spans [i, i + 1)) at level 0, folded, then
        # scaled to the level; remap puts pixel centres on integers, hence the - 0.5.
        map_x = (_mirror(u, tw) / factor - 0.5).astype(np.float32)
        map_y = np.broadcast_to(_mirror(v[rows], th)[:, None] / factor - 0.5, u.shape).astype(np.float32)
        sampled = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        weight = np.where(low[rows] == lv, 1.0 - frac[rows, 0, 0], frac[rows, 0, 0]).astype(np.float32)
        out[rows] += sampled * weight[:, None, None]
    distance = bottom_t / t  # 1.0 at the bottom row
    fog = (1.0 - np.exp(-(distance - 1.0) / fog_distance)).astype(np.float32)[:, None, None]
    shade = (1.0 - FAR_DARKENING * (1.0 - 1.0 / distance)).astype(np.float32)[:, None, None]
    out = out * shade * (1.0 - fog) + haze.astype(np.float32) * fog
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- depth and placement
def depth_scale(base_y: float, horizon_y: float, canvas: int) -> float:
    """Apparent-size factor of an object standing at row ``base_y``: 1.0 at the canvas bottom.

    Pinhole camera over a flat floor: apparent height = real height x (base_y - horizon_y) /
    camera height, so the factor is (base_y - horizon_y) / (canvas - horizon_y), strictly
    increasing in ``base_y``. A base at or above the horizon cannot stand on the floor.
    """
    if canvas <= horizon_y:
        raise ValueError(f"the horizon (y={horizon_y}) must lie above the canvas bottom ({canvas})")
    if base_y <= horizon_y:
        raise ValueError(f"base y={base_y} is not below the horizon y={horizon_y}: not on the floor")
    return (base_y - horizon_y) / (canvas - horizon_y)


def place_on_floor(heights_m: list[float], aspects: list[float], scene: GroundScene, canvas: int,
                   rng: np.random.Generator, min_box_px: float = 0.0,
                   largest_height_frac: tuple[float, float] = _LAYOUT.largest_object_height,
                   max_overlap: float = _LAYOUT.max_overlap, max_attempts: int = 200, margin_px: int | None = None,
                   min_camera_height: float = _LAYOUT.min_camera_height) -> list[Placement]:
    """Boxes standing on the scene's floor, sized by real-world height and depth; in input order.

    One camera scale ``k`` (px per metre per px below the horizon) is drawn per image: an object
    of height H standing at ``base_y`` is ``k * H * (base_y - horizon)`` px tall, so a higher
    base means a smaller object and objects at equal depth keep their real-world ratios. Each
    base is drawn on the floor (at least ``margin_px`` below ``floor_top_y``, at most the canvas
    bottom) where the box fits the canvas, has an area of at least ``min_box_px`` squared (the
    paper's minimum box: pass sqrt(gen4gen.size_priors.min_box_area(n, canvas))), is at least
    8 px tall and no wider than 0.9 canvas. Small objects therefore come forward and large ones go back when
    their sizes differ a lot. Pairs overlap by at most ``max_overlap`` of the smaller box.
    The tallest box aims at ``largest_height_frac`` of the canvas; after half the attempts that
    wish is dropped. The camera stands at least ``min_camera_height`` times the tallest object's
    height above the floor (layout.min_camera_height; at 0.5 the horizon crosses the tallest
    object no lower than half-way down; a much lower camera is an ant's-eye view in which a dog
    towers like a building).
    Raises ValueError when no placement is found.
    """
    n = len(heights_m)
    if n == 0 or len(aspects) != n:
        raise ValueError(f"need one aspect per height, got {n} heights and {len(aspects)} aspects")
    heights = np.array(heights_m, np.float64)
    asp = np.array(aspects, np.float64)
    if not (np.all(np.isfinite(heights)) and np.all(heights > 0) and np.all(np.isfinite(asp)) and np.all(asp > 0)):
        raise ValueError(f"heights and aspects must be positive, got {heights_m} and {aspects}")
    ratio = canvas / scene.image.shape[0]
    horizon = scene.horizon_y * ratio
    floor_top = scene.floor_top_y * ratio
    margin = max(2, round(0.02 * (canvas - floor_top))) if margin_px is None else margin_px
    lowest_base, highest_base = math.ceil(floor_top + margin), canvas  # base rows allowed
    if lowest_base > highest_base:
        raise ValueError(f"no floor rows below y={floor_top:.0f} + margin {margin} on a {canvas} px canvas")
    t_min, t_max = lowest_base - horizon, highest_base - horizon
    max_width = MAX_BOX_WIDTH * canvas
    min_height = np.maximum(min_box_px / np.sqrt(asp), _MIN_BOX_HEIGHT)  # h * (h * aspect) >= min_box_px^2
    # k bounds: each object can meet its minimum at the bottom (lower), and fit the canvas at
    # the floor's far edge (upper): top inside (k H t <= horizon + t) and width inside.
    k_lo = float(np.max(min_height / (heights * t_max)))
    k_hi = float(np.min(np.minimum(max_width / (asp * heights * t_min), (horizon + t_min) / (heights * t_min))))
    if min_camera_height > 0:  # camera height is 1 / k metres
        k_hi = min(k_hi, 1.0 / (min_camera_height * float(heights.max())))
    if k_lo > k_hi:
        raise ValueError("objects of these real-world heights cannot all reach the minimum box size on this "
                         f"floor with the camera at least {min_camera_height:g} x the tallest object's height "
                         f"(heights {heights_m} m, min_box_px {min_box_px:g}); lower min_box_px or "
                         "min_camera_height, or choose objects of closer sizes")
    target_lo, target_hi = largest_height_frac[0] * canvas, largest_height_frac[1] * canvas
    for attempt in range(max_attempts):
        k = math.exp(rng.uniform(math.log(k_lo), math.log(k_hi))) if k_hi > k_lo else k_lo
        bases = _draw_bases(k, heights, asp, min_height, horizon, lowest_base, highest_base, max_width, rng)
        if bases is None:
            continue
        boxes_h = np.maximum(1, np.round(k * heights * (bases - horizon))).astype(int)
        boxes_w = np.maximum(1, np.round(boxes_h * asp)).astype(int)
        if np.any(boxes_h * boxes_w < min_box_px ** 2 - 1e-9) or np.any(boxes_w > max_width) \
                or np.any(bases - boxes_h < 0):
            continue
        if attempt < max_attempts // 2 and not target_lo <= boxes_h.max() <= target_hi:
            continue
        xs = _draw_columns(boxes_w, boxes_h, bases, canvas, max_overlap, rng)
        if xs is None:
            continue
        placements = []
        for i in range(n):
            base = int(bases[i])
            factor = depth_scale(base, horizon, canvas)
            box = (int(xs[i]), base - int(boxes_h[i]), int(xs[i] + boxes_w[i]), base)
            placements.append(Placement(index=i, box=box, base_y=base, depth=round(1.0 / factor, 6),
                                        depth_scale=round(factor, 6), scale=k * (base - horizon),
                                        height_m=float(heights[i])))
        return placements
    raise ValueError(f"no placement of {n} objects on the floor in {max_attempts} attempts "
                     f"(heights {heights_m} m, min_box_px {min_box_px:g}, max_overlap {max_overlap:g})")


def _draw_bases(k, heights, asp, min_height, horizon, lowest, highest, max_width, rng) -> np.ndarray | None:
    """One integer base row per object where its box fits at camera scale ``k``; None when one has none."""
    bases = np.empty(len(heights), np.int64)
    for i in range(len(heights)):
        kh = k * heights[i]
        lo = max(lowest, math.ceil(horizon + min_height[i] / kh))
        hi = min(highest, math.floor(horizon + max_width / (asp[i] * kh)))
        if kh > 1.0:  # the box's top must stay inside: kh (b - horizon) <= b
            hi = min(hi, math.floor(horizon * kh / (kh - 1.0)))
        if lo > hi:
            return None
        bases[i] = rng.integers(lo, hi + 1)
    return bases


def _draw_columns(widths, heights, bases, canvas, max_overlap, rng) -> np.ndarray | None:
    """Left edges, largest box first, each from random candidates that overlap little."""
    n = len(widths)
    x0 = np.zeros(n, np.int64)
    placed: list[int] = []
    for i in sorted(range(n), key=lambda j: -widths[j] * heights[j]):
        w, h, b = int(widths[i]), int(heights[i]), int(bases[i])
        candidates = rng.integers(0, canvas - w + 1, _CANDIDATES)
        good = np.ones(_CANDIDATES, bool)
        for j in placed:
            ix = np.minimum(candidates + w, x0[j] + widths[j]) - np.maximum(candidates, x0[j])
            iy = min(b, bases[j]) - max(b - h, bases[j] - heights[j])
            inter = np.clip(ix, 0, None) * max(0, iy)
            good &= inter <= max_overlap * min(w * h, widths[j] * heights[j]) + 1e-9
        if not good.any():
            return None
        x0[i] = candidates[int(np.argmax(good))]
        placed.append(i)
    return x0
