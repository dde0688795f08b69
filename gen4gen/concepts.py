"""Concept discovery: folders of photos, class names, tokens and composition proposals."""
from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .io import BadInput, check_concept_name, concept_identity, load_photo, safe_key, sha256_file
from .removals import check_removals, forget_confirmations
from .roots import Root, concepts_root

CLASS_MAP_FILE = "prompts_and_classes.txt"
_CLASS_LINE = re.compile(r"^\s*([^,{}'\"]+?)\s*,\s*([^,{}'\"]+?)\s*$")


@dataclass
class PhotoRecord:
    file: str  # the user's photo, relative to the concepts folder ("cat/IMG 1.jpg"; Root.relative)
    name: str  # file name as the user gave it
    stem: str  # file-name-safe stem used for outputs
    sha256: str
    width: int
    height: int
    warnings: list[str] = field(default_factory=list)
    size: int = 0  # bytes and modification time: an unchanged file is not decoded again
    mtime_ns: int = 0


@dataclass
class ConceptRecord:
    key: str  # partition key: file-name safe
    name: str  # folder name as the user gave it
    class_name: str
    folder: str  # relative to the concepts folder: the folder's name
    token_index: int
    photos: list[PhotoRecord]

    @property
    def data_version(self) -> str:
        """Hash of the concept's photo bytes and class: changes exactly when its inputs do."""
        digest = hashlib.sha256(self.class_name.encode())
        for photo in sorted(self.photos, key=lambda p: p.name):
            digest.update(photo.name.encode() + b"\0" + photo.sha256.encode())
        return digest.hexdigest()[:16]

    def to_dict(self) -> dict:
        payload = asdict(self)
        payload["data_version"] = self.data_version
        return payload

    @classmethod
    def from_dict(cls, payload: dict) -> "ConceptRecord":
        photos = [PhotoRecord(**p) for p in payload["photos"]]
        fields = {k: payload[k] for k in ("key", "name", "class_name", "folder", "token_index")}
        return cls(photos=photos, **fields)


def read_class_map(path: Path) -> dict[str, str]:
    """DreamBooth's ``subject,class`` lines (other lines of that file are ignored)."""
    mapping: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _CLASS_LINE.match(line)
        if match and match.group(1).lower() != "subject_name":
            mapping[match.group(1)] = match.group(2)
    return mapping


def class_from_folder(name: str) -> str:
    """``coffee_cup`` -> ``coffee cup``; ``dog2`` -> ``dog`` (DreamBooth numbers repeat subjects)."""
    words = re.sub(r"[_\-]+", " ", name).strip()
    words = re.sub(r"\s*\d+$", "", words).strip()
    return words or name


def find_class_map(concepts_dir: Path, data_dir: Path, explicit: Path | None) -> Path | None:
    for candidate in ([explicit] if explicit else []) + [concepts_dir / CLASS_MAP_FILE, data_dir / CLASS_MAP_FILE]:
        if candidate and candidate.is_file():
            return candidate
    return None


