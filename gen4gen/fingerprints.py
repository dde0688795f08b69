"""What produced each partition, and so what is out of date.

A partition's fingerprint names everything its output depends on: the versions of its inputs
(upstream partitions' fingerprints, the concept photos and class, the scene bank, the review
overrides), the configuration keys its stage reads (``STAGES`` lists them, and the README repeats
the list), the backend's identity (name, model ids, weights' sha256) and the stage's code
version (``code_versions.json``, guarded by a test against the stage's source). A partition is
stale exactly when its recorded fingerprint differs from the one the current configuration and
inputs call for; since an input's version is its desired fingerprint, staleness flows downstream.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

# Version of the fingerprint file's layout: a data folder written with another one is rebuilt.
SCHEMA_VERSION = 2
FINGERPRINT_FILE = "fingerprint.json"
CODE_VERSIONS_FILE = Path(__file__).with_name("code_versions.json")


@dataclass(frozen=True)
class StageSpec:
    """One asset's stage: where its partitions live, what configuration and code it depends on."""

    name: str
    partitioned_by: str | None  # "concepts", "compositions" or None (one output for the dataset)
    folder: Callable  # (paths, key) -> Path
    config_keys: tuple[str, ...]  # dotted keys (a whole section, or one value)
    # Keys inside those sections that do not change the output (or only within numerical tolerance).
    ignored_keys: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # source files (relative to the gen4gen package) of its code


# The order is the dependency order of the graph.
STAGES: dict[str, StageSpec] = {s.name: s for s in (
    StageSpec("segmented_foregrounds", "concepts", lambda p, k: p.segmented(k),
              ("input.min_photo_side", "input.max_photo_megapixels", "input.downscale_long_side", "segmentation",
               "composition.png_compress_level"),
              ("segmentation.threads", "segmentation.device"),
              ("stages/segmentation.py", "segmentation.py", "io.py", "models/segmentation_torch.py",
               "models/isnet_arch.py", "cutout_quality.py", "realism_checks.py", "compositing.py")),
    StageSpec("layouts", "compositions", lambda p, k: p.layouts(k),
              ("seed", "layout", "composition.canvas_size"),
              ("layout.llm.api_key", "layout.llm.api_key_env", "layout.llm.timeout_s", "layout.llm.base_url",
               "layout.max_attempts"),
              ("stages/layouts.py", "layout.py", "scenes.py", "models/llm_layout.py", "size_priors.py",
               "ground_plane.py")),
    StageSpec("composed_images", "compositions", lambda p, k: p.composed(k),
              ("seed", "composition"), (),
              ("stages/composition.py", "compose.py", "compositing.py", "ground_plane.py", "scenes.py",
               "size_priors.py")),
    StageSpec("recoloured_images", "compositions", lambda p, k: p.recoloured(k),
              ("seed", "recolour", "composition.png_compress_level"),
              ("recolour.batch_size", "recolour.device", "recolour.channels_last", "recolour.fuse_qkv",
               "recolour.compile", "recolour.compile_mode", "recolour.attention_backend"),
              ("stages/recolouring.py", "recolour.py", "scenes.py", "ground_plane.py", "models/sdxl_repaint.py",
               "models/fp8.py")),
    StageSpec("captions", "compositions", lambda p, k: p.captions(k),
              ("caption",),
              ("caption.device", "caption.endpoint.api_key", "caption.endpoint.api_key_env",
               "caption.endpoint.timeout_s", "caption.endpoint.base_url"),
              ("stages/captions.py", "captions.py", "models/vlm_caption.py")),
    StageSpec("mycanvas", None, lambda p, k: p.mycanvas,
              ("filter", "screening", "clip", "detector", "evaluation.crop_padding", "recolour.backend"),
              ("clip.batch_size", "clip.device", "detector.batch_size", "detector.device", "screening.review_thumb"),
              ("stages/export.py", "filtering.py", "screening.py", "realism_checks.py", "size_priors.py")),
    StageSpec("evaluation_report", None, lambda p, k: p.reports,
              ("report", "evaluation", "clip", "detector", "dino"),
              ("clip.batch_size", "clip.device", "detector.batch_size", "detector.device", "dino.batch_size",
               "dino.device"),
              ("report.py", "evaluation.py", "metrics.py", "report_models.py", "report_plots.py", "report_sheets.py",
               "thumbnails.py")),
)}


def code_versions() -> dict[str, dict]:
    return json.loads(CODE_VERSIONS_FILE.read_text(encoding="utf-8"))


def code_version(stage: str) -> str:
    return str(code_versions()[stage]["version"])


def source_digest(stage: str) -> str:
    """A hash of the stage's code that ignores comments and formatting (its syntax tree)."""
    import ast

    package = Path(__file__).parent
    digest = hashlib.sha256()
    for relative in STAGES[stage].sources:
        source = (package / relative).read_text(encoding="utf-8")
        digest.update(relative.encode() + b"\0" + ast.dump(ast.parse(source)).encode() + b"\0")
    return digest.hexdigest()[:16]


