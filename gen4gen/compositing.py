"""Per-object finishing of a composite: contact shadows, local harmonisation, edge decontamination,
matching the scene's blur and noise, and pasting.

:func:`contact_shadow`, :func:`harmonise_local`, :func:`decontaminate_edges`,
:func:`match_blur_noise` and :func:`paste_object` work on one object's box only, so their cost
follows the object's size, not the canvas's. Pure functions of their inputs (random choices come
from a generator passed in). OpenCV is imported inside functions so importing this module stays
cheap. The scenes and the placement they finish are in :mod:`gen4gen.ground_plane`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from gen4gen.config import CompositionConfig, RecolourConfig

Box = tuple[int, int, int, int]
# Defaults of the knobs [composition] and [recolour] expose (documented there).
_DEFAULTS = CompositionConfig()
_HARMONISATION = RecolourConfig()

@dataclass(frozen=True)
class ShadowRecord:
    centre: tuple[float, float]  # (x, y) of the ellipse in canvas pixels
    axes: tuple[float, float]  # (horizontal, vertical) semi-axes in pixels
    offset: tuple[float, float]  # displacement from under the base along the light direction
    base_y: int  # the object's base row the shadow hangs from
    sigma: float  # Gaussian blur of the shadow's edge
    strength: float  # darkening at the shadow's core (0..1)
    region: Box  # canvas pixels the shadow may have changed

    def to_dict(self) -> dict:
        return asdict(self)



def as_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as a contiguous HxWx3 uint8 image (a greyscale one is stacked); ValueError otherwise."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] < 3 or array.dtype != np.uint8:
        raise ValueError(f"{name} must be an HxWx3 uint8 image, got shape {array.shape} dtype {array.dtype}")
    return np.ascontiguousarray(array[..., :3])

# ---------------------------------------------------------------- per-object finishing
def _box_alpha(alpha: np.ndarray, box: Box, canvas_shape: tuple[int, int]) -> np.ndarray:
    """The object's alpha over its box, float32 in [0, 1], from a box- or canvas-sized array."""
    x0, y0, x1, y1 = box
    alpha = np.asarray(alpha)
    if alpha.shape == tuple(canvas_shape) and alpha.shape != (y1 - y0, x1 - x0):
        alpha = alpha[max(y0, 0):y1, max(x0, 0):x1]
    elif alpha.shape != (y1 - y0, x1 - x0):
        raise ValueError(f"alpha is {alpha.shape}, box {box} is {(y1 - y0, x1 - x0)}")
    if alpha.dtype == np.uint8:
        return alpha.astype(np.float32) / 255.0
    return np.clip(alpha.astype(np.float32), 0.0, 1.0)


