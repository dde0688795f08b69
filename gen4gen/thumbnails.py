"""Thumbnail grids: the contact sheet of the report and inline previews in Dagster metadata."""
from __future__ import annotations

import base64
import io

from pathlib import Path

import numpy as np
from PIL import Image


def thumbnail_grid(images: list[Image.Image | np.ndarray], thumb: int, columns: int,
                   background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Images fitted into ``thumb``-sized cells, ``columns`` per row."""
    columns = max(1, min(columns, len(images) or 1))
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * thumb, rows * thumb), background)
    for i, image in enumerate(images):
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        image = image.convert("RGBA") if image.mode in ("RGBA", "LA", "P") else image.convert("RGB")
        image.thumbnail((thumb, thumb), Image.Resampling.BILINEAR)
        x = (i % columns) * thumb + (thumb - image.width) // 2
        y = (i // columns) * thumb + (thumb - image.height) // 2
        sheet.paste(image, (x, y), image if image.mode == "RGBA" else None)
    return sheet


def cached_thumbnails(images: list[tuple[Path, str | None]], cache_dir: Path, thumb: int) -> list[Image.Image]:
    """Thumbnails keyed by the image's sha256 (or, when not given, its path, size and mtime):
    an image is decoded once, whatever the reruns.

    Incremental rebuilds add a few images to a dataset of thousands; only those are opened.
    """
    import hashlib

    from .io import atomic_write_png

    result = []
    for path, digest in images:
        if digest is None:
            stat = path.stat()
            digest = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
        cached = cache_dir / f"{digest[:24]}_{thumb}.png"
        if cached.is_file():
            image = Image.open(cached)
            image.load()
        else:
            image = Image.open(path).convert("RGB")
            image.thumbnail((thumb, thumb), Image.Resampling.BILINEAR)
            atomic_write_png(cached, image, compress_level=1)
        result.append(image)
    return result


def markdown_thumbnails(images: list, thumb: int = 128, columns: int = 4, cache_dir: Path | None = None) -> str:
    """A small inline JPEG grid as Markdown, for materialisation metadata in the UI.

    ``images`` are images or, with ``cache_dir``, paths whose thumbnails are cached there.
    """
    if not images:
        return "_no images_"
    if cache_dir is not None:
        images = cached_thumbnails([(Path(p), None) for p in images], cache_dir, thumb)
    buffer = io.BytesIO()
    thumbnail_grid(images, thumb, columns).save(buffer, format="JPEG", quality=70)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"![preview](data:image/jpeg;base64,{encoded})"
