"""What every model backend shares: where weights come from, device and dtype, OOM backoff.

Importing this module is cheap: torch and huggingface_hub are imported inside functions.
"""
from __future__ import annotations

import gc
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Sequence

log = logging.getLogger("gen4gen.models")

_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = {"1", "true", "yes", "on"}


# ------------------------------------------------------------------ weights
def hf_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: load from the cache only."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@dataclass(frozen=True)
class WeightSpec:
    """One model a backend needs: a local path or a Hugging Face id, and how to obtain it."""

    stage: str  # configuration section, e.g. "recolour"
    what: str  # human name, e.g. "SDXL inpainting (base)"
    source: str  # as configured: a path, or "org/name" on the Hub
    required: tuple[str, ...] = ()  # files that must exist inside a model folder ("model_index.json")
    single_file: bool = False  # the source is one file (a checkpoint), not a folder
    how: str = ""  # extra advice, e.g. where the official checkpoint is published
    config_key: str = ""  # the configuration field to point at local weights, e.g. "recolour.sdxl_model"


@dataclass
class Located:
    spec: WeightSpec
    path: Path | None  # where the weights are, when found
    hub_id: str | None  # the Hub id, when the source is one
    problem: str | None  # why they cannot be used; None when usable
    will_download: bool = False  # not cached, but online: from_pretrained will download it


def is_hub_id(source: str, project_root: Path | None = None) -> bool:
    """``org/name`` that is not an existing local path."""
    if not _HF_ID.match(source):
        return False
    local = Path(source).expanduser()
    if local.exists() or (project_root is not None and (project_root / source).exists()):
        return False
    return True


def locate(spec: WeightSpec, project_root: Path) -> Located:
    """Find ``spec`` on disk or in the Hugging Face cache without downloading anything."""
    source = spec.source.strip()
    if not source:
        return Located(spec, None, None, f"{spec.what}: no model configured ({spec.config_key} is empty)")
    if is_hub_id(source, project_root) and not spec.single_file:
        snapshot = _cached_snapshot(source)
        if snapshot is not None:
            missing = [f for f in spec.required if not (snapshot / f).exists()]
            if not missing:
                return Located(spec, snapshot, source, None)
            return Located(spec, snapshot, source,
                           f"{spec.what}: the cached copy of {source} lacks {', '.join(missing)}; " + _how(spec))
        if not hf_offline():
            return Located(spec, None, source, None, will_download=True)
        return Located(spec, None, source, f"{spec.what}: {source} is not in the Hugging Face cache "
                                           f"({_hub_cache()}) and HF_HUB_OFFLINE=1; " + _how(spec))
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = project_root / path
    if spec.single_file:
        if path.is_file():
            return Located(spec, path, None, None)
        return Located(spec, None, None, f"{spec.what}: file {path} does not exist; " + _how(spec))
    if not path.is_dir():
        return Located(spec, None, None, f"{spec.what}: folder {path} does not exist; " + _how(spec))
    missing = [f for f in spec.required if not (path / f).exists()]
    if missing:
        return Located(spec, path, None, f"{spec.what}: {path} lacks {', '.join(missing)}; " + _how(spec))
    return Located(spec, path, None, None)


def _how(spec: WeightSpec) -> str:
    parts = []
    if _HF_ID.match(spec.source.strip()) and not spec.single_file:
        parts.append(f"get it on a machine with internet with `hf download {spec.source.strip()}` (then copy "
                     f"the Hugging Face cache), or unset HF_HUB_OFFLINE to let it download")
    if spec.how:
        parts.append(spec.how)
    if spec.config_key:
        parts.append(f"or point `{spec.config_key}` at a local copy")
    return "; ".join(parts) or "see README.md (paper profile)"


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - the paper extra is not installed
        return os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub")


def _cached_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError and friends: not cached
        return None


class MissingWeightsError(RuntimeError):
    """Weights a backend needs are absent; the message names each and how to obtain it."""

    def __init__(self, problems: Sequence[str], profile: str | None = None):
        self.problems = list(problems)
        head = "missing model weights" + (f" for profile {profile!r}" if profile else "") + ":"
        super().__init__("\n".join([head] + [f"  - {p}" for p in self.problems]))


def require(specs: Sequence[WeightSpec], project_root: Path) -> list[Located]:
    """Locate every spec; raise one :class:`MissingWeightsError` listing all that are missing."""
    found = [locate(spec, project_root) for spec in specs]
    problems = [f.problem for f in found if f.problem]
    if problems:
        raise MissingWeightsError(problems)
    return found


