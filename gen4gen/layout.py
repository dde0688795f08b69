"""Rule-based layout planner: the embedded stand-in for Gen4Gen's LLM layout step.

The paper asks an LLM, for a set of objects, for background scenes, real-world size ratios
(largest object 1.0, smallest 0.4) and one bounding box per object. Here the same output
comes from rules: a table of typical real-world sizes, a scene ranking by indoor/outdoor
affinity, and a seeded placement. By default (``layout.placement = "floor"``) every object
stands on its scene's floor, its size following its depth and its real-world size
(:func:`gen4gen.ground_plane.place_on_floor`); ``"band"`` stands them on a ground band.

Boxes are ``(x0, y0, x1, y1)`` in canvas pixels, exclusive at the right and bottom edge.
:class:`RuleBasedLayoutPlanner` is the embedded :class:`~gen4gen.backends.LayoutPlanner`; the
size table and the paper's size rules are in :mod:`gen4gen.size_priors`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from gen4gen.config import LayoutConfig
from gen4gen.io import derive_seed
from gen4gen.scenes import SceneSpec, plan_ground
# Re-exported: callers plan layouts and read the size rules from this module.
from gen4gen.size_priors import SIZE_PRIORS, class_setting, min_box_area, real_world_size, size_ratios

__all__ = ["PLANNER_NAME", "SIZE_PRIORS", "Box", "Layout", "ObjectSpec", "PlacedObject", "RuleBasedLayoutPlanner",
           "min_box_area", "plan_layouts", "real_world_size", "size_ratios", "suggest_scenes"]

PLANNER_NAME = "rule_based"

# No box may be wider than this fraction of the canvas (a cut-out spanning the whole
# width leaves no room for the others and reads as a crop, not an object in a scene).
_MAX_BOX_WIDTH = 0.9
# Side by side, the boxes take at most this fraction of the width, leaving some margin.
_ROW_FILL = 0.95
# A pair placed in one row may overlap by this share of the allowed overlap, so that
# rounding to whole pixels cannot push it over config.max_overlap.
_OVERLAP_SAFETY = 0.9
# Candidate positions drawn at once per object when scattering boxes in depth.
_CANDIDATES = 64

Box = tuple[int, int, int, int]


# ---------------------------------------------------------------- records
@dataclass(frozen=True)
class ObjectSpec:
    concept: str
    class_name: str
    aspect: float  # width / height of the object's cut-out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ObjectSpec":
        return cls(str(data["concept"]), str(data["class_name"]), float(data["aspect"]))


@dataclass(frozen=True)
class PlacedObject:
    concept: str
    class_name: str
    box: Box  # x0, y0, x1, y1 in canvas pixels, right and bottom exclusive
    size_ratio: float  # intended size relative to the largest object (before fitting)
    # On the floor: base_y, depth, depth_scale, scale (px per metre), height_m
    # (gen4gen.ground_plane.Placement); None for a layout not planned on a floor.
    placement: dict | None = None

    def to_dict(self) -> dict:
        data = {"concept": self.concept, "class_name": self.class_name,
                "box": list(self.box), "size_ratio": self.size_ratio}
        if self.placement is not None:
            data["placement"] = dict(self.placement)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PlacedObject":
        box = tuple(int(v) for v in data["box"])
        if len(box) != 4:
            raise ValueError(f"box must have 4 values, got {data['box']!r}")
        placement = data.get("placement")
        return cls(str(data["concept"]), str(data["class_name"]), box, float(data["size_ratio"]),
                   dict(placement) if placement is not None else None)


@dataclass
class Layout:
    composition: str
    index: int
    seed: int  # the per-layout seed, derive_seed(global seed, composition, index)
    scene: str
    background_prompt: str
    objects: list[PlacedObject]
    planner: str
    canvas_size: int
    notes: list[str] = field(default_factory=list)
    # How the scene is drawn and where its floor lies (gen4gen.scenes.plan_ground); None: objects
    # on black, the repainter makes the whole background.
    ground: dict | None = None
    # Why no layout could be kept for this image (then `objects` is empty): the image is left out.
    dropped: str | None = None

    def to_dict(self) -> dict:
        data = {"composition": self.composition, "index": self.index, "seed": self.seed,
                "scene": self.scene, "background_prompt": self.background_prompt,
                "objects": [o.to_dict() for o in self.objects], "planner": self.planner,
                "canvas_size": self.canvas_size, "notes": list(self.notes)}
        data.update({k: v for k, v in (("ground", self.ground), ("dropped", self.dropped)) if v is not None})
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Layout":
        return cls(str(data["composition"]), int(data["index"]), int(data["seed"]), str(data["scene"]),
                   str(data["background_prompt"]), [PlacedObject.from_dict(o) for o in data["objects"]],
                   str(data["planner"]), int(data["canvas_size"]), [str(n) for n in data.get("notes", [])],
                   data.get("ground"), data.get("dropped"))


# ---------------------------------------------------------------- scenes
def _scene_scores(class_names: list[str], scenes: list[SceneSpec]) -> list[float]:
    """Votes of the objects for indoor or outdoor; an "any" scene fits every object set.

    "any" scores 0.5 so it wins over a tie (mixed or unknown objects) but loses to a
    scene that at least one object prefers and none objects to.
    """
    settings = [class_setting(name) for name in class_names]
    indoor, outdoor = settings.count("indoor"), settings.count("outdoor")
    by_setting = {"indoor": indoor - outdoor, "outdoor": outdoor - indoor}
    return [by_setting.get(scene.setting, 0.5) for scene in scenes]


def _ranked_scenes(class_names: list[str], scenes: list[SceneSpec]) -> list[tuple[SceneSpec, float]]:
    scores = _scene_scores(class_names, scenes)
    return [(scenes[i], scores[i]) for i in sorted(range(len(scenes)), key=lambda i: (-scores[i], i))]


def suggest_scenes(class_names: list[str], scenes: list[SceneSpec]) -> list[SceneSpec]:
    """All scenes, the best fit for the object set first (ties keep the given order)."""
    return [scene for scene, _ in _ranked_scenes(class_names, scenes)]


def _fitting_scenes(class_names: list[str], scenes: list[SceneSpec]) -> list[SceneSpec]:
    """The suggestions no object argues against; all of them when every scene is contrary."""
    ranked = _ranked_scenes(class_names, scenes)
    return [scene for scene, score in ranked if score >= 0] or [scene for scene, _ in ranked]


# ---------------------------------------------------------------- sizing
def _box_size(height: float, aspect: float, canvas: int, config: LayoutConfig, min_area: float) -> tuple[int, int]:
    """Whole-pixel (width, height) near ``height``, keeping the aspect, inside the caps, >= min_area.

    The height cap lets the bottom edge reach the ground band with the top inside the canvas.
    """
    width_cap = math.floor(_MAX_BOX_WIDTH * canvas)
    upper = math.floor(min(config.ground_band[1] * canvas, canvas, width_cap / aspect))
    lower = max(1, math.ceil(math.sqrt(min_area / aspect) - 1e-9))
    h = min(max(round(height), lower), upper)
    # Rounding the width can lose up to half a pixel of it: step up until the area holds.
    while h <= upper and h * max(1, round(h * aspect)) < min_area:
        h += 1
    if h < lower or h > upper:
        raise ValueError(
            f"an object with aspect {aspect:.3g} cannot have a box of area >= {min_area:.0f} px "
            f"inside a {canvas} px canvas (width <= {_MAX_BOX_WIDTH:g}, bottom in the ground band)")
    return max(1, round(h * aspect)), h


def _sizes(heights: list[float], aspects: list[float], canvas: int, config: LayoutConfig,
           min_area: float) -> list[tuple[int, int]]:
    return [_box_size(h, a, canvas, config, min_area) for h, a in zip(heights, aspects)]


# ---------------------------------------------------------------- placement
def _overlap_ok(boxes: list[Box], max_overlap: float) -> bool:
    for i in range(len(boxes)):
        ax0, ay0, ax1, ay1 = boxes[i]
        for j in range(i + 1, len(boxes)):
            bx0, by0, bx1, by1 = boxes[j]
            inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
            smaller = min((ax1 - ax0) * (ay1 - ay0), (bx1 - bx0) * (by1 - by0))
            if inter > max_overlap * smaller + 1e-9:
                return False
    return True


def _bottom_range(h: int, canvas: int, config: LayoutConfig) -> tuple[int, int]:
    """Allowed whole-pixel bottom edges: inside the ground band, with the top inside the canvas."""
    low = max(math.ceil(config.ground_band[0] * canvas - 1e-9), h)
    high = min(math.floor(config.ground_band[1] * canvas + 1e-9), canvas)
    return low, high


def _place_row(sizes, order, rng, canvas, config) -> list[Box] | None:
    """Boxes side by side, left to right in ``order``, with random gaps; None when they cannot fit.

    Free width goes to random margins and gaps. Only when the boxes are wider than the
    canvas do neighbours overlap, each pair by at most its share of config.max_overlap.
    """
    widths = [sizes[k][0] for k in order]
    slack = canvas - sum(widths)
    allowance = [0.0] * (len(order) - 1)
    if slack < 0:
        allowance = [_OVERLAP_SAFETY * config.max_overlap * min(a, b) for a, b in zip(widths, widths[1:])]
        slack += sum(allowance)
        if slack < 0:
            return None
    shares = rng.dirichlet(np.ones(len(order) + 1)) * slack
    boxes: dict[int, Box] = {}
    x = float(shares[0])
    for pos, k in enumerate(order):
        w, h = sizes[k]
        x0 = min(max(0, math.floor(x)), canvas - w)
        low, high = _bottom_range(h, canvas, config)
        y1 = int(rng.integers(low, high + 1))
        boxes[k] = (x0, y1 - h, x0 + w, y1)
        if pos + 1 < len(order):
            x += w + shares[pos + 1] - allowance[pos]
    return [boxes[k] for k in range(len(sizes))]


def _place_scattered(sizes, rng, canvas, config) -> list[Box] | None:
    """Boxes dropped one at a time, largest first, at random admissible spots (rows in depth).

    Used when the boxes cannot stand in one row: short boxes can then sit one behind another
    within the ground band. Draws many candidate spots at once; None when one box finds none.
    """
    n = len(sizes)
    placed = np.zeros((0, 4), dtype=np.int64)
    boxes: list[Box | None] = [None] * n
    for k in sorted(range(n), key=lambda i: -sizes[i][0] * sizes[i][1]):
        w, h = sizes[k]
        low, high = _bottom_range(h, canvas, config)
        x0 = rng.integers(0, canvas - w + 1, _CANDIDATES)
        y1 = rng.integers(low, high + 1, _CANDIDATES)
        if len(placed):
            ix = np.minimum(x0[:, None] + w, placed[:, 2]) - np.maximum(x0[:, None], placed[:, 0])
            iy = np.minimum(y1[:, None], placed[:, 3]) - np.maximum(y1[:, None] - h, placed[:, 1])
            inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
            areas = (placed[:, 2] - placed[:, 0]) * (placed[:, 3] - placed[:, 1])
            smaller = np.minimum(areas, w * h)
            good = np.all(inter <= config.max_overlap * smaller + 1e-9, axis=1)
            if not good.any():
                return None
            pick = int(np.argmax(good))
        else:
            pick = 0
        box = (int(x0[pick]), int(y1[pick]) - h, int(x0[pick]) + w, int(y1[pick]))
        boxes[k] = box
        placed = np.vstack([placed, np.array([box], dtype=np.int64)])
    return boxes  # type: ignore[return-value]


def _place(sizes, rng, canvas, config, notes: list[str]) -> list[Box] | None:
    for _ in range(config.max_attempts):
        order = [int(k) for k in rng.permutation(len(sizes))]
        boxes = _place_row(sizes, order, rng, canvas, config)
        scattered = boxes is None
        if scattered:
            boxes = _place_scattered(sizes, rng, canvas, config)
        if boxes is not None and _overlap_ok(boxes, config.max_overlap):
            if scattered:
                notes.append("objects too wide to stand in one row: placed at several depths")
            return boxes
    return None


def _plan_one(composition, objects, index, seed, canvas, config, scene, ratios, min_area) -> Layout:
    layout_seed = derive_seed(seed, composition, index)
    rng = np.random.default_rng(layout_seed)
    notes: list[str] = []
    ground = plan_ground(scene, canvas, rng)
    if config.placement == "floor":
        try:
            placed = _place_on_floor(objects, ratios, ground, canvas, config, rng, min_area)
        except ValueError as exc:
            reason = (f"{exc} (in the configuration: layout.min_camera_height, or layout.size_ratio_range = "
                      f"[0.4, 1.0] for the paper's sizes)")
            return Layout(composition, index, layout_seed, scene.name, scene.prompt, [], PLANNER_NAME, canvas,
                          [f"layout dropped: {reason}"], ground, dropped=reason)
    else:
        placed = _place_on_band(objects, ratios, canvas, config, rng, min_area, notes)
    unknown = sorted({o.class_name for o in objects if real_world_size(o.class_name) is None})
    if unknown and len(unknown) == len({o.class_name for o in objects}):
        notes.append("no size prior for any class: objects treated as equally large")
    elif unknown:
        notes.append(f"no size prior for {', '.join(unknown)}: relative size {config.default_size_ratio:g} assumed")
    return Layout(composition, index, layout_seed, scene.name, scene.prompt, placed, PLANNER_NAME, canvas, notes,
                  ground)


def _place_on_floor(objects, ratios, ground, canvas, config, rng, min_area) -> list[PlacedObject]:
    """Boxes standing on the scene's floor, sized by depth and real-world size; ValueError when
    one would fall below the paper's minimum box (the layout is dropped, not the object)."""
    from gen4gen.ground_plane import GroundScene, place_on_floor

    known = [s for s in (real_world_size(o.class_name) for o in objects) if s is not None]
    largest = max(known) if known else 1.0  # metres of the object of ratio 1.0
    heights = [r * largest for r in ratios]
    floor = GroundScene(np.zeros((canvas, 0, 3), np.uint8), ground["horizon_y"], ground["floor_top_y"],
                        tuple(ground["light_direction"]), ground["photo"])
    placements = place_on_floor(heights, [o.aspect for o in objects], floor, canvas, rng,
                                min_box_px=math.sqrt(min_area), largest_height_frac=config.largest_object_height,
                                max_overlap=config.max_overlap, max_attempts=config.max_attempts,
                                min_camera_height=config.min_camera_height)
    return [PlacedObject(o.concept, o.class_name, p.box, round(r, 4),
                         {k: v for k, v in p.to_dict().items() if k not in ("index", "box")})
            for o, p, r in zip(objects, placements, ratios)]


