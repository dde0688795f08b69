"""Background scenes: the user's scene bank, or photos shipped inside installed packages.

Every scene has a ground (README: "Scenes with a ground plane"): a horizon and a floor on which
objects stand. :func:`plan_ground` chooses, per image, how a scene is drawn (its photo, variant,
mirror image and light direction) and computes where its floor lies; :func:`ground_scene` draws
it, caching what does not depend on the image (the warped floor of each scene variant).
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

# A scene photo without annotations has its horizon guessed here (fraction of its height,
# about eye level for a photo taken standing); recorded in the layout as a guess.
GUESSED_HORIZON = 0.45
# Renders of each warped scene (texture offset, backdrop crop): each image picks one of them
# and may mirror it, so a scene shows 2 x this many looks while costing this many renders.
SCENE_VARIANTS = 2
# A user's scene folder may annotate its photos in this file: {"horizon": 0.45, "floor_top":
# 0.6, "top_down": false} (fractions of the photo's height, from the top).
SCENE_SIDECAR = "scene.json"
# Photos that are top-down textures: only ever a floor (gen4gen.ground_plane.perspective_floor_scene).
TOP_DOWN_TEXTURE_PHOTOS: frozenset[str] = frozenset({"pkg:skimage_grass", "pkg:skimage_gravel", "pkg:skimage_concrete"})


@dataclass(frozen=True)
class SceneSpec:
    name: str  # folder name in <data>/backgrounds/, also the key stored in layouts
    prompt: str  # background phrase used in captions and repaint prompts
    setting: str = "any"  # "indoor", "outdoor" or "any"
    photos: tuple[str, ...] = field(default_factory=tuple)  # files, or "pkg:<name>" for packaged ones
    # The ground. A top-down photo (TOP_DOWN_TEXTURE_PHOTOS, or `top_down`) is warped into a
    # floor receding to the horizon, under `backdrop` (None: a sky). An upright photo with
    # `floor` stands behind that floor: a distant view, or a wall on it with `wall_gap`. An
    # upright photo without `floor` is a real photo whose ground starts at `floor_top`.
    floor: str | None = None
    backdrop: str | None = None
    horizon: float | None = None  # fraction of the height; None: GUESSED_HORIZON (recorded as a guess)
    floor_top: float | None = None  # real photos: first row of their ground; None: the horizon
    wall_gap: float | None = None  # share of the floor's rows between the horizon and a wall's foot
    top_down: bool = False


# Photos that ship inside scikit-learn / scikit-image: no download at run time. The temple
# photo was taken from a hill: it is a distant view behind a lawn, never ground to stand on.
BUILTIN_SCENES: tuple[SceneSpec, ...] = (
    SceneSpec("lakeside_temple", "a temple garden by a lake", "outdoor", ("pkg:sklearn_china",),
              floor="pkg:skimage_grass", horizon=0.5),
    SceneSpec("lawn", "a sunny lawn in a park", "outdoor", ("pkg:skimage_grass",), horizon=0.45),
    SceneSpec("gravel_path", "a gravel path", "outdoor", ("pkg:skimage_gravel",), horizon=0.45),
    SceneSpec("brick_wall", "a room with a brick wall", "indoor", ("pkg:skimage_brick_wall",),
              floor="pkg:skimage_concrete", horizon=0.4, wall_gap=0.2),
)

# Words in a user's scene folder name that tell where it is.
_INDOOR_WORDS = {"room", "kitchen", "table", "desk", "indoor", "office", "shelf", "floor", "bedroom", "studio", "wall"}
_OUTDOOR_WORDS = {"garden", "park", "beach", "street", "lawn", "forest", "mountain", "lake", "outdoor", "field", "snow", "city", "road", "path", "jungle"}


def _setting_from_name(name: str) -> str:
    words = set(name.lower().replace("-", "_").split("_"))
    if words & _INDOOR_WORDS:
        return "indoor"
    if words & _OUTDOOR_WORDS:
        return "outdoor"
    return "any"


def discover_scene_bank(backgrounds_dir: Path, extensions: list[str],
                        problems: list[dict] | None = None) -> list[SceneSpec]:
    """Scenes from ``<data>/backgrounds/<scene>/``; the built-in scenes when there are none.

    A scene folder or photo whose real path leaves the scene bank (a link to elsewhere) is
    refused and, when ``problems`` is given, reported there with the file named.
    """
    from .io import BadInput
    from .roots import scene_bank_root

    root = scene_bank_root(backgrounds_dir)
    refused = problems if problems is not None else []
    scenes = []
    if backgrounds_dir.is_dir():
        for folder in sorted(p for p in backgrounds_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            photos = []
            for path in sorted(folder.iterdir()):
                if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in extensions:
                    continue
                try:
                    root.check(path)
                except BadInput as exc:
                    refused.append({"path": str(path), "reason": exc.reason})
                    continue
                photos.append(str(path))
            if photos:
                prompt = folder.name.replace("_", " ").replace("-", " ")
                scenes.append(SceneSpec(folder.name, prompt, _setting_from_name(folder.name), tuple(photos),
                                        **_sidecar(folder / SCENE_SIDECAR)))
    return scenes or list(BUILTIN_SCENES)


def _sidecar(path: Path) -> dict:
    """A scene folder's annotations (horizon, floor_top, top_down); BadInput naming the file when malformed."""
    from .io import BadInput

    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInput(path, f"not a readable JSON file ({exc}); write e.g. {{\"horizon\": 0.45}}") from None
    allowed = {"horizon", "floor_top", "top_down"}
    if not isinstance(data, dict) or set(data) - allowed:
        raise BadInput(path, f"must be a JSON object with keys among {sorted(allowed)} (fractions of the photo's "
                             f"height from the top, and top_down true for a texture seen from above)")
    for key in ("horizon", "floor_top"):
        value = data.get(key)
        if value is not None and not (isinstance(value, (int, float)) and 0.05 <= value <= 0.9):
            raise BadInput(path, f"{key} must be a fraction of the photo's height within [0.05, 0.9], got {value!r}")
    if not isinstance(data.get("top_down", False), bool):
        raise BadInput(path, f"top_down must be true or false, got {data['top_down']!r}")
    if data.get("horizon") is not None and data.get("floor_top") is not None and data["floor_top"] < data["horizon"]:
        raise BadInput(path, "floor_top must not lie above the horizon")
    return {k: data[k] for k in ("horizon", "floor_top", "top_down") if k in data}


