"""Sample concepts from photos shipped inside installed packages: nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

from .io import atomic_write_png, concept_identity
from .scenes import load_packaged_photo

# concept folder -> packaged photos (the folder name gives the class: "coffee_cup" -> "coffee cup").
# Whole objects where a package ships one: the cup on its saucer, the dahlia's bloom and the
# motorcycle stand whole in their photos. No installed package ships a whole astronaut or cat:
# their samples stay, as the photos the cut-out checks turn away (DEMO_NOTES).
DEMO_CONCEPTS: dict[str, tuple[str, ...]] = {
    "astronaut": ("skimage_astronaut",),
    "cat": ("skimage_chelsea",),
    "coffee_cup": ("skimage_coffee",),
    "flower": ("sklearn_flower",),
    "motorcycle": ("skimage_stereo_motorcycle",),
}

# What the demo says about the samples that are not good concept photos.
DEMO_NOTES: dict[str, str] = {
    "astronaut": "no installed package ships a whole astronaut: the sample is cut at the waist by its photo's frame, "
                 "so its images are rejected (truncated_source)",
    "cat": "no installed package ships a whole cat: the sample is a face close-up filling its photo, so its images "
           "are rejected (truncated_source, rectangular_cutout)",
}


def demo_notes(concepts: list[str] | None = None) -> list[str]:
    """One line per demo concept without a good packaged photo, with what to do about it."""
    names = DEMO_CONCEPTS if concepts is None else concepts
    return [f"{name}: {DEMO_NOTES[name]}; add photos of a whole {name.replace('_', ' ')} on a plain background "
            f"(several views) to <concepts>/{name}/" for name in names if name in DEMO_NOTES]


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
