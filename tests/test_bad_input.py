"""Bad and unusual user input, part 1: photo loading. Every problem names the file and the reason.

Corrupt, truncated, odd colour modes, EXIF rotation, tiny, huge (downscaled while decoding),
and files whose content does not match their extension. Shared helpers of the other
``test_bad_input_*`` files live here too.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gen4gen.config import InputConfig
from gen4gen.concepts import discover_concepts
from gen4gen.io import BadInput, load_photo

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 40), (30, 40, 220)


# ---------------------------------------------------------------- helpers
def solid(mode: str, size, colour) -> Image.Image:
    return Image.new(mode, size, colour)


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_unreadable(path: Path, seed: int = 0) -> None:
    path.write_bytes(random.Random(seed).randbytes(5000))


def problems_for(problems: list[dict], suffix: str) -> list[str]:
    """Reasons of the problem records whose path ends with ``suffix``."""
    return [p["reason"] for p in problems if p["path"].endswith(suffix)]


def discover(concepts_dir: Path, data_dir: Path | None = None, **kwargs):
    return discover_concepts(concepts_dir, data_dir or concepts_dir.parent, InputConfig(), **kwargs)


def close_to(pixel, colour, tolerance=6) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(colour, int)) <= tolerance))


# ---------------------------------------------------------------- 1. load_photo
def test_unreadable_file_with_jpg_name_is_bad_input_naming_it(tmp_path):
    path = tmp_path / "not really.jpg"
    write_unreadable(path)
    with pytest.raises(BadInput) as info:
        load_photo(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert "corrupt" in info.value.reason or "not a readable image" in info.value.reason


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_bad_input_naming_it(tmp_path, fmt):
    rng = np.random.default_rng(1)
    path = tmp_path / f"half.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)).save(path, format=fmt)
    load_photo(path)  # the whole file is fine
    truncate(path)
    with pytest.raises(BadInput) as info:
        load_photo(path)
    assert str(path) in str(info.value)
    assert "truncated" in info.value.reason or "corrupt" in info.value.reason


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    solid("CMYK", (120, 90), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    loaded = load_photo(path)
    assert loaded.rgb.shape == (90, 120, 3) and loaded.rgb.dtype == np.uint8
    assert close_to(loaded.rgb[45, 60], (255, 0, 0))
    assert loaded.alpha is None


def test_greyscale_becomes_rgb(tmp_path):
    path = tmp_path / "grey.png"
    solid("L", (100, 80), 77).save(path)
    loaded = load_photo(path)
    assert loaded.rgb.shape == (80, 100, 3) and loaded.rgb.dtype == np.uint8
    assert tuple(loaded.rgb[40, 50]) == (77, 77, 77)
    assert loaded.alpha is None


def test_16_bit_png_keeps_its_brightness(tmp_path):
    path = tmp_path / "deep.png"
    values = np.full((80, 100), 0x8080, np.uint16)  # mid grey: 128 in 8 bits
    values[:, :10] = 0
    values[:, -10:] = 0xFFFF
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    loaded = load_photo(path)
    assert loaded.rgb.shape == (80, 100, 3) and loaded.rgb.dtype == np.uint8
    assert tuple(loaded.rgb[40, 50]) == (128, 128, 128)
    assert tuple(loaded.rgb[40, 0]) == (0, 0, 0)
    assert tuple(loaded.rgb[40, 99]) == (255, 255, 255)
    assert any("16-bit" in note and str(path) in note for note in loaded.warnings)


def test_dark_16_bit_png_is_not_stretched_to_white(tmp_path):
    path = tmp_path / "dark.png"
    Image.fromarray(np.full((80, 100), 0x2020, np.uint16)).save(path)
    assert tuple(load_photo(path).rgb[10, 10]) == (32, 32, 32)


def _palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (100, 80), 1)
    palette = [0, 0, 0, *RED, *GREEN] + [0] * (256 * 3 - 9)
    image.putpalette(palette)
    image.paste(2, (0, 0, 50, 80))  # left half green, right half red
    if transparent:
        image.paste(0, (0, 0, 20, 20))  # index 0 is transparent
        image.info["transparency"] = 0
    return image


def test_palette_png_without_transparency(tmp_path):
    path = tmp_path / "palette.png"
    _palette_image(False).save(path)
    assert Image.open(path).mode == "P"
    loaded = load_photo(path)
    assert loaded.rgb.shape == (80, 100, 3) and loaded.rgb.dtype == np.uint8
    assert tuple(loaded.rgb[40, 10]) == GREEN and tuple(loaded.rgb[40, 90]) == RED
    assert loaded.alpha is None


def test_palette_png_with_transparency_returns_alpha(tmp_path):
    path = tmp_path / "palette_alpha.png"
    _palette_image(True).save(path, transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    loaded = load_photo(path)
    assert loaded.rgb.shape == (80, 100, 3)
    assert tuple(loaded.rgb[40, 10]) == GREEN and tuple(loaded.rgb[40, 90]) == RED
    assert loaded.alpha is not None and loaded.alpha.shape == (80, 100)
    assert loaded.alpha[5, 5] == 0 and loaded.alpha[40, 90] == 255


def test_rgba_with_transparency_returns_alpha(tmp_path):
    path = tmp_path / "cutout.png"
    pixels = np.zeros((80, 100, 4), np.uint8)
    pixels[..., :3] = BLUE
    pixels[20:60, 30:70, 3] = 255
    Image.fromarray(pixels, "RGBA").save(path)
    loaded = load_photo(path)
    assert loaded.rgb.shape == (80, 100, 3) and loaded.rgb.dtype == np.uint8
    assert tuple(loaded.rgb[40, 50]) == BLUE
    assert loaded.alpha is not None
    assert loaded.alpha[40, 50] == 255 and loaded.alpha[0, 0] == 0


def test_opaque_rgba_has_no_alpha(tmp_path):
    path = tmp_path / "opaque.png"
    solid("RGBA", (100, 80), (*GREEN, 255)).save(path)
    loaded = load_photo(path)
    assert loaded.alpha is None
    assert loaded.rgb.shape == (80, 100, 3) and tuple(loaded.rgb[10, 10]) == GREEN


@pytest.mark.parametrize("orientation, red_corner", [(6, "top_right"), (8, "bottom_left")])
def test_exif_rotated_jpeg_is_turned_upright(tmp_path, orientation, red_corner):
    # Stored 160 wide x 96 high, red block in the stored top-left corner, blue elsewhere.
    stored = Image.new("RGB", (160, 96), BLUE)
    stored.paste(RED, (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"rotated_{orientation}.jpg"
    path.write_bytes(jpeg_bytes(stored, exif=exif.tobytes()))
    loaded = load_photo(path)
    height, width = loaded.rgb.shape[:2]
    assert (width, height) == (96, 160)  # displayed upright: width and height swapped
    corners = {"top_left": loaded.rgb[5, 5], "top_right": loaded.rgb[5, width - 6],
               "bottom_left": loaded.rgb[height - 6, 5], "bottom_right": loaded.rgb[height - 6, width - 6]}
    for name, pixel in corners.items():
        assert close_to(pixel, RED if name == red_corner else BLUE, 12), (name, pixel)


@pytest.mark.parametrize("size", [(63, 200), (200, 40), (10, 10)])
def test_tiny_photo_is_bad_input_naming_the_minimum(tmp_path, size):
    path = tmp_path / "tiny.png"
    solid("RGB", size, RED).save(path)
    with pytest.raises(BadInput) as info:
        load_photo(path)
    assert str(path) in str(info.value)
    assert "64 px minimum" in info.value.reason
    assert f"{size[0]}x{size[1]}" in info.value.reason


def test_photo_at_the_minimum_side_loads(tmp_path):
    path = tmp_path / "small.png"
    solid("RGB", (64, 64), RED).save(path)
    assert load_photo(path).rgb.shape == (64, 64, 3)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_huge_photo_is_downscaled_with_a_warning(tmp_path, fmt):
    # 7100 x 7100 = 50.4 MP, just above the 50 MP limit; a solid colour keeps the file small.
    path = tmp_path / f"huge.{fmt.lower()}"
    image = Image.new("RGB", (7100, 7100), BLUE)
    image.save(path, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {"quality": 90}))
    del image
    loaded = load_photo(path)
    assert max(loaded.rgb.shape[:2]) <= 2048
    assert loaded.rgb.shape == (2048, 2048, 3) and loaded.rgb.dtype == np.uint8
    assert close_to(loaded.rgb[1000, 1000], BLUE, 3)
    assert any(str(path) in note and "50 MP limit" in note for note in loaded.warnings), loaded.warnings


def test_108_megapixel_jpeg_is_downscaled_while_decoding_in_bounded_memory(tmp_path):
    # 12000 x 9000 = 108 MP: above Pillow's 89 MP decompression-bomb warning, which refused it.
    # A flat colour keeps the file small; decoding it in full would take 324 MB of pixels alone.
    import json
    import subprocess
    import sys

    path = tmp_path / "108mp.jpg"
    image = Image.new("RGB", (12000, 9000), BLUE)
    image.save(path, quality=50)
    del image
    # A fresh process, so its peak memory is the load's alone.
    script = (
        "import json, resource, sys\n"
        "from PIL import Image\n"
        "from gen4gen.io import load_photo\n"
        "limit = Image.MAX_IMAGE_PIXELS\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "loaded = load_photo(sys.argv[1])\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'shape': loaded.rgb.shape, 'pixel': loaded.rgb[700, 1000].tolist(),\n"
        "                  'warnings': loaded.warnings, 'grew_mb': (after - before) / 1024,\n"
        "                  'limit_kept': Image.MAX_IMAGE_PIXELS == limit}))\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["shape"] == [1536, 2048, 3]
    assert close_to(result["pixel"], BLUE, 3)
    assert any("108.0 MP" in note and "50 MP limit" in note for note in result["warnings"]), result["warnings"]
    assert result["grew_mb"] < 160, f"peak memory grew by {result['grew_mb']:.0f} MB while loading"
    assert result["limit_kept"], "Pillow's pixel limit must not stay raised for the rest of the process"


def test_photo_above_the_full_decode_limit_is_refused_naming_the_limit(tmp_path, monkeypatch):
    import gen4gen.io as io_module

    monkeypatch.setattr(io_module, "FULL_DECODE_LIMIT_MP", 0.05)  # 50,000 px: a small PNG stands for a huge one
    path = tmp_path / "wide.png"
    solid("RGB", (300, 200), RED).save(path)
    with pytest.raises(BadInput) as info:
        load_photo(path)
    assert info.value.path == str(path) and "0.05 MP" in info.value.reason and "PNG" in info.value.reason
    jpeg = tmp_path / "wide.jpg"
    solid("RGB", (300, 200), RED).save(jpeg)  # JPEG decodes reduced: allowed far beyond
    assert load_photo(jpeg).rgb.shape == (200, 300, 3)


@pytest.mark.parametrize("real_format, name", [("GIF", "really a gif.jpg"), ("PNG", "really a png.jpg"),
                                               ("JPEG", "really a jpeg.png")])
def test_content_that_does_not_match_the_extension_is_decoded_with_a_note(tmp_path, real_format, name):
    path = tmp_path / name
    picture = Image.new("RGB", (120, 90), BLUE)
    picture.paste(RED, (0, 0, 60, 90))
    picture.save(path, format=real_format)
    loaded = load_photo(path)
    assert loaded.rgb.shape == (90, 120, 3)
    assert close_to(loaded.rgb[45, 20], RED, 12) and close_to(loaded.rgb[45, 100], BLUE, 12)
    notes = [n for n in loaded.warnings if str(path) in n and f"holds {real_format} data" in n]
    assert notes and path.suffix in notes[0], loaded.warnings
    assert loaded.alpha is None  # no transparency invented


def test_matching_content_and_extension_gets_no_note(tmp_path):
    path = tmp_path / "fine.jpg"
    solid("RGB", (100, 80), RED).save(path, format="JPEG")
    assert load_photo(path).warnings == []
