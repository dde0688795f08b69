"""A persistent cache of model outputs (embeddings, detections) for screening and metrics.

Each entry is keyed by what was scored and by the model that scored it, so only new or changed
images are embedded or detected again:

- an **image** by its decoded content: sha256 over mode, size, palette and ``tobytes()``. Crops
  and on-white reference images are PIL images derived in memory, so their pixels key them
  too, whatever file (if any) they came from;
- a **text** by the sha256 of its UTF-8 bytes;
- a **detection** by its image's key and the sorted class names asked for;
- the **model** by the backend's type and ``identity()`` (model, weights, device, dtype, a
  detector's threshold...), or its ``repr`` when it has no ``identity()``. A backend with
  neither (a plain object's ``repr`` names its address) has no identity that outlives the
  process: it is not cached at all.

Layout, under ``<build>/.cache/scores`` (:func:`score_cache_root`)::

    <model digest>/identity.json             the model's identity, for people
    <model digest>/images/ab/abcd....npy     one embedding row (the backend's dtype)
    <model digest>/texts/ab/abcd....npy
    <model digest>/detections/ab/abcd....json

Entries are content-addressed and written atomically (temporary file, then rename), so writers
on several hosts of a shared filesystem need no lock: two writers of one entry write the same
bytes. An unreadable entry (truncated, corrupt) is a miss and is rewritten. Nothing is ever
stale, only unused; the folder can be deleted at any time. Rows come back bit for bit as the
backend returned them (``.npy`` keeps dtype and bits; JSON keeps floats through ``repr``).

Images must not be changed in place while a run scores them: their keys are remembered per
object (:class:`ContentKeys`) so an image scored by CLIP, DINO and the detector is hashed once.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
import warnings
import weakref
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .io import atomic_write_bytes, json_bytes

__all__ = ["CachedClip", "CachedDetector", "CachedEmbedder", "ContentKeys", "ScoreCache", "image_key",
           "model_identity", "score_cache_root", "text_key"]

# Part of every model digest: a change to how entries are keyed or stored starts a new folder.
FORMAT_VERSION = 1
_NPY_MAGIC = b"\x93NUMPY"
# Parsed .npy headers by their bytes: every row of one model has the same header, and parsing
# it (a Python literal) costs more than reading the file.
_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple, bool]] = {}


def score_cache_root(config) -> Path:
    return config.paths.build / ".cache" / "scores"


# ------------------------------------------------------------------ keys
def image_key(image) -> str:
    """sha256 of a PIL image's decoded content (mode, size, palette, pixels)."""
    digest = hashlib.sha256(f"{image.mode}\0{image.size[0]}x{image.size[1]}\0".encode())
    if image.mode in ("P", "PA"):
        # The pixels of a palette image are indices: the colours are in the palette.
        digest.update(bytes(image.getpalette() or ()) + repr(image.info.get("transparency")).encode() + b"\0")
    digest.update(image.tobytes())
    return digest.hexdigest()


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ContentKeys:
    """Image keys remembered per image object, for the wrappers of one run to share."""

    def __init__(self):
        self._known: dict[int, tuple[weakref.ref, str]] = {}

    def image(self, image) -> str:
        ident = id(image)
        entry = self._known.get(ident)
        if entry is not None and entry[0]() is image:
            return entry[1]
        key = image_key(image)

        def forget(ref, ident=ident):
            if self._known.get(ident, (None,))[0] is ref:
                del self._known[ident]

        self._known[ident] = (weakref.ref(image, forget), key)
        return key


def model_identity(backend) -> dict | None:
    """What makes a backend's outputs what they are, or None when nothing stable does."""
    kind = f"{type(backend).__module__}.{type(backend).__qualname__}"
    if callable(getattr(backend, "identity", None)):
        identity = backend.identity()
    else:
        text = repr(backend)
        if " object at 0x" in text:  # object.__repr__: the address changes with every instance
            return None
        identity = {"repr": text}
    return {"format": FORMAT_VERSION, "type": kind, "identity": identity}


