"""File handling shared by every stage: atomic writes, safe names, robust photo loading."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import threading
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class BadInput(ValueError):
    """A user file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


# ---------------------------------------------------------------- atomic writes
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over the target.

    A crash at any point leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); outputs get the usual permissions instead.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_if_changed(path: str | os.PathLike, data: bytes) -> bool:
    """Atomically write ``data`` unless the file already holds exactly these bytes.

    Unchanged outputs keep their modification time, so incremental rebuilds and file
    watchers (DVC, rsync) see only what really changed.
    """
    path = Path(path)
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    atomic_write_bytes(path, data)
    return True


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_bytes(payload) -> bytes:
    return (json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike, payload) -> Path:
    return atomic_write_bytes(path, json_bytes(payload))


def encode_png(image: Image.Image | np.ndarray, compress_level: int = 6) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    # No timestamps or other varying chunks: the same pixels give the same bytes.
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def atomic_write_png(path: str | os.PathLike, image: Image.Image | np.ndarray, compress_level: int = 6) -> Path:
    return atomic_write_bytes(path, encode_png(image, compress_level))


def read_json(path: str | os.PathLike):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def remove_stale_files(folder: Path, keep: set[str]) -> list[str]:
    """Delete files in ``folder`` whose names are not in ``keep`` (after new ones are written)."""
    removed = []
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            if entry.is_file() and entry.name not in keep:
                entry.unlink()
                removed.append(entry.name)
    return removed


# ---------------------------------------------------------------- names, hashes, seeds
_UNSAFE = re.compile(r"[^\w\-]+", re.UNICODE)


def safe_key(name: str) -> str:
    """A partition-key and file-name safe form of a user-supplied name.

    Keeps Unicode letters and digits (``café`` stays ``café``), maps spaces and punctuation
    to ``_``. ``+`` is reserved for joining concept keys into composition keys.
    """
    normalised = unicodedata.normalize("NFC", name).strip()
    key = _UNSAFE.sub("_", normalised).strip("_")
    return key


def concept_identity(name: str) -> str:
    """What makes two concepts the same one: their keys, ignoring case.

    ``Cat``, ``cat`` and ``_cat`` would share output folders on a case-insensitive disk and
    one token in captions, so only one of them can exist.
    """
    return safe_key(name).casefold()


def check_concept_name(name: str) -> str:
    """Validate a concept name given by a user; returns its key or raises BadInput."""
    if not name or not name.strip():
        raise BadInput(name, "concept name is empty")
    if "/" in name or "\\" in name or name.strip() in {".", ".."} or ".." in Path(name).parts:
        raise BadInput(name, "concept name contains a path separator or '..' and would escape the data directory")
    if name.strip().startswith("."):
        raise BadInput(name, "concept name starts with '.', which hides its folder from the catalogue")
    key = safe_key(name)
    if not key:
        raise BadInput(name, "concept name has no letters or digits")
    return key


def ensure_inside(base: Path, candidate: Path, what: str = "data directory") -> Path:
    """Resolve ``candidate`` (following links) and require it to stay inside ``base``.

    The one containment rule: ``gen4gen.roots`` names each ``base`` it is applied to.
    """
    resolved = Path(candidate).resolve()
    root = Path(base).resolve()
    if not resolved.is_relative_to(root):
        raise BadInput(candidate, f"resolves to {resolved}, outside the {what} {root}; refused")
    return resolved


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_files_cached(files: list[Path], cache_file: Path) -> dict[str, str]:
    """sha256 of many files, re-hashing only those whose size or mtime changed since last time.

    The same trade git's index and DVC make: a file rewritten with identical size and
    modification time would go unnoticed; every write of this platform changes the mtime. Files
    are keyed by their real path relative to the cache file's folder (``../../mycanvas/x.png``),
    so the cache stays valid when the data folder holding both is moved or mounted elsewhere.
    """
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        cache = {}
    result, fresh = {}, {}
    home = cache_file.parent.resolve()
    for file in files:
        stat = file.stat()
        key = Path(os.path.relpath(file.resolve(), home)).as_posix()
        known = cache.get(key)
        digest = known[2] if known and known[:2] == [stat.st_size, stat.st_mtime_ns] else sha256_file(file)
        fresh[key] = [stat.st_size, stat.st_mtime_ns, digest]
        result[str(file)] = digest
    if fresh != cache:
        atomic_write_text(cache_file, json.dumps(fresh))
    return result


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any parts (global seed, composition key, image index...)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


