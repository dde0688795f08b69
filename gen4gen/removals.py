"""The removal guard: the catalogue never retires concepts by accident.

A concepts folder that is unmounted, emptied or half-synchronised looks, file by file, exactly
like concepts deliberately removed. Retiring a concept retires its partitions and its token for
ever, so the catalogue refuses (and writes nothing) when the folder is missing or empty, or when
more than ``regeneration.max_removed_share`` of its concepts vanish at once, unless the user
confirmed those removals: ``gen4gen remove-concept NAME`` or ``gen4gen materialize
--confirm-removals`` list the keys in ``<build>/confirmed_removals.json``.
"""
from __future__ import annotations

from pathlib import Path

from .io import BadInput, atomic_write_json, read_json

CONFIRMATIONS_FILE = "confirmed_removals.json"
HOW_TO_CONFIRM = ("to retire them, run `gen4gen remove-concept NAME` for each (its photos are moved to "
                  "<data>/removed/) or `gen4gen materialize --confirm-removals`")


class CatalogueRefused(BadInput):
    """The catalogue step refused to run; nothing was written. The message says what it saw."""


class NoConcepts(CatalogueRefused):
    """Nothing was ever catalogued and the concepts folder is missing or holds no usable concept."""


class RemovalRefused(CatalogueRefused):
    """Catalogued concepts vanished without confirmation, too many at once or all of them."""

    def __init__(self, folder: Path, before: int, now: int, missing: dict[str, str], saw: str):
        self.folder = Path(folder)
        self.before, self.now = before, now
        self.missing = sorted(missing)  # catalogue keys that would be retired
        listed = ", ".join(f"{key} ({why})" for key, why in sorted(missing.items()))
        super().__init__(folder, f"catalogue not updated: the concepts folder {saw}; {before} concepts were "
                                 f"catalogued, {now} are found now; missing: {listed}. Nothing was written. If the "
                                 f"folder is unmounted or was emptied by mistake, restore it; {HOW_TO_CONFIRM}")


def confirmations_path(paths) -> Path:
    return paths.build / CONFIRMATIONS_FILE


def read_confirmations(paths) -> set[str]:
    """Keys the user confirmed for removal; a damaged file confirms nothing."""
    try:
        keys = read_json(confirmations_path(paths))
    except (FileNotFoundError, ValueError):
        return set()
    return {k for k in keys if isinstance(k, str)} if isinstance(keys, list) else set()


def confirm_removals(paths, keys) -> list[str]:
    """Add ``keys`` to the confirmations the next catalogue honours; returns all confirmed keys."""
    confirmed = sorted(read_confirmations(paths) | set(keys))
    atomic_write_json(confirmations_path(paths), confirmed)
    return confirmed


def forget_confirmations(paths, keys) -> None:
    """Drop ``keys`` from the confirmations (retired, or added again): they must not outlive their use."""
    keys = set(keys)
    confirmed = read_confirmations(paths)
    if not keys & confirmed:
        return
    left = sorted(confirmed - keys)
    if left:
        atomic_write_json(confirmations_path(paths), left)
    else:
        confirmations_path(paths).unlink(missing_ok=True)


def _has_photo_files(folder: Path, extensions) -> bool:
    try:
        return any(p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
                   for p in folder.iterdir())
    except OSError:
        return False


def missing_concepts(config) -> list[str]:
    """Catalogued keys whose folders are gone (or hold no image file): what a removal would retire."""
    paths = config.paths
    try:
        registry = read_json(paths.registry)
    except (FileNotFoundError, ValueError):
        return []
    missing = []
    for concept in registry.get("concepts", []):
        folder = paths.concepts / concept["name"]
        if not folder.is_dir() or not _has_photo_files(folder, config.input.image_extensions):
            missing.append(concept["key"])
    return sorted(missing)


def check_removals(config, previous: dict, found_keys) -> set[str]:
    """Raise unless every concept the catalogue would drop is safe to drop; returns the confirmations read."""
    paths = config.paths
    folder = paths.concepts
    catalogued = {c["key"]: c for c in previous.get("concepts", [])}
    found = set(found_keys)
    saw = None
    if not folder.is_dir():
        saw = f"{folder} does not exist"
    elif not found:
        saw = f"{folder} holds no concept with a usable photo"
    if not catalogued:
        if saw:
            raise NoConcepts(folder, f"no concepts: {saw}; put one folder of photos per concept there "
                                     "(README, \"Your data\") or run `gen4gen demo-data`")
        return set()
    confirmed = read_confirmations(paths)
    unconfirmed = {key: ("folder gone" if not (folder / record["name"]).is_dir() else "no usable photo left")
                   for key, record in catalogued.items() if key not in found and key not in confirmed}
    if not unconfirmed:
        return confirmed
    share = config.regeneration.max_removed_share
    if saw is None and len(unconfirmed) / len(catalogued) > share:
        saw = (f"{folder} has lost {len(unconfirmed)} of its {len(catalogued)} catalogued concepts at once, more "
               f"than regeneration.max_removed_share = {share:g}")
    if saw:
        raise RemovalRefused(folder, len(catalogued), len(found), unconfirmed, saw)
    return confirmed

