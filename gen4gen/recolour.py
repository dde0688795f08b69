"""Background filling and colour harmonisation: the embedded stand-in for SDXL repainting.

The request shape (image, mask, prompt, negative prompt, seed, scene) is the one an SDXL
inpainting backend needs too, so backends are interchangeable behind one interface.

The composition stage stands the objects of an embedded layout in their ground-plane scene,
with their shadows (gen4gen/compose.py): such a composite keeps its scene, and each object is
harmonised locally, towards the scene around it. A composite of objects on black (a layout
without a ground, e.g. an LLM's) gets a background drawn from the scene bank, feathering and
the configured harmonisation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .scenes import SceneSpec, ground_scene, plan_ground


@dataclass
class RepaintRequest:
    image: np.ndarray  # HxWx3 uint8 composite: objects on black, or standing in their scene
    mask: np.ndarray  # HxW uint8 object alpha (255 = keep the object)
    prompt: str
    negative_prompt: str
    seed: int
    scene: str
    instance_masks: list[np.ndarray] | None = None  # per-object bool masks, for harmonisation


def feather_mask(mask: np.ndarray, radius: int, low: float) -> np.ndarray:
    """The paper's feathering: box blur, then rescale intensity from [low, 255] to [0, 1]."""
    blurred = np.asarray(Image.fromarray(mask).filter(ImageFilter.BoxBlur(radius)), np.float32)
    return np.clip((blurred - low) / (255.0 - low), 0.0, 1.0)


def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    import cv2

    return np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def harmonise_lab(image: np.ndarray, background: np.ndarray, masks: list[np.ndarray], strength: float) -> np.ndarray:
    """Move each object's LAB mean and spread part of the way towards the background's.

    Statistics transfer (Reinhard et al.) per object: lighting and colour cast follow the
    scene while the object keeps its identity (strength well below 1).
    """
    if strength <= 0 or not masks:
        return image
    out = image.copy()
    # Global statistics of the scene: every 4th pixel estimates them well at 1/16 of the cost.
    bg_lab = _rgb_to_lab(np.ascontiguousarray(background[::4, ::4])).reshape(-1, 3)
    bg_mean, bg_std = bg_lab.mean(0), bg_lab.std(0) + 1e-3
    for mask in masks:
        ys, xs = np.nonzero(mask)
        if len(xs) < 16:
            continue
        region = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        local_mask = mask[region]
        lab = _rgb_to_lab(image[region])
        pixels = lab[local_mask]
        mean, std = pixels.mean(0), pixels.std(0) + 1e-3
        target_mean = mean + strength * (bg_mean - mean)
        target_std = std * (1 + strength * (bg_std / std - 1))
        lab[local_mask] = (pixels - mean) / std * target_std + target_mean
        recoloured = _lab_to_rgb(lab)
        out[region][local_mask] = recoloured[local_mask]
    return out