def update_code_versions() -> list[str]:
    """Bump the code version of every stage whose source changed; returns what was bumped."""
    from .io import atomic_write_text

    versions, bumped = code_versions(), []
    for stage in STAGES:
        digest = source_digest(stage)
        entry = versions.setdefault(stage, {"version": 0, "source_digest": ""})
        if entry["source_digest"] != digest:
            entry["version"] += 1
            entry["source_digest"] = digest
            bumped.append(f"{stage}: code version {entry['version'] - 1} → {entry['version']}")
    atomic_write_text(CODE_VERSIONS_FILE, json.dumps(versions, indent=2, sort_keys=True) + "\n")
    return bumped


# ------------------------------------------------------------------ configuration values
def _lookup(values: dict, dotted: str):
    node = values
    for part in dotted.split("."):
        node = node[part]
    return node


def flatten_config(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            flatten_config(f"{prefix}.{key}", item, out)
    else:
        out[prefix] = value


def stage_config(stage: str, config) -> dict:
    """The configuration values of one stage, flat and dotted (``recolour.harmonisation_strength``)."""
    spec = STAGES[stage]
    values = config.model_dump(mode="json")
    flat: dict = {}
    for key in spec.config_keys:
        flatten_config(key, _lookup(values, key), flat)
    return {k: v for k, v in sorted(flat.items()) if not any(k == i or k.startswith(i + ".") for i in spec.ignored_keys)}


# ------------------------------------------------------------------ backend identities
def backend_identity(stage: str, config) -> dict:
    """Which model makes the stage's output: the backend, its model ids and its weights' hashes."""
    from .config import resolve_path

    if stage == "segmented_foregrounds":
        seg = config.segmentation
        if seg.backend == "isnet_onnx":
            weights = resolve_path(seg.weights_path)
            # Without the weights segmentation falls back to GrabCut: a different output.
            return {"backend": "isnet_onnx", "weights_sha256": _file_digest(weights)} if weights.is_file() \
                else {"backend": "grabcut_fallback"}
        if seg.backend == "isnet_torch":
            return {"backend": "isnet_torch", "weights_sha256": _file_digest(resolve_path(seg.isnet_checkpoint))}
        return {"backend": seg.backend, "model": seg.birefnet_model}
    if stage == "layouts":
        layout = config.layout
        return {"backend": layout.backend, **({"model": layout.llm.model} if layout.backend == "llm" else {})}
    if stage == "recoloured_images":
        recolour = config.recolour
        if recolour.backend == "sdxl":
            return {"backend": "sdxl", "model": recolour.sdxl_model, "refiner": recolour.refiner_model}
        return {"backend": recolour.backend, "harmonisation": recolour.harmonisation}
    if stage == "captions":
        caption = config.caption
        return {"backend": caption.backend, **({"model": caption.vlm_model} if caption.backend == "vlm" else {}),
                **({"model": caption.endpoint.model} if caption.backend == "vlm_api" else {})}
    if stage in ("mycanvas", "evaluation_report"):
        return {"clip": config.clip.backend, "detector": config.detector.backend,
                **({"dino": config.dino.backend} if stage == "evaluation_report" else {})}
    return {"backend": "builtin"}


_FILE_DIGESTS: dict[tuple, str] = {}


def _file_digest(path: Path) -> str | None:
    """sha256 of a weights file, remembered per (path, size, mtime) within the process."""
    from .io import sha256_file

    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        _FILE_DIGESTS[key] = sha256_file(path)
    return _FILE_DIGESTS[key]


# ------------------------------------------------------------------ fingerprints
@dataclass
class Fingerprint:
    stage: str
    key: str | None
    code_version: str
    config: dict
    backend: dict
    inputs: dict  # input name -> version

    def to_dict(self) -> dict:
        return {"stage": self.stage, "key": self.key, "code_version": self.code_version, "config": self.config,
                "backend": self.backend, "inputs": self.inputs}

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class DesiredState:
    """The fingerprint every partition should have under the current configuration and inputs."""

    fingerprints: dict[tuple[str, str | None], Fingerprint] = field(default_factory=dict)

    def get(self, stage: str, key: str | None = None) -> Fingerprint | None:
        return self.fingerprints.get((stage, key))


def scene_bank_version(config) -> str:
    """Content hash of the scene bank (re-hashing only photos whose size or mtime changed)."""
    from .io import sha256_files_cached

    folder = config.paths.backgrounds
    if not folder.is_dir():
        return "builtin"
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                          p.relative_to(folder).parts))
    digests = sha256_files_cached(files, config.paths.build / ".state" / "scene_bank_hashes.json")
    listing = "\n".join(f"{p.relative_to(folder)}\0{digests[str(p)]}" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:16] if files else "builtin"


def overrides_version(config) -> str | None:
    from .io import sha256_file

    path = config.paths.screening_overrides
    return sha256_file(path)[:16] if path.is_file() else None