def discover_concepts(concepts_dir: Path, data_dir: Path, input_config, class_map_file: Path | None = None,
                      previous_tokens: dict[str, int] | None = None,
                      previous_photos: dict[str, PhotoRecord] | None = None,
                      catalogued: dict[str, str] | None = None) -> tuple[list[ConceptRecord], list[dict]]:
    """Every concept folder with at least one usable photo, plus the problems found.

    Problems (unreadable photos, empty folders, names or links escaping the concepts folder,
    two folders with one key, one photo in two places) are returned as ``{"path", "reason"}``
    records; they never stop the other concepts. ``catalogued`` maps the identity
    (:func:`gen4gen.io.concept_identity`) of each concept already in the catalogue to its folder
    name: that folder keeps its key when another one on disk claims it. Hidden folders (names
    starting with ".", such as add-concept's unfinished ``.adding-*`` copies) are not concepts.
    """
    problems: list[dict] = []
    if not concepts_dir.is_dir():
        return [], [{"path": str(concepts_dir), "reason": "concepts folder does not exist"}]
    class_map_path = find_class_map(concepts_dir, data_dir, class_map_file)
    class_map = read_class_map(class_map_path) if class_map_path else {}
    root = concepts_root(concepts_dir)
    candidates: list[tuple[str, Path]] = []
    for folder in sorted(concepts_dir.iterdir(), key=lambda p: p.name):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        try:
            key = check_concept_name(folder.name)
            root.check(folder)
        except BadInput as exc:
            problems.append({"path": str(folder), "reason": exc.reason})
            continue
        candidates.append((key, folder))
    concepts: list[ConceptRecord] = []
    for key, folder in _one_folder_per_identity(candidates, catalogued or {}, problems):
        photos = _load_photos(folder, root, input_config, problems, previous_photos or {})
        if not photos:
            problems.append({"path": str(folder), "reason": "concept folder has no usable images; skipped"})
            continue
        class_name = class_map.get(folder.name) or class_map.get(key) or class_from_folder(folder.name)
        concepts.append(ConceptRecord(key=key, name=folder.name, class_name=class_name, folder=folder.name,
                                      token_index=0, photos=photos))
    _report_duplicate_photos(concepts, concepts_dir, problems)
    assign_tokens(concepts, previous_tokens or {})
    return concepts, problems


def _one_folder_per_identity(candidates: list[tuple[str, Path]], catalogued: dict[str, str],
                             problems: list[dict]) -> list[tuple[str, Path]]:
    """One folder per concept identity: the catalogued one, else the first by name; others refused.

    The catalogued folder must win: its key carries a token that captions already use.
    """
    groups: dict[str, list[tuple[str, Path]]] = {}
    for key, folder in candidates:
        groups.setdefault(concept_identity(key), []).append((key, folder))
    chosen = []
    for identity, group in groups.items():
        known = catalogued.get(identity)
        winner = next((c for c in group if c[1].name == known), group[0])
        why = "already in the catalogue" if winner[1].name == known else "its name sorts first"
        for key, folder in group:
            if folder is not winner[1]:
                problems.append({"path": str(folder), "reason": (
                    f"its key {key!r} is the same concept as {winner[0]!r}, already used by folder "
                    f"{winner[1].name!r} ({why}); this folder is refused: rename it or move its photos there")})
        chosen.append(winner)
    return sorted(chosen, key=lambda c: c[1].name)


def _report_duplicate_photos(concepts: list[ConceptRecord], concepts_dir: Path, problems: list[dict]) -> None:
    """The same photo twice (by content) is almost always a copying mistake; both are kept."""
    first: dict[str, str] = {}
    for concept in concepts:
        for photo in concept.photos:
            if photo.sha256 in first:
                problems.append({"path": str(concepts_dir / photo.file), "reason": (
                    f"the same photo (sha256 {photo.sha256[:12]}) as {first[photo.sha256]}; both are used")})
            else:
                first[photo.sha256] = str(concepts_dir / photo.file)


def _load_photos(folder: Path, root: Root, input_config, problems: list[dict],
                 previous: dict[str, PhotoRecord]) -> list[PhotoRecord]:
    photos: list[PhotoRecord] = []
    stems: set[str] = set()
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower() not in input_config.image_extensions:
            problems.append({"path": str(path), "reason": f"not an image file extension ({path.suffix or 'none'}); ignored"})
            continue
        try:
            real = root.check(path)
            name = root.relative(real)
            stat = real.stat()
            known = previous.get(name)
            if known and (known.size, known.mtime_ns) == (stat.st_size, stat.st_mtime_ns) and known.stem not in stems:
                photos.append(known)  # unchanged since the last catalogue: no need to decode it again
                stems.add(known.stem)
                continue
            loaded = load_photo(real, input_config.min_photo_side, input_config.max_photo_megapixels,
                                input_config.downscale_long_side)
        except BadInput as exc:
            problems.append({"path": str(path), "reason": exc.reason})
            continue
        stem = _unique_stem(path.stem, stems)
        height, width = loaded.rgb.shape[:2]
        photos.append(PhotoRecord(file=name, name=path.name, stem=stem, sha256=sha256_file(real),
                                  width=width, height=height, size=stat.st_size,
                                  # Named as the catalogue names the photo: no absolute path is kept.
                                  warnings=[w.replace(str(real), name) for w in loaded.warnings],
                                  mtime_ns=stat.st_mtime_ns))
    return photos