# ---------------------------------------------------------------- photo loading
# Pillow refuses images above its MAX_IMAGE_PIXELS (about 89 MP) as possible decompression bombs.
# The platform decides instead, by how much memory decoding needs: JPEG decodes at 1/2 to 1/8
# scale (``draft``), so it is bounded up to REDUCED_DECODE_LIMIT_MP; other formats decode in
# full (3 bytes a pixel), up to FULL_DECODE_LIMIT_MP.
REDUCED_DECODE_LIMIT_MP = 1000.0
FULL_DECODE_LIMIT_MP = 180.0
_DRAFT_FORMATS = {"JPEG", "MPO"}  # MPO: the multi-picture JPEG of many cameras
_FORMATS_OF_EXTENSION = {
    ".jpg": {"JPEG", "MPO"}, ".jpeg": {"JPEG", "MPO"}, ".png": {"PNG"}, ".webp": {"WEBP"},
    ".bmp": {"BMP", "DIB"}, ".tif": {"TIFF"}, ".tiff": {"TIFF"}, ".gif": {"GIF"},
}
# Pillow's limit is a module global: it is raised only while this module opens a file.
_PIXEL_LIMIT_LOCK = threading.Lock()


def _open_with_our_limit(path: Path) -> Image.Image:
    """``Image.open`` with Pillow's bomb limit at ours, for this call only (the header is read here)."""
    with _PIXEL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = int(REDUCED_DECODE_LIMIT_MP * 1e6)
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


@dataclass
class LoadedPhoto:
    path: Path
    rgb: np.ndarray  # HxWx3 uint8
    alpha: np.ndarray | None  # HxW uint8 when the file had real transparency
    warnings: list[str] = field(default_factory=list)


def load_photo(path: str | os.PathLike, min_side: int = 64, max_megapixels: float = 50.0,
               downscale_long_side: int = 2048) -> LoadedPhoto:
    """Load any common photo as 8-bit RGB (+ alpha when it has transparency).

    Handles EXIF rotation, CMYK, greyscale, 16-bit, palette and RGBA files, and files whose
    content does not match their extension (decoded by content, with a note). Photos above
    ``max_megapixels`` are downscaled to ``downscale_long_side``, JPEGs while decoding. Raises
    BadInput naming the file for unreadable, truncated, tiny or undecodably large images.
    """
    path = Path(path)
    notes: list[str] = []
    too_large = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = _open_with_our_limit(path)
            width, height = image.size
            megapixels = width * height / 1e6
            if min(width, height) < min_side:
                raise BadInput(path, f"image is {width}x{height} px, smaller than the {min_side} px minimum side")
            expected = _FORMATS_OF_EXTENSION.get(path.suffix.lower())
            if expected and image.format not in expected:
                notes.append(f"{path}: the file holds {image.format} data although its name ends in "
                             f"{path.suffix}; decoded as {image.format}")
            if getattr(image, "is_animated", False):
                notes.append(f"{path}: animated {image.format}; its first frame is used")
            limit = REDUCED_DECODE_LIMIT_MP if image.format in _DRAFT_FORMATS else FULL_DECODE_LIMIT_MP
            if megapixels > limit:
                raise BadInput(path, f"image is {width}x{height} px ({megapixels:.0f} MP), above the {limit:g} MP "
                                     f"that {image.format} files are decoded up to")
            if megapixels > max_megapixels:
                too_large = True
                notes.append(
                    f"{path}: {megapixels:.1f} MP is above the {max_megapixels:g} MP limit; "
                    f"downscaled to {downscale_long_side} px on the long side")
                if image.format in _DRAFT_FORMATS:
                    # Decodes at the smallest 1/2..1/8 scale still at least this size: memory stays bounded.
                    image.draft("RGB", (downscale_long_side, downscale_long_side))
            image.load()
    except BadInput:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadInput(path, f"image is too large to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise BadInput(path, "not a readable image (unknown or corrupt format)") from exc
    except OSError as exc:
        raise BadInput(path, f"cannot decode image, the file is truncated or corrupt ({exc})") from exc
    except Exception as exc:  # decoder bugs on hostile files must not stop the batch
        raise BadInput(path, f"cannot decode image ({type(exc).__name__}: {exc})") from exc

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        # 16-bit data spans 0..65535: scale by that, so brightness is kept (not stretched to the maximum).
        top = 65535.0 if image.mode.startswith("I;16") else (array.max() or 1.0)
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        notes.append(f"{path}: 16-bit or float image converted to 8-bit")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "PA"):
        image = image.convert("RGBA")
    alpha = None
    if image.mode == "RGBA":
        alpha_array = np.asarray(image.getchannel("A"))
        if alpha_array.min() < 250:
            alpha = alpha_array.copy()
    rgb_image = image if image.mode == "RGB" else image.convert("RGB")
    del image
    # Decided on the file's size: a JPEG draft may already have shrunk it below the limit, not to the target.
    if too_large and max(rgb_image.size) > downscale_long_side:
        scale = downscale_long_side / max(rgb_image.size)
        new_size = (max(1, round(rgb_image.width * scale)), max(1, round(rgb_image.height * scale)))
        rgb_image = rgb_image.resize(new_size, Image.Resampling.LANCZOS)
        if alpha is not None:
            alpha = np.asarray(Image.fromarray(alpha).resize(new_size, Image.Resampling.BILINEAR))
    return LoadedPhoto(path=path, rgb=np.ascontiguousarray(np.asarray(rgb_image)), alpha=alpha, warnings=notes)