def _place_on_band(objects, ratios, canvas, config, rng, min_area, notes) -> list[PlacedObject]:
    aspects = [o.aspect for o in objects]
    largest = rng.uniform(*config.largest_object_height) * canvas
    sizes = _sizes([r * largest for r in ratios], aspects, canvas, config, min_area)
    # Objects that could not stand side by side are scaled together up front (ratios kept):
    # far cheaper than failing max_attempts placements, then shrinking 10% at a time.
    total = sum(w for w, _ in sizes)
    if total > _ROW_FILL * canvas:
        scale = _ROW_FILL * canvas / total
        sizes = _sizes([h * scale for _, h in sizes], aspects, canvas, config, min_area)
        notes.append(f"boxes scaled by {scale:.2f} to fit side by side")

    rounds = 0
    while (boxes := _place(sizes, rng, canvas, config, notes)) is None:
        smaller = _sizes([h * 0.9 for _, h in sizes], aspects, canvas, config, min_area)
        if smaller == sizes:  # every box is at its minimum area: nothing left to try
            raise ValueError(
                f"cannot place {len(objects)} boxes on a {canvas} px canvas within "
                f"max_overlap={config.max_overlap} and ground_band={config.ground_band}")
        sizes = smaller
        rounds += 1
        notes.append(f"no placement in {config.max_attempts} attempts: boxes shrunk by 10% (round {rounds})")
    return [PlacedObject(o.concept, o.class_name, box, round(r, 4)) for o, box, r in zip(objects, boxes, ratios)]


