"""Background scenes: the user's scene bank, or photos shipped inside installed packages."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SceneSpec:
    name: str  # folder name in <data>/backgrounds/, also the key stored in layouts
    prompt: str  # background phrase used in captions and repaint prompts
    setting: str = "any"  # "indoor", "outdoor" or "any"
    photos: tuple[str, ...] = field(default_factory=tuple)  # files, or "pkg:<name>" for packaged ones


# Photos that ship inside scikit-learn / scikit-image: no download at run time.
BUILTIN_SCENES: tuple[SceneSpec, ...] = (
    SceneSpec("lakeside_temple", "a temple garden by a lake", "outdoor", ("pkg:sklearn_china",)),
    SceneSpec("lawn", "a sunny lawn in a park", "outdoor", ("pkg:skimage_grass",)),
    SceneSpec("gravel_path", "a gravel path", "outdoor", ("pkg:skimage_gravel",)),
    SceneSpec("brick_wall", "a room with a brick wall", "indoor", ("pkg:skimage_brick",)),
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
                scenes.append(SceneSpec(folder.name, prompt, _setting_from_name(folder.name), tuple(photos)))
    return scenes or list(BUILTIN_SCENES)


# Dark and light colours for scikit-image's greyscale textures.
_TEXTURE_TINTS = {
    "skimage_grass": ("#14290c", "#a9d77a"),
    "skimage_gravel": ("#3b3128", "#e0d2bd"),
    "skimage_brick": ("#3a1510", "#d9957a"),
}


def load_packaged_photo(name: str) -> np.ndarray:
    """An RGB uint8 array of a photo shipped inside an installed package."""
    if name == "sklearn_china":
        from sklearn.datasets import load_sample_image

        return load_sample_image("china.jpg")
    if name == "sklearn_flower":
        from sklearn.datasets import load_sample_image

        return load_sample_image("flower.jpg")
    if name.startswith("skimage_"):
        import skimage.data

        array = getattr(skimage.data, name.removeprefix("skimage_"))()
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
