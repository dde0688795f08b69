"""Shared fixtures: synthetic concept photos (no downloads) and a small project configuration."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

SMALL_CONFIG = """
seed = 7
[proposal]
max_compositions = 4
[layout]
images_per_composition = 3
[composition]
canvas_size = 256
[report]
contact_sheet_thumb = 64
"""


def object_photo(shape: str, colour: tuple[int, int, int], size=(200, 160), seed: int = 0,
                 transparent: bool = True) -> Image.Image:
    """A textured object on a transparent (or plain grey) background, with its true mask."""
    rng = np.random.default_rng(seed)
    width, height = size
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    box = (int(width * 0.2), int(height * 0.15), int(width * 0.8), int(height * 0.9))
    if shape == "ellipse":
        draw.ellipse(box, fill=255)
    elif shape == "triangle":
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=255)
    else:
        draw.rounded_rectangle(box, radius=12, fill=255)
    texture = np.clip(np.array(colour, np.float32) + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    if transparent:
        return Image.fromarray(np.dstack([texture, np.asarray(mask)]), "RGBA")
    background = np.full((height, width, 3), 200, np.uint8)
    m = np.asarray(mask)[..., None] > 0
    return Image.fromarray(np.where(m, texture, background))


def make_concepts(concepts_dir: Path, spec: dict[str, list[tuple[str, tuple[int, int, int]]]]) -> None:
    for index, (name, photos) in enumerate(spec.items()):
        folder = concepts_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for k, (shape, colour) in enumerate(photos):
            object_photo(shape, colour, seed=index * 10 + k).save(folder / f"photo {k}.png")


def create_small_project(root: Path, extra_config: str = "") -> tuple[Path, Path]:
    """Three synthetic concepts under ``root/data`` and a small configuration file; returns both."""
    data = root / "data"
    make_concepts(data / "concepts", {
        "red_ball": [("ellipse", (200, 40, 40)), ("ellipse", (180, 60, 50))],
        "blue box": [("rect", (40, 60, 200))],
        "green_cone": [("triangle", (40, 170, 60))],
    })
    config_file = root / "gen4gen.toml"
    # Top-level keys must come before the first [section] in TOML.
    config_file.write_text(f'data_dir = "{data.as_posix()}"\n' + SMALL_CONFIG + extra_config, encoding="utf-8")
    return data, config_file


@pytest.fixture
def small_project(tmp_path, monkeypatch):
    """A data folder with three synthetic concepts and a small configuration file."""
    data, config_file = create_small_project(tmp_path)
    monkeypatch.delenv("GEN4GEN_CONFIG", raising=False)
    monkeypatch.delenv("GEN4GEN_DATA_DIR", raising=False)
    monkeypatch.delenv("GEN4GEN_PROFILE", raising=False)  # `make ... PROFILE=paper` exports it
    return tmp_path, data, config_file


def requires_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is absent (../shared is not beside this checkout)")


def build_template(root: Path) -> Path:
    """A small project built once (Dagster, in process), for tests that each work on a copy."""
    from dagster import DagsterInstance

    from gen4gen_assets.definitions import build_definitions
    from gen4gen_assets.runner import materialize_all

    _, config_file = create_small_project(root)
    summary = materialize_all(build_definitions(config_file=str(config_file)), DagsterInstance.ephemeral(),
                              log=lambda *_: None)
    assert not summary.failed, summary.failed
    return root


def copy_template(template: Path, target: Path) -> tuple[Path, Path]:
    """A copy of a built template's data folder (modification times kept) and its configuration
    pointing at the copy; returns (data, config_file). The data folder keeps no absolute path, so
    the copy is a project of its own."""
    import shutil

    shutil.copytree(template / "data", target / "data", symlinks=True, copy_function=shutil.copy2)
    config_file = target / "gen4gen.toml"
    text = (template / "gen4gen.toml").read_text()
    config_file.write_text(text.replace(str((template / "data").as_posix()), (target / "data").as_posix()))
    return target / "data", config_file