def desired_state(config, registry: dict, current: Callable[[str, str], bool] | None = None) -> DesiredState:
    """Fingerprints for every partition of the catalogue, in dependency order.

    ``current(stage, key)`` says whether a composition's chain is current on disk; the dataset's
    fingerprint covers only those compositions (the export leaves the others out).
    """
    from .concepts import split_composition

    state = DesiredState()
    versions = {stage: code_version(stage) for stage in STAGES}
    configs = {stage: stage_config(stage, config) for stage in STAGES}
    backends = {stage: backend_identity(stage, config) for stage in STAGES}
    scenes = scene_bank_version(config)

    def add(stage: str, key: str | None, inputs: dict) -> Fingerprint:
        fingerprint = Fingerprint(stage, key, versions[stage], configs[stage], backends[stage], inputs)
        state.fingerprints[(stage, key)] = fingerprint
        return fingerprint

    concepts = {c["key"]: c for c in registry.get("concepts", [])}
    for key, concept in concepts.items():
        add("segmented_foregrounds", key, {"concept": concept.get("data_version")})
    tokens = {key: c.get("token_index") for key, c in concepts.items()}
    published = {}
    for composition in registry.get("compositions", []):
        key = composition["key"]
        members = split_composition(key)
        if any(m not in concepts for m in members):
            continue
        segmented = {f"segmented_foregrounds[{m}]": state.get("segmented_foregrounds", m).digest for m in members}
        layouts = add("layouts", key, {**segmented, "scene_bank": scenes})
        composed = add("composed_images", key, {"layouts": layouts.digest, **segmented})
        recoloured = add("recoloured_images", key, {"composed_images": composed.digest, "scene_bank": scenes})
        captions = add("captions", key, {"recoloured_images": recoloured.digest, "layouts": layouts.digest,
                                         "tokens": {m: tokens[m] for m in members},
                                         "composition_token": composition.get("token_index")})
        if current is None or current("captions", key):
            published[key] = captions.digest
    dataset = add("mycanvas", None, {"compositions": published, "overrides": overrides_version(config),
                                     "concepts": {k: [c.get("name"), c.get("class_name"), tokens[k]]
                                                  for k, c in sorted(concepts.items())}})
    add("evaluation_report", None, {"mycanvas": dataset.digest, **_samples_compared(config)})
    return state


def _samples_compared(config) -> dict:
    """The trained models' samples the report compares, by the fingerprints they were made with
    (nothing when no training run is configured)."""
    if not config.training.runs:
        return {}
    recorded = {run.name: read_fingerprint(config.paths.generated(run.name)) for run in config.training.runs}
    return {"generated": {name: (record or {}).get("digest") for name, record in recorded.items()}}


# ------------------------------------------------------------------ what changed
def describe_changes(recorded: dict | None, desired: Fingerprint, label: Callable[[str], str] = str) -> list[str]:
    """Why a partition built with ``recorded`` differs from ``desired``, one phrase per change."""
    if recorded is None:
        return ["never built"]
    if recorded.get("schema") != SCHEMA_VERSION:
        return [f"built by an older version of the platform (fingerprint schema {recorded.get('schema')} → "
                f"{SCHEMA_VERSION}): rebuilt"]
    before = recorded.get("fingerprint", {})
    reasons = []
    if before.get("code_version") != desired.code_version:
        reasons.append(f"code version {before.get('code_version')} → {desired.code_version}")
    old_backend, new_backend = before.get("backend", {}), desired.backend
    if old_backend != new_backend:
        if old_backend.get("backend") != new_backend.get("backend"):
            reasons.append(f"backend {old_backend.get('backend')} → {new_backend.get('backend')}")
        else:
            changed = sorted(k for k in set(old_backend) | set(new_backend) if old_backend.get(k) != new_backend.get(k))
            reasons.append("backend " + ", ".join(f"{k} {_short(old_backend.get(k))} → {_short(new_backend.get(k))}"
                                                  for k in changed))
    old_config, new_config = before.get("config", {}), desired.config
    for key in sorted(set(old_config) | set(new_config)):
        if old_config.get(key, "<unset>") != new_config.get(key, "<unset>"):
            reasons.append(f"config {key} {_short(old_config.get(key, '<unset>'))} → "
                           f"{_short(new_config.get(key, '<unset>'))}")
    old_inputs, new_inputs = before.get("inputs", {}), desired.inputs
    for name in sorted(set(old_inputs) | set(new_inputs)):
        if old_inputs.get(name) != new_inputs.get(name):
            reasons.append(label(name))
    return reasons or ["fingerprint differs"]


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def fingerprint_record(fingerprint: Fingerprint, files: dict[str, list], run_id: str | None) -> dict:
    """What a partition's ``fingerprint.json`` holds: the fingerprint, its digest and its files."""
    return {"schema": SCHEMA_VERSION, "digest": fingerprint.digest, "fingerprint": fingerprint.to_dict(),
            "files": files, "run_id": run_id}


def read_fingerprint(folder: Path) -> dict | None:
    path = folder / FINGERPRINT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError:
        return {"schema": None, "damaged": True}


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--update-code-versions"]:
        print("\n".join(update_code_versions()) or "every stage's code version matches its source")
    else:
        print("usage: python -m gen4gen.fingerprints --update-code-versions", file=sys.stderr)
        sys.exit(2)
