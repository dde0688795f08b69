"""One demo image composed twice, the way the embedded default composed it before ground-plane
scenes and the way it does now, side by side: the README's before/after pair.

    .venv/bin/python -m gen4gen.before_after [--out docs/before_after.jpg] [--composition KEY] [--index N]

"Before" is the current code with the new craft switched off by configuration (BEFORE below):
objects in a band at the bottom at the paper's clamped sizes, no ground, no contact shadow,
no blur or noise matching, uncleaned cut-outs, the scene's photo as the backdrop and one global
colour shift. Both images come from the same photos, seed and layout index, built with the stage
functions on a temporary data folder (the demo's photos, nothing downloaded).
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# The configuration that reproduces the look of the embedded default before ground-plane scenes.
BEFORE = {
    "layout": {"placement": "band", "size_ratio_range": [0.4, 1.0]},
    "segmentation": {"clean_cutouts": False, "decontaminate_edges": False},
    "composition": {"shadow_strength": 0.0, "max_blur_sigma": 0.0},
}
AFTER: dict = {}  # the defaults
DEFAULT_COMPOSITION = "coffee_cup+flower+motorcycle"  # the demo's whole objects


def _toml(values: dict, data_dir: Path, composition: str, seed: int) -> str:
    import json

    lines = [f"data_dir = {json.dumps(data_dir.as_posix())}", f"seed = {seed}",
             "[proposal]", f"explicit = [{json.dumps(composition)}]"]
    for section, keys in values.items():
        if section == "proposal":
            continue
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def build_variant(work: Path, name: str, values: dict, composition: str, seed: int) -> dict[int, Path]:
    """Build ``composition`` under one configuration; its recoloured images by layout index."""
    from .concepts import build_registry, concept_lookup
    from .config import PROJECT_ROOT, load_config
    from .layout import RuleBasedLayoutPlanner
    from .pooled_backends import repainter_spec
    from .scenes import discover_scene_bank
    from .segmentation import IsNetOnnxSegmenter
    from .stages import compose_composition, plan_composition, recolour_composition, segment_concept

    data = work / name / "data"
    shared_concepts = work / "concepts"
    shutil.copytree(shared_concepts, data / "concepts")
    config_file = work / name / "gen4gen.toml"
    config_file.write_text(_toml(values, data, composition, seed), encoding="utf-8")
    config = load_config(config_file)
    paths = config.paths
    registry = build_registry(config, {"concepts": [], "compositions": []})
    members = set(composition.split("+"))
    segmenter = IsNetOnnxSegmenter(config.segmentation, PROJECT_ROOT)  # GrabCut when the weights are absent
    for concept in concept_lookup(registry).values():
        if concept.key in members:
            segment_concept(concept, segmenter, paths.segmented(concept.key), config)
    scenes = discover_scene_bank(paths.backgrounds, config.input.image_extensions)
    plan_composition(composition, registry, config, RuleBasedLayoutPlanner(config.layout), scenes)
    compose_composition(composition, config)
    manifest = recolour_composition(composition, config, repainter_spec(config, PROJECT_ROOT).build()).manifest
    return {entry["index"]: paths.recoloured(composition) / entry["image"] for entry in manifest["images"]}


def side_by_side(before: Image.Image, after: Image.Image, side: int) -> Image.Image:
    """The two images at ``side`` pixels each, with a caption strip above each."""
    font = ImageFont.load_default(size=max(12, side // 28))
    strip = font.size + 12
    sheet = Image.new("RGB", (2 * side + 8, side + strip), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (image, title) in enumerate(((before, "before: sizes clamped, objects in a band, no ground or shadow"),
                                        (after, "after: on the floor at real sizes, shadows, local harmony"))):
        x = k * (side + 8)
        sheet.paste(image.convert("RGB").resize((side, side), Image.Resampling.LANCZOS), (x, strip))
        draw.text((x + 4, 5), title, fill=(20, 20, 20), font=font)
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/before_after.jpg", help="the pair, side by side (JPEG)")
    parser.add_argument("--composition", default=DEFAULT_COMPOSITION, help="a key of demo concepts")
    parser.add_argument("--index", type=int, default=None,
                        help="layout index (default: the first one built under both configurations)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side", type=int, default=512, help="pixels per image in the pair")
    args = parser.parse_args(argv)
    from .demo_data import DEMO_CONCEPTS, write_demo_concepts

    unknown = sorted(set(args.composition.split("+")) - set(DEMO_CONCEPTS))
    if unknown:
        print(f"--composition {args.composition}: {', '.join(unknown)} not among the demo concepts "
              f"({', '.join(DEMO_CONCEPTS)})", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gen4gen-before-after-"))
    try:
        write_demo_concepts(work / "concepts")
        before = build_variant(work, "before", BEFORE, args.composition, args.seed)
        after = build_variant(work, "after", AFTER, args.composition, args.seed)
        common = sorted(set(before) & set(after))
        index = args.index if args.index is not None else (common[0] if common else None)
        if index not in common:
            print(f"layout {index} was not built under both configurations (both have: {common})", file=sys.stderr)
            return 2
        with Image.open(before[index]) as b, Image.open(after[index]) as a:
            pair = side_by_side(b, a, args.side)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        from .io import atomic_write_bytes

        buffer = io.BytesIO()
        pair.save(buffer, format="JPEG", quality=82, optimize=True)
        atomic_write_bytes(out, buffer.getvalue())
        print(f"{out}: {args.composition} image {index:03d}, before | after ({len(buffer.getvalue()) // 1024} KiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
