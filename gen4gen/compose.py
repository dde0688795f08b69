"""Paste segmented objects onto a canvas per layout, with the original's seeded augmentations."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from gen4gen.compositing import contact_shadow, match_blur_noise, paste_object

MASK_ON = 128  # alpha at or above this counts as object


@dataclass
class Cutout:
    """One concept photo's segmentation, cropped to its mask's bounding box."""

    concept: str
    source_photo: str  # relative to the concepts folder, as the catalogue names it
    rgba: np.ndarray  # hxwx4 uint8
    mask_fill: float  # mask pixels / bounding-box pixels: a filled rectangle means a failed cut-out

    @property
    def aspect(self) -> float:
        return self.rgba.shape[1] / self.rgba.shape[0]


def crop_cutout(concept: str, source_photo: str, rgba: np.ndarray) -> Cutout:
    alpha = rgba[..., 3]
    ys, xs = np.nonzero(alpha >= MASK_ON)
    if len(xs) == 0:
        raise ValueError(f"{source_photo}: segmentation mask is empty")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.ascontiguousarray(rgba[y0:y1, x0:x1])
    fill = float((crop[..., 3] >= MASK_ON).mean())
    return Cutout(concept=concept, source_photo=source_photo, rgba=crop, mask_fill=fill)


@dataclass
class Augmentation:
    flip: bool
    rotation: float  # degrees
    shift: tuple[int, int]  # pixels (x, y)

    @classmethod
    def sample(cls, rng: np.random.Generator, canvas: int, config) -> "Augmentation":
        flip = bool(rng.random() < config.flip_probability)
        rotation = float(rng.uniform(-config.max_rotation_degrees, config.max_rotation_degrees))
        limit = config.max_shift_fraction * canvas
        shift = (int(round(rng.uniform(-limit, limit))), int(round(rng.uniform(-limit, limit))))
        return cls(flip=flip, rotation=round(rotation, 3), shift=shift)


@dataclass
class PlacedInstance:
    concept: str
    source_photo: str
    layout_box: tuple[int, int, int, int]
    box: tuple[int, int, int, int]  # bounding box of the visible pixels (x0, y0, x1, y1), exclusive
    augmentation: Augmentation
    visible_mask: np.ndarray  # canvas-sized bool
    stats: dict = field(default_factory=dict)
    pasted_box: tuple[int, int, int, int] = (0, 0, 0, 0)  # where the whole object went, before occlusion
    shadow: dict | None = None  # its contact shadow on the floor (gen4gen.compositing.ShadowRecord)
    height: int = 0  # the object's height in pixels as fitted into its box, before rotation


@dataclass
class Composite:
    rgb: np.ndarray  # canvas x canvas x 3 uint8: the objects on black, or standing in the scene
    alpha: np.ndarray  # canvas x canvas uint8 union of the objects' soft masks
    instances: list[PlacedInstance]  # in the layout's object order


def _fit_into_box(cutout: Cutout, box) -> Image.Image:
    x0, y0, x1, y1 = box
    height, width = cutout.rgba.shape[:2]
    scale = min((x1 - x0) / width, (y1 - y0) / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap: a cheap box reduction first, then Lanczos; same look, several times faster.
    return Image.fromarray(cutout.rgba, "RGBA").resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def compose(cutouts: list[Cutout], boxes: list[tuple[int, int, int, int]], canvas: int,
            rng: np.random.Generator, config, scene=None) -> Composite:
    """Paste each cut-out into its box (aspect kept, standing on the box's bottom edge).

    Objects further back (higher bottom edge on screen) are pasted first, so nearer objects
    occlude them, as in a photograph. Without ``scene`` the objects stand on black. With a
    :class:`~gen4gen.ground_plane.GroundScene` they stand in it: each is matched to the scene's
    blur and noise, pasted, and casts a contact shadow on the floor along the scene's light
    direction (``config``: the [composition] section); augmentations shift it sideways only, so
    its base stays where the layout stood it. Colour is harmonised later, by the repainter.
    """
    import cv2

    augmentations = [Augmentation.sample(rng, canvas, config) for _ in cutouts]
    noise_seeds = rng.integers(0, 2 ** 63, len(cutouts)) if scene is not None else [0] * len(cutouts)
    rgb = scene.image.copy() if scene is not None else np.zeros((canvas, canvas, 3), np.uint8)
    alpha_union = np.zeros((canvas, canvas), np.float32)
    paste_order = sorted(range(len(cutouts)), key=lambda i: (boxes[i][3], i))
    owner = np.full((canvas, canvas), -1, np.int16)
    full_masks, totals, pasted, shadows, heights = {}, {}, {}, {}, {}  # full_masks: opaque pixels inside
    for i in paste_order:
        cutout, box, aug = cutouts[i], boxes[i], augmentations[i]
        piece = _fit_into_box(cutout, box)
        heights[i] = piece.size[1]
        if aug.flip:
            piece = piece.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if aug.rotation:
            # Bilinear is indistinguishable from bicubic at +-5 degrees and twice as fast.
            piece = piece.rotate(aug.rotation, resample=Image.Resampling.BILINEAR, expand=True)
        array = np.asarray(piece)
        h, w = array.shape[:2]
        # Centre horizontally in the box, stand its lowest opaque row on the box's bottom edge
        # (a rotated piece has transparent corners below it), then shift.
        rows = np.flatnonzero((array[..., 3] >= MASK_ON).any(axis=1))
        bottom = int(rows[-1]) + 1 if rows.size else h
        left = (box[0] + box[2]) // 2 - w // 2 + aug.shift[0]
        top = box[3] - bottom + (aug.shift[1] if scene is None else 0)
        totals[i] = int((array[..., 3] >= MASK_ON).sum())
        pasted[i] = (left, top, left + w, top + h)
        cx0, cy0, cx1, cy1 = max(left, 0), max(top, 0), min(left + w, canvas), min(top + h, canvas)
        inside = 0
        if cx1 > cx0 and cy1 > cy0:
            local = (slice(cy0 - top, cy1 - top), slice(cx0 - left, cx1 - left))
            obj_rgb, obj_alpha = np.ascontiguousarray(array[local][..., :3]), np.ascontiguousarray(array[local][..., 3])
            clipped = (cx0, cy0, cx1, cy1)
            if scene is not None:
                obj_rgb, shadows[i] = _finish(rgb, obj_rgb, obj_alpha, clipped, scene, config,
                                              np.random.default_rng(int(noise_seeds[i])))
            else:
                paste_object(rgb, obj_rgb, obj_alpha, clipped, inplace=True)
            a = obj_alpha.astype(np.float32) / 255.0
            region = (slice(cy0, cy1), slice(cx0, cx1))
            alpha_union[region] = np.maximum(alpha_union[region] * (1 - a), a)
            full = obj_alpha >= MASK_ON
            owner[region][full] = i
            inside = int(np.count_nonzero(full))
        full_masks[i] = inside
    instances = []
    for i, cutout in enumerate(cutouts):
        inside = full_masks[i]
        visible = owner == i
        shown = int(np.count_nonzero(visible))
        total = max(totals[i], 1)
        x, y, w, h = cv2.boundingRect(visible.view(np.uint8))
        visible_box = (x, y, x + w, y + h) if shown else (0, 0, 0, 0)
        stats = {
            "visible_fraction": round(float(shown) / max(inside, 1), 4),
            "inside_fraction": round(inside / total, 4),
            "area_fraction": round(float(shown) / (canvas * canvas), 5),
            "mask_fill": round(cutout.mask_fill, 4),
        }
        instances.append(PlacedInstance(concept=cutout.concept, source_photo=cutout.source_photo,
                                        layout_box=tuple(boxes[i]), box=visible_box,
                                        augmentation=augmentations[i], visible_mask=visible, stats=stats,
                                        pasted_box=pasted[i], shadow=shadows.get(i), height=heights[i]))
    return Composite(rgb=rgb, alpha=np.clip(alpha_union * 255 + 0.5, 0, 255).astype(np.uint8), instances=instances)


def _finish(canvas_rgb, obj_rgb, obj_alpha, box, scene, config, rng) -> tuple[np.ndarray, dict]:
    """Match the scene's blur and noise, paste into ``canvas_rgb`` (in place) and cast the shadow.

    Colour and brightness are harmonised to the scene by the recolouring stage (gen4gen.recolour).
    """
    obj_rgb = match_blur_noise(obj_rgb, obj_alpha, canvas_rgb, box, rng=rng, max_blur_sigma=config.max_blur_sigma)
    paste_object(canvas_rgb, obj_rgb, obj_alpha, box, inplace=True)
    _, shadow = contact_shadow(canvas_rgb, obj_alpha, box, scene.light_direction, config.shadow_strength,
                               floor_top_y=scene.floor_top_y, inplace=True)
    return obj_rgb, shadow.to_dict()