# ------------------------------------------------------------------ entries
def _npy_bytes(row: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(row), allow_pickle=False)
    return buffer.getvalue()


def _read_npy(data: bytes) -> np.ndarray:
    if data[:6] != _NPY_MAGIC or len(data) < 10:
        raise ValueError("not an .npy file")
    width = 2 if data[6] == 1 else 4
    start = 8 + width
    end = start + int.from_bytes(data[8:start], "little")
    header = data[:end]
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        stream = io.BytesIO(header)
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(stream)
        if dtype.hasobject:
            raise ValueError("object arrays are not cached")
        parsed = _NPY_HEADERS.setdefault(header, (dtype, tuple(shape), fortran))
    dtype, shape, fortran = parsed
    if len(data) - end != math.prod(shape) * dtype.itemsize:
        raise ValueError("truncated")
    return np.frombuffer(data, dtype=dtype, offset=end).reshape(shape, order="F" if fortran else "C")


def _number(value):
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else float(value)


def _detections_bytes(found: dict) -> bytes:
    # A list of pairs keeps the backend's order of class names; repr floats read back exactly.
    return json.dumps([[name, [[[_number(v) for v in d.box], _number(d.score)] for d in dets]]
                       for name, dets in found.items()]).encode()


def _read_detections(data: bytes) -> dict:
    from .metrics import Detection

    found = {}
    for name, dets in json.loads(data):
        if not isinstance(name, str):
            raise ValueError("class name is not a string")
        found[name] = [Detection(tuple(_checked_number(v) for v in box), _checked_number(score))
                       for box, score in dets if len(box) == 4]
        if len(found[name]) != len(dets):
            raise ValueError("box without four coordinates")
    return found


def _checked_number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    return value


class _ModelFolder:
    """One model's entries."""

    def __init__(self, root: Path, identity: dict):
        text = json.dumps(identity, sort_keys=True, default=str)
        self.folder = root / hashlib.sha256(text.encode()).hexdigest()[:16]
        self.identity = identity
        self._identity_written = False

    def path(self, kind: str, key: str, suffix: str) -> Path:
        return self.folder / kind / key[:2] / f"{key}{suffix}"

    def write(self, path: Path, data: bytes) -> None:
        if not self._identity_written:
            target = self.folder / "identity.json"
            if not target.is_file():
                atomic_write_bytes(target, json_bytes(json.loads(json.dumps(self.identity, default=str))))
            self._identity_written = True
        atomic_write_bytes(path, data)


# ------------------------------------------------------------------ wrappers
class _Cached:
    """Cache bookkeeping shared by the wrappers; other attributes are the wrapped backend's."""

    def __init__(self, backend, cache_root: str | Path, enabled: bool = True, keys: ContentKeys | None = None):
        self.wrapped = backend
        identity = model_identity(backend) if enabled else None
        self.store = _ModelFolder(Path(cache_root), identity) if identity is not None else None
        self.keys = keys if keys is not None else ContentKeys()
        self.hits = self.misses = self.corrupt = self.write_errors = 0

    def __getattr__(self, name):
        if name == "wrapped":  # not set yet (copy, unpickling): no delegation loop
            raise AttributeError(name)
        return getattr(self.wrapped, name)

    @property
    def caching(self) -> bool:
        return self.store is not None

    def _lookup(self, kind: str, keys: list[str], suffix: str, read: Callable[[bytes], object]) -> dict:
        found = {}
        for key in dict.fromkeys(keys):
            try:
                found[key] = read(self.store.path(kind, key, suffix).read_bytes())
            except FileNotFoundError:
                continue
            except (OSError, ValueError, TypeError, KeyError, IndexError):  # a torn or foreign file
                self.corrupt += 1
        return found

    def _save(self, kind: str, keys: list[str], suffix: str, values: Sequence, encode: Callable) -> None:
        for key, value in zip(keys, values):
            try:
                self.store.write(self.store.path(kind, key, suffix), encode(value))
            except (OSError, ValueError, TypeError, AttributeError) as exc:  # an unwritable entry only costs time
                self.write_errors += 1
                if self.write_errors == 1:
                    warnings.warn(f"score cache {self.store.folder}: entry not written ({exc})", stacklevel=3)

    def _through(self, kind: str, items: list, key_of: Callable, compute: Callable, assemble: Callable,
                 suffix: str, read: Callable, encode: Callable):
        """The backend's results for ``items``, computing (in one call) only those not in the cache."""
        if self.store is None or not items:
            self.misses += len(items)
            return compute(items)
        keys = [key_of(item) for item in items]
        found = self._lookup(kind, keys, suffix, read)
        first = {}
        for index, key in enumerate(keys):
            if key not in found:
                first.setdefault(key, index)
        self.misses += len(first)
        self.hits += len(items) - len(first)
        if not first:
            return assemble([found[k] for k in keys], None)
        computed = compute([items[i] for i in first.values()])
        self._save(kind, list(first), suffix, computed, encode)
        if len(first) == len(items):  # nothing from the cache: the backend's own result
            return computed
        found.update(zip(first, computed))
        return assemble([found[k] for k in keys], computed)