# Dark and light colours for scikit-image's greyscale textures.
_TEXTURE_TINTS = {
    "skimage_grass": ("#14290c", "#a9d77a"),
    "skimage_gravel": ("#3b3128", "#e0d2bd"),
    "skimage_brick": ("#3a1510", "#d9957a"),
    "skimage_concrete": ("#4b4a47", "#c9c6bf"),
}
# Packaged "photos" made from another: the gravel texture tinted grey is a concrete floor.
_ALIASES = {"skimage_concrete": "skimage_gravel"}


def load_packaged_photo(name: str) -> np.ndarray:
    """An RGB uint8 array of a photo shipped inside an installed package."""
    if name == "sklearn_china":
        from sklearn.datasets import load_sample_image

        return load_sample_image("china.jpg")
    if name == "sklearn_flower":
        from sklearn.datasets import load_sample_image

        return load_sample_image("flower.jpg")
    if name == "skimage_brick_wall":
        # The brick photo's courses run vertically: turned upright to stand as a wall.
        return np.ascontiguousarray(np.rot90(load_packaged_photo("skimage_brick")))
    if name.startswith("skimage_"):
        import skimage.data

        array = getattr(skimage.data, _ALIASES.get(name, name).removeprefix("skimage_"))()
        if isinstance(array, tuple):  # stereo_motorcycle returns (left, right, disparity)
            array = array[0]
        if array.ndim == 2:
            tint = _TEXTURE_TINTS.get(name)
            if tint:  # greyscale textures: map the grey levels onto the material's colours
                from PIL import Image, ImageOps

                return np.asarray(ImageOps.colorize(Image.fromarray(array.astype(np.uint8)), *tint))
            array = np.stack([array] * 3, axis=-1)
        return np.ascontiguousarray(array[..., :3].astype(np.uint8))
    raise KeyError(f"unknown packaged photo {name!r}")


# ---------------------------------------------------------------- ground scenes
def ground_kind(spec: SceneSpec, photo: str) -> str:
    """How ``photo`` of ``spec`` makes a scene: "floor_texture", "backdrop" (behind a floor) or "photo"."""
    if photo in TOP_DOWN_TEXTURE_PHOTOS or spec.top_down:
        return "floor_texture"
    return "backdrop" if spec.floor else "photo"


def plan_ground(spec: SceneSpec, canvas: int, rng: np.random.Generator) -> dict:
    """How one image draws ``spec``: a JSON-able recipe for :func:`ground_scene` with the floor's rows.

    Chosen from ``rng``: the photo, the render variant, whether it is mirrored, the crop of a
    real photo and the light direction (one per image: every shadow falls the same way). The
    recipe lists what was guessed rather than annotated or measured.
    """
    if not spec.photos:
        raise ValueError(f"scene {spec.name!r} has no photo")
    photo = spec.photos[int(rng.integers(len(spec.photos)))]
    variant, flip = int(rng.integers(SCENE_VARIANTS)), bool(rng.random() < 0.5)
    angle = rng.uniform(0.1, 0.5) * math.pi / 2  # below horizontal: shadows fall a little towards the viewer
    side = 1.0 if rng.random() < 0.5 else -1.0
    light = [round(side * math.cos(angle), 6), round(math.sin(angle), 6)]
    kind = ground_kind(spec, photo)
    horizon, guessed = spec.horizon, []
    if horizon is None:
        horizon = GUESSED_HORIZON
        guessed.append(f"horizon at {GUESSED_HORIZON:g} of the height (no {SCENE_SIDECAR} beside the photos)")
    crop_x = 0
    if kind == "photo":
        scaled = _scaled_photo(photo, canvas)
        height, width = scaled.shape[:2]
        top = (height - canvas) // 2
        crop_x = int(rng.integers(0, width - canvas + 1))
        horizon_y = min(max(round(horizon * height) - top, 1), canvas - 2)
        floor_top_y = horizon_y
        if spec.floor_top is None:
            guessed.append("ground from the horizon down (not annotated)")
        else:
            floor_top_y = min(max(round(spec.floor_top * height) - top, horizon_y), canvas - 2)
    else:
        horizon_y = int(round(horizon * canvas))
        floor_top_y = horizon_y if spec.wall_gap is None else \
            horizon_y + max(1, int(round(spec.wall_gap * (canvas - horizon_y))))
    guessed.append("light direction drawn per image (not measured)")
    return {"scene": spec.name, "kind": kind, "photo": photo,
            "floor": spec.floor if kind == "backdrop" else None,
            "backdrop": spec.backdrop if kind == "floor_texture" else None,
            "horizon": horizon, "wall_gap": spec.wall_gap if kind != "photo" else None, "variant": variant,
            "flip": flip, "crop_x": crop_x, "horizon_y": horizon_y, "floor_top_y": floor_top_y,
            "light_direction": light, "guessed": guessed}