def _unique_stem(stem: str, taken: set[str]) -> str:
    base = safe_key(stem) or "photo"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


def assign_tokens(concepts: list[ConceptRecord], previous: dict[str, int]) -> None:
    """Concepts keep the token index they had; new concepts take the next free ones.

    Tokens never move when a concept is added, so captions already written stay valid.
    """
    used = set(previous.values())
    next_index = max(used, default=0) + 1
    for concept in concepts:
        if concept.key in previous:
            concept.token_index = previous[concept.key]
        else:
            concept.token_index = next_index
            next_index += 1


def composition_key(concept_keys) -> str:
    return "+".join(sorted(concept_keys))


def split_composition(key: str) -> list[str]:
    return key.split("+")


def propose_compositions(concept_keys: list[str], sizes: list[int], budget: int,
                         explicit: list[str] | None = None) -> list[str]:
    """Deterministic composition keys: pairs and triples, every concept covered first.

    Candidates are ordered by a hash of their key, so the choice does not depend on folder
    listing order, and adding a concept leaves earlier picks' relative order unchanged.
    """
    keys = sorted(set(concept_keys))
    if explicit:
        known = set(keys)
        return [composition_key(split_composition(k)) for k in explicit if set(split_composition(k)) <= known]
    by_size = [sorted((composition_key(c) for c in itertools.combinations(keys, size)),
                      key=lambda k: hashlib.sha256(k.encode()).hexdigest())
               for size in sorted(set(sizes)) if 1 <= size <= len(keys)]
    # Interleave sizes (pair, triple, pair, ...) so a small budget still mixes them.
    candidates = [k for group in itertools.zip_longest(*by_size) for k in group if k]
    chosen: list[str] = []
    uncovered = set(keys)
    # First pass: each pick must bring an uncovered concept, so every concept appears.
    for candidate in candidates:
        if len(chosen) >= budget or not uncovered:
            break
        members = set(split_composition(candidate))
        if members & uncovered:
            chosen.append(candidate)
            uncovered -= members
    for candidate in candidates:
        if len(chosen) >= budget:
            break
        if candidate not in chosen:
            chosen.append(candidate)
    return sorted(chosen)


def extend_compositions(previous: list[str], concept_keys: list[str], new_concepts: list[str], sizes: list[int],
                        per_new_concept: int) -> list[str]:
    """Keep the compositions whose concepts all remain; add some for each new concept.

    Candidates for a new concept are the compositions that include it, in the same
    hash order as the first proposal, so the result does not depend on listing order.
    """
    present = set(concept_keys)
    chosen = [k for k in previous if set(split_composition(k)) <= present]
    for concept in sorted(new_concepts):
        candidates = [k for k in propose_compositions(concept_keys, sizes, budget=10**9)
                      if concept in split_composition(k) and k not in chosen]
        by_hash = sorted(candidates, key=lambda k: hashlib.sha256(k.encode()).hexdigest())
        chosen += by_hash[:per_new_concept]
    return sorted(chosen)


def load_registry(path: Path) -> dict:
    """The catalogue written by ``concept_images``; empty before the first run."""
    from .io import read_json

    return read_json(path) if path.is_file() else {"concepts": [], "compositions": [], "problems": []}