class CachedEmbedder(_Cached):
    """An image embedder (DINO) whose rows are cached: ``embed_images`` as the wrapped one's."""

    def embed_images(self, images: Sequence) -> np.ndarray:
        return self._through("images", list(images), self.keys.image, self.wrapped.embed_images, _stack,
                             ".npy", _read_npy, _npy_bytes)


class CachedClip(CachedEmbedder):
    """A CLIP backend whose image and text rows are cached."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._through("texts", list(texts), text_key, self.wrapped.embed_texts, _stack,
                             ".npy", _read_npy, _npy_bytes)


def _stack(rows: list, computed) -> np.ndarray:
    dtype = np.asarray(computed).dtype if computed is not None else rows[0].dtype
    return np.stack([np.asarray(r) for r in rows]).astype(dtype, copy=False)


class CachedDetector(_Cached):
    """A detector whose results are cached per (image, sorted class names); ``detect`` as the wrapped one's."""

    def detect(self, images: Sequence, class_names: Sequence[Sequence[str]]) -> list[dict]:
        items = list(zip(images, [list(names) for names in class_names]))

        def key_of(item):
            image, names = item
            return hashlib.sha256(f"{self.keys.image(image)}\0{json.dumps(sorted(set(names)))}".encode()).hexdigest()

        def compute(batch):
            return self.wrapped.detect([image for image, _ in batch], [names for _, names in batch])

        return self._through("detections", items, key_of, compute, lambda found, _computed: list(found),
                             ".json", _read_detections, _detections_bytes)


class ScoreCache:
    """The cached backends of one run (sharing image keys) and their hit and miss counts.

    ``enabled=False`` wraps nothing: the backends are used as given and every item is a miss.
    """

    def __init__(self, root: str | Path, enabled: bool = True):
        self.root, self.enabled = Path(root), enabled
        self.keys = ContentKeys()
        self.wrappers: dict[str, _Cached] = {}

    def _wrap(self, cls, backend, name: str):
        if backend is None:
            return None
        wrapper = cls(backend, self.root, enabled=self.enabled, keys=self.keys)
        self.wrappers[name] = wrapper
        return wrapper

    def clip(self, backend, name: str = "clip") -> CachedClip | None:
        return self._wrap(CachedClip, backend, name)

    def embedder(self, backend, name: str = "dino") -> CachedEmbedder | None:
        return self._wrap(CachedEmbedder, backend, name)

    def detector(self, backend, name: str = "detector") -> CachedDetector | None:
        return self._wrap(CachedDetector, backend, name)

    def summary(self) -> dict:
        """Totals over the backends; ``uncached`` names those with no stable identity (or all, when off)."""
        wrappers = self.wrappers.values()
        return {"hits": sum(w.hits for w in wrappers), "misses": sum(w.misses for w in wrappers),
                "corrupt": sum(w.corrupt for w in wrappers), "write_errors": sum(w.write_errors for w in wrappers),
                "uncached": sorted(name for name, w in self.wrappers.items() if not w.caching),
                "folder": str(self.root)}