def plan_layouts(composition: str, objects: list[ObjectSpec], n: int, seed: int, canvas_size: int,
                 config: LayoutConfig, scenes: list[SceneSpec], first_index: int = 0) -> list[Layout]:
    """``n`` seeded layouts for one composition; objects keep their input order in each.

    Layout ``i`` (counting from ``first_index``) uses ``derive_seed(seed, composition, i)`` and
    the i-th fitting scene (cycling), so the images of a composition vary their background.
    Planning one layout at a time with ``first_index`` gives the same result as planning all.
    A layout that cannot be kept on the floor comes back with ``dropped`` saying why (no objects).
    """
    if not objects:
        raise ValueError(f"{composition}: no objects to place")
    if not scenes:
        raise ValueError(f"{composition}: no background scenes to choose from")
    for o in objects:
        if not (math.isfinite(o.aspect) and o.aspect > 0):
            raise ValueError(f"{composition}: object {o.concept!r} has invalid aspect {o.aspect!r}")
    class_names = [o.class_name for o in objects]
    ratios = size_ratios(class_names, config)
    fitting = _fitting_scenes(class_names, scenes)
    min_area = min_box_area(len(objects), canvas_size)
    layouts = []
    for i in range(first_index, first_index + n):
        try:
            layouts.append(_plan_one(composition, objects, i, seed, canvas_size, config,
                                     fitting[i % len(fitting)], ratios, min_area))
        except ValueError as exc:
            raise ValueError(f"{composition} layout {i}: {exc}") from exc
    return layouts


class RuleBasedLayoutPlanner:
    """The embedded :class:`~gen4gen.backends.LayoutPlanner`: :func:`plan_layouts` with its configuration."""

    name = PLANNER_NAME

    def __init__(self, config: LayoutConfig):
        self.config = config

    def identity(self) -> dict:
        return {"backend": self.name}

    def plan(self, composition: str, objects: list[ObjectSpec], n: int, seed: int, canvas_size: int,
             scenes: list[SceneSpec], first_index: int = 0) -> list[Layout]:
        return plan_layouts(composition, objects, n, seed, canvas_size, self.config, scenes, first_index)

    def close(self) -> None:
        """Nothing to release: the planner holds no model."""