def build_registry(config, previous: dict) -> dict:
    """Discover concepts, propose compositions, keep every token index stable across runs.

    Raises :class:`gen4gen.removals.CatalogueRefused` (``NoConcepts``, ``RemovalRefused``),
    writing nothing, when the folder is missing or empty or loses too many concepts unconfirmed.
    """

    paths = config.paths
    previous_tokens = {c["key"]: c["token_index"] for c in previous.get("concepts", [])}
    previous_tokens.update(previous.get("retired_concept_tokens", {}))
    previous_photos = _previous_photos(paths.concepts, previous)
    catalogued = {concept_identity(c["key"]): c["name"] for c in previous.get("concepts", [])}
    concepts, problems = discover_concepts(paths.concepts, paths.data, config.input, paths.class_map_file,
                                           previous_tokens, previous_photos, catalogued)
    keys = [c.key for c in concepts]
    # Raises before anything is written when concepts would vanish unconfirmed.
    confirmed = check_removals(config, previous, keys)
    proposal = config.proposal
    previous_keys = [c["key"] for c in previous.get("concepts", [])]
    if proposal.explicit or not previous.get("compositions"):
        compositions = propose_compositions(keys, proposal.sizes, proposal.max_compositions, proposal.explicit)
    else:
        compositions = extend_compositions([c["key"] for c in previous["compositions"]], keys,
                                           [k for k in keys if k not in previous_keys], proposal.sizes,
                                           proposal.per_new_concept)
    old_comp_tokens = {c["key"]: c["token_index"] for c in previous.get("compositions", [])}
    old_comp_tokens.update(previous.get("retired_composition_tokens", {}))
    next_index = max(old_comp_tokens.values(), default=0) + 1
    composition_records = []
    for key in compositions:
        index = old_comp_tokens.get(key)
        if index is None:
            index, next_index = next_index, next_index + 1
        composition_records.append({"key": key, "concepts": split_composition(key), "token_index": index})
    # Tokens of concepts/compositions that disappear are retired, never handed to another.
    retired_concepts = {k: v for k, v in previous_tokens.items() if k not in keys}
    retired_comps = {k: v for k, v in old_comp_tokens.items() if k not in compositions}
    forget_confirmations(paths, [k for k in confirmed if k not in keys])
    return {
        "fingerprint": folder_fingerprint(paths.concepts, paths.data, paths.class_map_file),
        "concepts": [c.to_dict() for c in concepts],
        "compositions": composition_records,
        "problems": problems,
        "retired_concept_tokens": retired_concepts,
        "retired_composition_tokens": retired_comps,
    }


def _previous_photos(concepts_dir: Path, previous: dict) -> dict[str, PhotoRecord]:
    """The last catalogue's photos by their name relative to the concepts folder.

    A catalogue written before names were relative holds absolute paths: those inside the concepts
    folder as it is now are renamed to relative names; others (a moved folder) are decoded again.
    """
    root = concepts_root(concepts_dir)
    photos = {}
    for concept in previous.get("concepts", []):
        for payload in concept["photos"]:
            photo = PhotoRecord(**payload)
            try:
                photo.file = root.relative(root.locate(photo.file))
            except BadInput:
                continue
            photos[photo.file] = photo
    return photos


def concept_lookup(registry: dict) -> dict[str, ConceptRecord]:
    return {c["key"]: ConceptRecord.from_dict(c) for c in registry["concepts"]}


def photo_path(concepts_dir: Path, photo: PhotoRecord | dict) -> Path:
    """The real path of a catalogued photo in the concepts folder as configured now.

    The catalogue is a file like any other: OutsideRoot (a BadInput) when its name climbs out
    with ``..`` or, written by an earlier version as an absolute path, lies outside the folder.
    """
    stored = photo["file"] if isinstance(photo, dict) else photo.file
    return concepts_root(concepts_dir).locate(stored)


def folder_fingerprint(concepts_dir: Path, data_dir: Path, class_map_file: Path | None = None) -> str:
    """A cheap hash of what the concepts folder holds (names, sizes, modification times).

    The sensor compares it between ticks: any added, changed or removed photo or folder, or
    an edited class map, changes it without reading a single image.
    """
    digest = hashlib.sha256()
    if concepts_dir.is_dir():
        for folder in sorted(concepts_dir.iterdir(), key=lambda p: p.name):
            if folder.is_dir() and not folder.name.startswith("."):
                for entry in sorted(folder.iterdir(), key=lambda p: p.name):
                    if entry.is_file():
                        stat = entry.stat()
                        digest.update(f"{folder.name}/{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    class_map = find_class_map(concepts_dir, data_dir, class_map_file)
    if class_map:
        digest.update(class_map.read_bytes())
    return digest.hexdigest()[:16]