def ground_scene(recipe: dict, canvas: int):
    """The :class:`~gen4gen.ground_plane.GroundScene` a :func:`plan_ground` recipe describes (a fresh array)."""
    from .ground_plane import GroundScene

    if recipe["kind"] == "photo":
        scaled = _scaled_photo(recipe["photo"], canvas)
        top, left = (scaled.shape[0] - canvas) // 2, int(recipe["crop_x"])
        image, extra = scaled[top:top + canvas, left:left + canvas], []
    else:
        rendered = _rendered(recipe["kind"], recipe["photo"], recipe.get("floor"), recipe.get("backdrop"),
                             float(recipe["horizon"]), recipe.get("wall_gap"), canvas, int(recipe["variant"]),
                             _stamp(recipe["photo"], recipe.get("floor"), recipe.get("backdrop")))
        if (rendered.horizon_y, rendered.floor_top_y) != (recipe["horizon_y"], recipe["floor_top_y"]):
            raise ValueError(f"scene {recipe['scene']!r}: the recipe's floor rows do not match its render")
        image = rendered.image
        extra = [g for g in rendered.guessed if not g.startswith(("horizon", "light"))]
    import cv2

    image = cv2.flip(np.ascontiguousarray(image), 1) if recipe["flip"] else np.array(image, order="C")
    return GroundScene(image=image, horizon_y=int(recipe["horizon_y"]), floor_top_y=int(recipe["floor_top_y"]),
                       light_direction=tuple(float(v) for v in recipe["light_direction"]), source=recipe["photo"],
                       guessed=list(recipe["guessed"]) + extra)


def scene_photo(source: str) -> np.ndarray:
    """A scene photo's pixels: "pkg:<name>" or a file (decoded once per process while unchanged)."""
    return _photo(source, _stamp(source))


def _stamp(*sources: str | None) -> tuple:
    """Size and modification time of the files among ``sources``: a changed file is loaded again."""
    stamps = []
    for source in sources:
        if source and not source.startswith("pkg:"):
            stat = Path(source).stat()
            stamps.append((stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


@lru_cache(maxsize=16)
def _photo(source: str, stamp: tuple) -> np.ndarray:
    if source.startswith("pkg:"):
        array = load_packaged_photo(source.removeprefix("pkg:"))
    else:
        from .io import load_photo

        array = load_photo(source).rgb
    array.setflags(write=False)
    return array


def _scaled_photo(source: str, canvas: int) -> np.ndarray:
    return _scaled(source, canvas, _stamp(source))


@lru_cache(maxsize=16)
def _scaled(source: str, canvas: int, stamp: tuple) -> np.ndarray:
    """The photo scaled so its shorter side is ``canvas`` (it then covers the square canvas)."""
    from PIL import Image

    photo = _photo(source, stamp)
    height, width = photo.shape[:2]
    scale = canvas / min(height, width)
    size = (max(canvas, round(width * scale)), max(canvas, round(height * scale)))
    scaled = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BICUBIC))
    scaled.setflags(write=False)
    return scaled


@lru_cache(maxsize=24)
def _rendered(kind: str, photo: str, floor: str | None, backdrop: str | None, horizon: float,
              wall_gap: float | None, canvas: int, variant: int, stamp: tuple):
    """A warped floor scene, rendered once per process for each scene variant and canvas size."""
    from .ground_plane import perspective_floor_scene

    texture, above = (photo, backdrop) if kind == "floor_texture" else (floor, photo)
    seed = zlib.crc32(f"{texture}|{above}|{variant}".encode())
    scene = perspective_floor_scene(scene_photo(texture), scene_photo(above) if above else None, size=canvas,
                                    horizon_frac=horizon, seed=seed, wall_gap_frac=wall_gap, source=photo)
    scene.image.setflags(write=False)
    return scene
