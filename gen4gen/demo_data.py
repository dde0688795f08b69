"""Sample concepts from photos shipped inside installed packages: nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

from .io import atomic_write_png, concept_identity
from .scenes import load_packaged_photo

# concept folder -> packaged photos (the folder name gives the class: "coffee_cup" -> "coffee cup")
DEMO_CONCEPTS: dict[str, tuple[str, ...]] = {
    "astronaut": ("skimage_astronaut",),
    "cat": ("skimage_chelsea",),
    "coffee_cup": ("skimage_coffee",),
    "flower": ("sklearn_flower",),
    "motorcycle": ("skimage_stereo_motorcycle",),
}


def write_demo_concepts(concepts_dir: Path) -> list[Path]:
    """Write each sample photo as ``<concepts_dir>/<concept>/<photo>.png``; existing files are kept.

    A sample whose key a folder of the user's already has (``Cat`` for ``cat``) is left out: two
    folders of one concept would make the catalogue refuse one of them.
    """
    taken = ({concept_identity(f.name): f.name for f in concepts_dir.iterdir() if f.is_dir()}
             if concepts_dir.is_dir() else {})
    written = []
    for concept, photos in DEMO_CONCEPTS.items():
        if taken.get(concept_identity(concept), concept) != concept:
            continue
        for name in photos:
            target = concepts_dir / concept / f"{name}.png"
            if not target.exists():
                atomic_write_png(target, load_packaged_photo(name))
                written.append(target)
    return written