def load_source(found: Located) -> tuple[str, dict]:
    """(what to pass to ``from_pretrained``, extra kwargs): a local folder, or the Hub id offline-aware."""
    if found.path is not None and found.hub_id is None:
        return str(found.path), {"local_files_only": True}
    return found.hub_id or str(found.path), {"local_files_only": hf_offline() or not found.will_download}


# ------------------------------------------------------------------ device and dtype
def resolve_device(spec: str):
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error, not a silent CPU run.

    ``cuda:N`` names one GPU among those this process sees (after ``CUDA_VISIBLE_DEVICES``).
    """
    import torch

    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} was configured but torch sees no CUDA GPU "
                           f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use device = \"auto\" or \"cpu\"")
    device = torch.device(spec)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {spec!r} was configured but this process sees {torch.cuda.device_count()} GPU(s) "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                           f"GPUs are numbered from 0")
    return device


_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def resolve_dtype(spec: str, device) -> tuple[object, str | None]:
    """(torch dtype, note). fp16 on the CPU runs as fp32 (many CPU kernels lack fp16), with a note."""
    import torch

    if spec not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {spec!r}")
    if spec == "fp16" and getattr(device, "type", str(device)) == "cpu":
        return torch.float32, "fp16 requested on the CPU: running in fp32"
    return getattr(torch, _DTYPES[spec]), None


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------ shared models
class SharedModels:
    """Models loaded once per process and shared by their users, dropped when the last one is done.

    Two resources (two steps run in one process, or two runs of ``materialize``) that ask for
    the same model get the same object, and the model is released as soon as the last user
    calls :meth:`release`, not whenever the garbage collector gets to the resources. A model
    with a ``close()`` method is closed then.
    """

    def __init__(self):
        self._models: dict[Hashable, object] = {}
        self._users: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: Hashable, load: Callable[[], object]):
        with self._lock:  # loading under the lock: a second user waits rather than loading it twice
            if key not in self._models:
                self._models[key] = load()
                self._users[key] = 0
            self._users[key] += 1
            return self._models[key]

    def release(self, key: Hashable) -> None:
        with self._lock:
            if key not in self._users:
                return
            self._users[key] -= 1
            if self._users[key] > 0:
                return
            del self._users[key]
            model = self._models.pop(key)
        close = getattr(model, "close", None)
        if close is not None:
            close()

    def users(self, key: Hashable) -> int:
        return self._users.get(key, 0)

    def get(self, key: Hashable):
        """The model loaded under ``key``, or None; does not count as a use."""
        return self._models.get(key)


# ------------------------------------------------------------------ CUDA out-of-memory backoff
def is_oom(exc: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error."""
    try:
        import torch

        types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    except ImportError:  # pragma: no cover
        types = ()
    if types and isinstance(exc, types):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_accelerator_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


@dataclass
class BackoffReport:
    batch_size: int  # the batch size in use at the end
    halvings: list[int]  # the batch sizes that ran out of memory, in order


def map_in_batches(items: Sequence, fn: Callable[[list], list], batch_size: int,
                   on_halve: Callable[[int, int], None] | None = None) -> tuple[list, BackoffReport]:
    """``fn`` over ``items`` in batches; on out-of-memory, halve the batch and retry that part.

    ``fn(batch)`` returns one result per item. Later batches keep the reduced size. A single
    item that still runs out of memory re-raises the error (nothing smaller to try).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    results: list = []
    size, halvings, start = batch_size, [], 0
    while start < len(items):
        batch = list(items[start:start + size])
        try:
            out = fn(batch)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is an OOM we can back off from
            if not is_oom(exc) or len(batch) == 1:
                raise
            failed = len(batch)
            del exc
        else:
            if len(out) != len(batch):
                raise RuntimeError(f"backend returned {len(out)} results for a batch of {len(batch)}")
            results.extend(out)
            start += len(batch)
            continue
        # Outside the except block: the traceback (and the tensors its frames hold) is gone.
        free_accelerator_memory()
        halvings.append(failed)
        size = max(1, failed // 2)
        log.warning("out of memory at batch size %d: retrying with batch size %d", failed, size)
        if on_halve is not None:
            on_halve(failed, size)
    return results, BackoffReport(size, halvings)