def contact_shadow(canvas_rgb: np.ndarray, object_alpha_in_canvas: np.ndarray, box: Box,
                   light_direction: tuple[float, float], strength: float = _DEFAULTS.shadow_strength, blur: float | None = None,
                   *, floor_top_y: int | None = None, flatten: float = 0.22, offset_frac: float = 0.3,
                   inplace: bool = False) -> tuple[np.ndarray, ShadowRecord]:
    """A soft elliptical shadow on the floor under the object's base; call it after pasting the object.

    The ellipse spans the object's footprint (its lowest opaque rows) a little wider, is
    ``flatten`` as tall as wide (a floor seen at a grazing angle), hangs from the base row and
    is shifted by ``offset_frac`` of its half-width along ``light_direction`` (the scene's one
    light: every shadow of an image shifts the same way). Darkening is ``strength`` at the core,
    Gaussian-softened by ``blur`` px, and spares the object itself (weighted by 1 - alpha) and
    rows above ``floor_top_y``. Only the ellipse's region is touched.
    """
    height, width = canvas_rgb.shape[:2]
    x0, y0, x1, y1 = box
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height or x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {box} must lie inside the {width}x{height} canvas")
    alpha = _box_alpha(object_alpha_in_canvas, box, (height, width))
    solid_rows = np.flatnonzero((alpha >= 0.5).any(axis=1))
    out = canvas_rgb if inplace else canvas_rgb.copy()
    dx, dy = _unit(light_direction)
    if solid_rows.size == 0:
        return out, ShadowRecord((0.0, 0.0), (0.0, 0.0), (0.0, 0.0), y1, 0.0, 0.0, (0, 0, 0, 0))
    base_local = int(solid_rows[-1]) + 1
    base_y = y0 + base_local
    foot_rows = max(2, int(round(0.08 * (base_local - solid_rows[0]))))
    foot = alpha[max(0, base_local - foot_rows):base_local] >= 0.5
    cols = np.flatnonzero(foot.any(axis=0))
    foot_x0, foot_x1 = x0 + cols[0], x0 + cols[-1] + 1
    semi_a = max(0.6 * (foot_x1 - foot_x0), 0.2 * (x1 - x0), 3.0)
    semi_b = max(2.0, flatten * semi_a)
    offset = (offset_frac * semi_a * dx, offset_frac * semi_a * dy)
    cx = 0.5 * (foot_x0 + foot_x1) + offset[0]
    cy = base_y - 0.5 * semi_b + offset[1]
    sigma = float(blur) if blur is not None else max(1.5, 0.3 * semi_b)
    reach_x, reach_y = semi_a + 3 * sigma, semi_b + 3 * sigma
    floor_top = 0 if floor_top_y is None else max(0, int(floor_top_y))
    rx0, rx1 = max(0, int(math.floor(cx - reach_x))), min(width, int(math.ceil(cx + reach_x)) + 1)
    ry0, ry1 = max(floor_top, int(math.floor(cy - reach_y))), min(height, int(math.ceil(cy + reach_y)) + 1)
    record = ShadowRecord(centre=(round(cx, 3), round(cy, 3)), axes=(round(semi_a, 3), round(semi_b, 3)),
                          offset=(round(offset[0], 3), round(offset[1], 3)), base_y=base_y,
                          sigma=round(sigma, 3), strength=float(strength), region=(rx0, ry0, rx1, ry1))
    if rx1 <= rx0 or ry1 <= ry0 or strength <= 0:
        return out, record
    import cv2

    # The shade is smooth: drawn and blurred on a grid of step ~ sigma / 2, then resized up
    # (its cost follows the shadow's area over step squared, not its area).
    w, h = rx1 - rx0, ry1 - ry0
    step = max(1, int(sigma // 2))
    cols, rows = -(-w // step), -(-h // step)
    gx = (rx0 + (np.arange(cols, dtype=np.float32) + 0.5) * step - cx) / semi_a
    gy = (ry0 + (np.arange(rows, dtype=np.float32) + 0.5) * step - cy) / semi_b
    shade = cv2.pow(np.clip(1.0 - (gx[None, :] ** 2 + gy[:, None] ** 2), 0.0, 1.0), 0.6)
    if sigma > 0:
        shade = cv2.GaussianBlur(shade, (0, 0), sigma / step)
    if step > 1:
        shade = cv2.resize(shade, (cols * step, rows * step), interpolation=cv2.INTER_LINEAR)[:h, :w]
    # Spare the object itself where it overlaps the shadow's region.
    overlap_x0, overlap_x1 = max(rx0, x0), min(rx1, x1)
    overlap_y0, overlap_y1 = max(ry0, y0), min(ry1, y1)
    if overlap_x1 > overlap_x0 and overlap_y1 > overlap_y0:
        shade[overlap_y0 - ry0:overlap_y1 - ry0, overlap_x0 - rx0:overlap_x1 - rx0] *= \
            1.0 - alpha[overlap_y0 - y0:overlap_y1 - y0, overlap_x0 - x0:overlap_x1 - x0]
    factor = np.ascontiguousarray(1.0 - strength * shade, dtype=np.float32)
    out[ry0:ry1, rx0:rx1] = cv2.multiply(out[ry0:ry1, rx0:rx1], cv2.merge([factor] * 3), dtype=cv2.CV_8U)
    return out, record


def _unit(vector: tuple[float, float]) -> tuple[float, float]:
    norm = math.hypot(vector[0], vector[1])
    if norm == 0 or not math.isfinite(norm):
        raise ValueError(f"light_direction must be a non-zero vector, got {vector}")
    return vector[0] / norm, vector[1] / norm


def _ring_region(scene_shape: tuple[int, int], box: Box, ring_px: int) -> tuple[slice, slice, np.ndarray]:
    """Slices of the box grown by ``ring_px`` (clipped) and a mask of the ring (outside the box)."""
    height, width = scene_shape
    x0, y0, x1, y1 = box
    gx0, gy0, gx1, gy1 = max(0, x0 - ring_px), max(0, y0 - ring_px), min(width, x1 + ring_px), min(height, y1 + ring_px)
    ring = np.ones((gy1 - gy0, gx1 - gx0), bool)
    ring[max(y0, gy0) - gy0:min(y1, gy1) - gy0, max(x0, gx0) - gx0:min(x1, gx1) - gx0] = False
    return slice(gy0, gy1), slice(gx0, gx1), ring


def harmonise_local(obj_rgb: np.ndarray, obj_alpha: np.ndarray, scene_rgb: np.ndarray, box: Box,
                    strength: float = _HARMONISATION.harmonisation_strength,
                    colour_strength: float = _HARMONISATION.harmonisation_colour_strength, ring_px: int | None = None) -> np.ndarray:
    """The object's brightness and contrast moved ``strength`` of the way to the scene around it.

    Statistics come from a ring of ``ring_px`` (default 30% of the box's long side) around the
    box in the scene, not from the whole scene: an object in a shadowed corner darkens, the
    same object in a sunny patch brightens. In CIE Lab, L's mean and spread move by
    ``strength``; a and b only shift their means by ``colour_strength`` (a small colour cast
    from the surroundings, so a red object on grass stays red: its identity is the point of the
    dataset). ``obj_rgb``/``obj_alpha`` are box-sized; only the box is converted.
    """
    rgb = as_rgb(obj_rgb, "obj_rgb")
    alpha = np.asarray(obj_alpha)
    if alpha.shape != rgb.shape[:2]:
        raise ValueError(f"obj_alpha is {alpha.shape}, obj_rgb is {rgb.shape[:2]}")
    x0, y0, x1, y1 = box
    if (y1 - y0, x1 - x0) != rgb.shape[:2]:
        raise ValueError(f"box {box} does not match the object's size {rgb.shape[:2]}")
    solid = ((alpha >= 128) if alpha.dtype == np.uint8 else (alpha >= 0.5)).astype(np.uint8)
    if np.count_nonzero(solid) < 16 or (strength <= 0 and colour_strength <= 0):
        return rgb.copy()
    import cv2

    ring = max(8, int(round(0.3 * max(rgb.shape[:2])))) if ring_px is None else int(ring_px)
    rows, cols, ring_mask = _ring_region(scene_rgb.shape[:2], box, ring)
    # Every n-th pixel of the ring (about 16k samples) estimates its mean and spread well.
    step = max(1, int(math.sqrt(ring_mask.size / 16384)))
    around = np.ascontiguousarray(scene_rgb[rows, cols][::step, ::step])
    around_mask = ring_mask[::step, ::step].astype(np.uint8)
    if not around_mask.any():
        around_mask[:] = 1
    scene_lab = cv2.cvtColor(around.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    scene_mean, scene_std = (v.ravel() for v in cv2.meanStdDev(scene_lab, mask=around_mask))
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    mean, std = (v.ravel() for v in cv2.meanStdDev(lab, mask=solid))
    # L: mean and spread (the spread's change limited to 0.5x..2x); a, b: mean shift only.
    # One affine map per pixel: L' = spread * (L - mean) + mean + strength * (scene - mean).
    spread = 1.0 + strength * (float(np.clip((scene_std[0] + 1e-3) / (std[0] + 1e-3), 0.5, 2.0)) - 1.0)
    offset = np.array([mean[0] * (1.0 - spread) + strength * (scene_mean[0] - mean[0]),
                       colour_strength * (scene_mean[1] - mean[1]),
                       colour_strength * (scene_mean[2] - mean[2])])
    matrix = np.hstack([np.diag([spread, 1.0, 1.0]), offset[:, None]]).astype(np.float32)
    lab = cv2.transform(lab, matrix)
    lightness = lab[..., 0]
    np.clip(lightness, 0.0, 100.0, out=lightness)
    out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return cv2.convertScaleAbs(out, alpha=255.0)  # x 255, rounded and saturated to uint8


def decontaminate_edges(rgb: np.ndarray, alpha: np.ndarray, opaque_alpha: int = 250) -> np.ndarray:
    """``rgb`` with every not-opaque pixel recoloured from the nearest opaque interior pixels.

    The semi-transparent fringe of a cut-out mixes the object's colour with its source
    background (a green screen, a grey table): blended onto a new scene, that background shows
    as a halo. The fringe's foreground colour is estimated as the (lightly smoothed) colour of
    the nearest pixel with alpha >= ``opaque_alpha``; alpha is unchanged, so the soft edge stays
    soft. Fully transparent pixels get the same colour, which keeps resampling from bleeding the
    old background in. Opaque pixels are unchanged. Depends on the photo alone: run it once per
    cut-out (segmentation stage) rather than per composed image.
    """
    rgb = as_rgb(rgb, "rgb")
    alpha = np.asarray(alpha)
    if alpha.shape != rgb.shape[:2] or alpha.dtype != np.uint8:
        raise ValueError(f"alpha must be an HxW uint8 array matching rgb {rgb.shape[:2]}, "
                         f"got {alpha.shape} {alpha.dtype}")
    peak = int(alpha.max()) if alpha.size else 0
    if peak == 0:
        return rgb.copy()
    opaque = alpha >= min(opaque_alpha, peak)
    if opaque.all():
        return rgb.copy()
    import cv2

    # Source pixels: opaque pixels one step inside (eroded), coloured by their 3x3 mean, which then
    # holds opaque pixels only: the fill is not streaked by single noisy interior pixels.
    source = cv2.erode(opaque.astype(np.uint8), np.ones((3, 3), np.uint8))
    colours = cv2.blur(rgb, (3, 3))
    if not source.any():
        source, colours = opaque.astype(np.uint8), rgb
    _, labels = cv2.distanceTransformWithLabels(1 - source, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    flat_labels = labels.ravel()
    source_idx = np.flatnonzero(source.ravel())
    nearest = np.zeros(int(labels.max()) + 1, np.int64)
    nearest[flat_labels[source_idx]] = source_idx
    fringe_idx = np.flatnonzero(~opaque.ravel())
    out = rgb.copy()
    out.reshape(-1, 3)[fringe_idx] = colours.reshape(-1, 3)[nearest[flat_labels[fringe_idx]]]
    return out


# Statistics for blur and noise come from windows of at most this side, and medians or
# quantiles from at most this many samples: enough for a stable estimate, cheap on big boxes.
_STATS_WINDOW = 192
# What estimate_blur_sigma's re-blur ratio reads on a perfect (unblurred) step edge.
_SOBEL_BLUR = 0.835
# Missing noise below this (grey levels) is not added: 8-bit rounding alone measures ~0.3-0.5.
_MIN_NOISE = 0.75
_STATS_SAMPLES = 16384


def _sample(values: np.ndarray) -> np.ndarray:
    return values[:: max(1, values.size // _STATS_SAMPLES)]


def _window(shape: tuple[int, int], centre: tuple[float, float], side: int = _STATS_WINDOW) -> tuple[slice, slice]:
    """A window of at most ``side`` px square around ``centre`` (x, y), inside ``shape``."""
    height, width = shape
    wh, ww = min(side, height), min(side, width)
    y0 = int(min(max(round(centre[1] - wh / 2), 0), height - wh))
    x0 = int(min(max(round(centre[0] - ww / 2), 0), width - ww))
    return slice(y0, y0 + wh), slice(x0, x0 + ww)


def estimate_noise_sigma(rgb: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Per-channel noise standard deviation (grey levels), robust to edges.

    Immerkaer's operator (second differences that cancel planes and linear ramps) per
    channel; sigma from the median absolute response over the mask (median: edges and texture
    are a minority), averaged over channels.
    """
    import cv2

    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    image = np.asarray(rgb)
    if image.ndim == 2:
        image = image[..., None]
    if min(image.shape[:2]) < 3:
        return 0.0
    valid = np.ones(image.shape[:2], bool) if mask is None else np.asarray(mask, bool).copy()
    valid[[0, -1], :] = False
    valid[:, [0, -1]] = False
    if np.count_nonzero(valid) < 16:
        return 0.0
    response = cv2.filter2D(np.ascontiguousarray(image, dtype=np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT)
    if response.ndim == 2:
        response = response[..., None]
    picked = _sample(np.abs(response[valid]).reshape(-1, response.shape[-1]))
    # |N(0, 36 sigma^2)| has median 0.6745 * 6 sigma.
    return float(np.median(picked, axis=0).mean()) / (0.6745 * 6.0)


def estimate_blur_sigma(rgb: np.ndarray, mask: np.ndarray | None = None, reblur: float = 1.0) -> float:
    """Gaussian blur (px) of the strongest edges, by re-blurring (Zhuo and Sim's defocus estimate).

    An edge blurred by sigma loses gradient by R = sigma / sqrt(sigma^2 + r^2) when re-blurred by
    r, so sigma = r R / sqrt(1 - R^2); R is the median over the top decile of gradient
    magnitudes, and the Sobel kernel's own blur is taken out (a perfect step edge gives 0,
    an edge blurred by 1 or 2 px gives 1 or 2 within 0.1). 0.0 without edges.
    """
    import cv2

    image = np.asarray(rgb, np.float32)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    if min(grey.shape) < 5:
        return 0.0
    blurred = cv2.GaussianBlur(grey, (0, 0), reblur)

    def magnitude(img):
        return cv2.magnitude(cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3))

    g, gb = magnitude(grey), magnitude(blurred)
    valid = np.ones(grey.shape, bool) if mask is None else np.asarray(mask, bool).copy()
    valid[:2, :] = valid[-2:, :] = False
    valid[:, :2] = valid[:, -2:] = False
    values = g[valid]
    if values.size < 16:
        return 0.0
    cut = max(float(np.quantile(_sample(values), 0.9)), 8.0)
    strong = valid & (g >= cut)
    if np.count_nonzero(strong) < 8:
        return 0.0
    ratio = float(np.clip(np.median(_sample(gb[strong] / g[strong])), 0.0, 0.995))
    measured = reblur * ratio / math.sqrt(1.0 - ratio ** 2)
    # A perfect step already measures _SOBEL_BLUR (the Sobel kernel's own smoothing): take it out.
    return math.sqrt(max(0.0, measured ** 2 - _SOBEL_BLUR ** 2))


def match_blur_noise(obj_rgb: np.ndarray, alpha: np.ndarray, scene_rgb: np.ndarray, box: Box | None = None,
                     rng: np.random.Generator | None = None,
                     max_blur_sigma: float = _DEFAULTS.max_blur_sigma) -> np.ndarray:
    """The object lightly blurred and noised to look shot with the same camera as the scene.

    The scene is measured in a window (at most 192 px square) centred on the object's base
    (the whole scene's centre without a box), the object on its opaque interior. A sharper
    object is blurred by the missing Gaussian sigma (at most ``max_blur_sigma``: a light touch,
    never a smear); a cleaner object gets per-channel Gaussian noise of the missing standard
    deviation. A sharper or noisier object is left so (never sharpened or denoised). ``rng``
    draws the noise (default: seed 0, so the result is a pure function of the inputs).
    """
    import cv2

    rgb = as_rgb(obj_rgb, "obj_rgb")
    alpha = np.asarray(alpha)
    if alpha.shape != rgb.shape[:2]:
        raise ValueError(f"alpha is {alpha.shape}, obj_rgb is {rgb.shape[:2]}")
    rng = np.random.default_rng(0) if rng is None else rng
    opaque = ((alpha >= 250) if alpha.dtype == np.uint8 else (alpha >= 0.98)).astype(np.uint8)
    interior = cv2.erode(opaque, np.ones((5, 5), np.uint8))
    if np.count_nonzero(interior) < 64:
        return rgb.copy()
    h, w = rgb.shape[:2]
    if box is not None:
        base_centre = ((box[0] + box[2]) / 2, box[3])
    else:
        base_centre = (scene_rgb.shape[1] / 2, scene_rgb.shape[0] / 2)
    around = scene_rgb[_window(scene_rgb.shape[:2], base_centre)]
    scene_noise = estimate_noise_sigma(around)
    scene_blur = estimate_blur_sigma(around)
    window = _window((h, w), (w / 2, h / 2))
    inner = interior[window].astype(bool)
    # What is missing is never more than the scene has: the object is measured only when the
    # scene could call for some blur (>= 0.3 px) or noise (>= _MIN_NOISE).
    missing_blur = 0.0
    if scene_blur >= 0.3:
        object_blur = estimate_blur_sigma(rgb[window], inner)
        missing_blur = min(max_blur_sigma, math.sqrt(max(0.0, scene_blur ** 2 - object_blur ** 2)))
    blurred = missing_blur >= 0.3
    out = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), missing_blur) if blurred else None
    missing_noise = 0.0
    if scene_noise >= _MIN_NOISE:
        object_noise = estimate_noise_sigma(out[window] if blurred else rgb[window], inner)
        missing_noise = math.sqrt(max(0.0, scene_noise ** 2 - object_noise ** 2))
    if missing_noise < _MIN_NOISE:
        return rgb.copy() if not blurred else np.clip(out + 0.5, 0, 255).astype(np.uint8)
    noise = rng.standard_normal(rgb.shape, dtype=np.float32)
    noise *= np.float32(missing_noise)
    # Object (blurred or not) + noise, rounded and saturated to uint8 in one pass.
    return cv2.add(out if blurred else rgb, noise, dtype=cv2.CV_8U)


def paste_object(canvas_rgb: np.ndarray, obj_rgb: np.ndarray, obj_alpha: np.ndarray, box: Box,
                 inplace: bool = False) -> np.ndarray:
    """Alpha-blend a box-sized object into the canvas at ``box`` (clipped at the canvas edges)."""
    height, width = canvas_rgb.shape[:2]
    x0, y0, x1, y1 = box
    if (y1 - y0, x1 - x0) != obj_rgb.shape[:2] or obj_alpha.shape != obj_rgb.shape[:2]:
        raise ValueError(f"box {box} does not match the object's size {obj_rgb.shape[:2]}")
    out = canvas_rgb if inplace else canvas_rgb.copy()
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx1 <= cx0 or cy1 <= cy0:
        return out
    import cv2

    local = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
    a = np.ascontiguousarray(_box_alpha(obj_alpha, box, (height, width))[local])
    # One pass per pixel: object * a + canvas * (1 - a), rounded to uint8.
    out[cy0:cy1, cx0:cx1] = cv2.blendLinear(np.ascontiguousarray(obj_rgb[local]),
                                            np.ascontiguousarray(out[cy0:cy1, cx0:cx1]), a, 1.0 - a)
    return out