def harmonise_poisson(image: np.ndarray, background: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """Poisson (gradient-domain) blending of each object into the background, nearest last."""
    import cv2

    out = background.copy()
    for mask in masks:
        ys, xs = np.nonzero(mask)
        if len(xs) < 16:
            continue
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        # seamlessClone needs the source patch strictly inside the destination.
        if x0 < 1 or y0 < 1 or x1 > out.shape[1] - 1 or y1 > out.shape[0] - 1:
            out[mask] = image[mask]
            continue
        center = ((x0 + x1) // 2, (y0 + y1) // 2)
        mask_u8 = (mask[y0:y1, x0:x1] * 255).astype(np.uint8)
        out = cv2.seamlessClone(image[y0:y1, x0:x1], out, mask_u8, center, cv2.NORMAL_CLONE)
    return out


class SceneBankRepainter:
    """The embedded :class:`~gen4gen.backends.Repainter`: keep a composite that stands in its
    scene; give objects on black a scene of the layout's scene bank entry, feather, and harmonise."""

    name = "scene_bank"

    def __init__(self, scenes: list[SceneSpec], config):
        self.scenes = {scene.name: scene for scene in scenes}
        self.config = config

    def identity(self) -> dict:
        return {"backend": self.name, "harmonisation": self.config.harmonisation, "scenes": sorted(self.scenes)}

    def close(self) -> None:
        """Nothing to release: rendered scenes are cached per process (gen4gen.scenes)."""

    def background_for(self, scene_name: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """An upright scene (a top-down texture only ever as a receding floor) and its photo."""
        scene = self.scenes.get(scene_name) or next(iter(self.scenes.values()))
        recipe = plan_ground(scene, size, rng)
        return ground_scene(recipe, size).image, recipe["photo"]

    def repaint(self, requests: list[RepaintRequest]) -> list[tuple[np.ndarray, dict]]:
        results = []
        for request in requests:
            method = self.config.harmonisation
            if in_scene(request):
                image = request.image
                if method != "none":
                    image = harmonise_in_scene(image, request.mask, request.instance_masks,
                                               self.config.harmonisation_strength,
                                               self.config.harmonisation_colour_strength)
                results.append((image, {"background_photo": None, "harmonisation": f"{method} (local, in scene)"}))
                continue
            rng = np.random.default_rng(request.seed)
            size = request.image.shape[0]
            background, source = self.background_for(request.scene, size, rng)
            masks = request.instance_masks or [request.mask >= 128]
            objects = request.image
            if method == "lab":
                objects = harmonise_lab(objects, background, masks, self.config.harmonisation_strength)
            elif method == "poisson":
                objects = harmonise_poisson(objects, background, masks)
            weight = feather_mask(request.mask, self.config.feather_radius, self.config.feather_low)
            image = background.copy()
            ys, xs = np.nonzero(weight[::8, ::8] > 0)  # blend only where objects are (coarse bbox)
            if len(xs):
                region = (slice(max(ys.min() * 8 - 8, 0), ys.max() * 8 + 9), slice(max(xs.min() * 8 - 8, 0), xs.max() * 8 + 9))
                w = weight[region][..., None]
                blended = objects[region].astype(np.float32) * w + background[region].astype(np.float32) * (1 - w)
                image[region] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
            results.append((image, {"background_photo": source, "harmonisation": method}))
        return results


def harmonise_in_scene(image: np.ndarray, mask: np.ndarray, instance_masks: list[np.ndarray] | None,
                       strength: float, colour_strength: float) -> np.ndarray:
    """Each object of a composite standing in its scene harmonised towards the scene around it.

    :func:`gen4gen.compositing.harmonise_local` on each object's box (its statistics from its
    visible mask), blended back by the composite's soft alpha over the object's own pixels and
    its anti-aliased edge (not over another object's).
    """
    import cv2

    from .compositing import harmonise_local

    masks = instance_masks or [mask >= 128]
    if not masks or (strength <= 0 and colour_strength <= 0):
        return image
    height, width = mask.shape
    out = image.copy()
    kernel = np.ones((5, 5), np.uint8)
    for k, visible in enumerate(masks):
        x, y, w, h = cv2.boundingRect(visible.view(np.uint8))
        if w * h == 0 or np.count_nonzero(visible[y:y + h, x:x + w]) < 16:
            continue
        box = (max(0, x - 2), max(0, y - 2), min(width, x + w + 2), min(height, y + h + 2))
        region = (slice(box[1], box[3]), slice(box[0], box[2]))
        own = visible[region]
        others = np.zeros(own.shape, bool)
        for j, other in enumerate(masks):
            if j != k:
                others |= other[region]
        edge = (cv2.dilate(own.view(np.uint8), kernel) > 0) & ~others
        harmonised = harmonise_local(image[region], own.astype(np.uint8) * 255, image, box, strength, colour_strength)
        weight = mask[region].astype(np.float32) / 255.0 * edge
        out[region] = cv2.blendLinear(harmonised, np.ascontiguousarray(image[region]), weight, 1.0 - weight)
    return out


def in_scene(request: RepaintRequest) -> bool:
    """Whether the composite already stands in its scene: some pixel outside the objects is not black.

    Objects on black are exactly black wherever their mask is 0, so any pixel there that is not
    black shows a scene; one pixel in four is looked at (a scene black at all of those would be
    drawn again, the one case told wrong).
    """
    peak = request.image[::2, ::2].max(axis=2)
    return bool(np.any(peak[request.mask[::2, ::2] == 0]))
