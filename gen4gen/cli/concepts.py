"""Commands about the concepts folder: demo data, adding and removing a concept."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..config import load_config
from .common import instance, overrides, preflight

STAGING_PREFIX = ".adding-"
# An add-concept copy untouched for this long was interrupted (each copied file refreshes the
# folder's modification time), so the next add-concept removes it.
STALE_STAGING_S = 60.0


def cmd_demo_data(args) -> int:
    from ..demo_data import demo_notes, write_demo_concepts

    config = load_config(args.config, **overrides(args))
    written = write_demo_concepts(config.paths.concepts)
    print(f"demo concepts in {config.paths.concepts} ({len(written)} photos written)")
    for note in demo_notes():  # no installed package ships a whole one: the checks will turn these away
        print(f"  note: {note}")
    return 0


def _existing_concepts(concepts_dir: Path, registry: dict) -> dict[str, tuple[str, str]]:
    """Identity -> (folder name, description) of every concept in the catalogue or on disk."""
    from ..io import concept_identity

    known = {concept_identity(c["key"]): (c["name"], f"catalogued concept {c['key']!r} (folder "
                                                     f"{concepts_dir / c['name']})")
             for c in registry.get("concepts", [])}
    if concepts_dir.is_dir():
        for folder in sorted(concepts_dir.iterdir()):
            if folder.is_dir() and not folder.name.startswith("."):
                known.setdefault(concept_identity(folder.name), (folder.name, f"concept folder {folder}"))
    return known


def remove_stale_staging(concepts_dir: Path, older_than_s: float = STALE_STAGING_S) -> list[Path]:
    """Delete add-concept copies left by an interrupted run (they hold copies, never originals)."""
    import shutil

    removed = []
    if concepts_dir.is_dir():
        for entry in concepts_dir.iterdir():
            if (entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink()
                    and time.time() - entry.stat().st_mtime > older_than_s):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _photos_to_copy(source: Path, extensions) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(name in the source, real file) for each photo, and the files refused for leaving the source folder."""
    from ..io import BadInput
    from ..roots import source_root

    root = source_root(source)
    accepted, refused = [], []
    for photo in sorted(source.iterdir()):
        if photo.name.startswith(".") or photo.suffix.lower() not in extensions or not photo.is_file():
            continue
        try:
            accepted.append((photo, root.check(photo)))
        except BadInput as exc:
            refused.append(str(exc))
    return accepted, refused


def cmd_add_concept(args) -> int:
    """Copy a folder of photos in as a new concept, then build only what it adds."""
    import shutil
    import tempfile

    from ..concepts import find_class_map, load_registry
    from ..io import BadInput, atomic_write_text, check_concept_name, concept_identity
    from ..removals import forget_confirmations

    config = load_config(args.config, **overrides(args))
    paths = config.paths
    source = Path(args.path)
    refused: list[str] = []
    try:
        key = check_concept_name(args.name)
        if not source.is_dir():
            raise BadInput(source, "is not a folder of photos")
        photos, refused = _photos_to_copy(source, config.input.image_extensions)
        for message in refused:
            print(f"add-concept: not copied: {message}", file=sys.stderr)
        if not photos:
            raise BadInput(source, f"has no image files ({', '.join(config.input.image_extensions)}) inside it")
        target = paths.concepts / args.name
        if target.exists():
            raise BadInput(target, "a concept with this name exists; edit its folder and run `gen4gen materialize`")
        same = _existing_concepts(paths.concepts, load_registry(paths.registry)).get(concept_identity(key))
        # The same name again, its folder gone, is the catalogued concept coming back: allowed.
        if same and same[0] != args.name:
            raise BadInput(args.name, f"has the key {key!r}, the same concept as {same[1]}; its token stays bound "
                                      "to it, so choose another name")
    except BadInput as exc:
        print(f"add-concept: {exc}", file=sys.stderr)
        return 2
    paths.concepts.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_staging(paths.concepts):
        print(f"add-concept: removed {stale.name}, left by an interrupted add-concept", file=sys.stderr)
    # Copy into a hidden folder, then rename: the catalogue never sees a half-copied concept.
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=paths.concepts))
    try:
        for name, real in photos:
            shutil.copy2(real, staging / name.name)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    forget_confirmations(paths, [key])  # a removal confirmed earlier does not apply to the new folder
    if args.class_name:
        class_map = (find_class_map(paths.concepts, paths.data, paths.class_map_file)
                     or paths.concepts / "prompts_and_classes.txt")
        existing = class_map.read_text(encoding="utf-8") if class_map.is_file() else "subject_name,class\n"
        atomic_write_text(class_map, existing.rstrip("\n") + f"\n{args.name},{args.class_name}\n")
    print(f"added concept {args.name!r} ({len(photos)} photos, {len(refused)} refused) to {paths.concepts}")
    return 0 if args.no_build else _build(config, args)


def _find_concept(name: str, concepts_dir: Path, registry: dict) -> tuple[str, Path | None]:
    """The catalogue key and folder (None when already gone) of the concept called ``name``."""
    from ..io import BadInput, check_concept_name, concept_identity

    check_concept_name(name)
    identity = concept_identity(name)
    for record in registry.get("concepts", []):
        if concept_identity(record["key"]) == identity:
            folder = concepts_dir / record["name"]
            return record["key"], folder if folder.is_dir() else None
    folders = [f for f in sorted(concepts_dir.iterdir()) if f.is_dir() and not f.name.startswith(".")
               and concept_identity(f.name) == identity] if concepts_dir.is_dir() else []
    exact = [f for f in folders if f.name == name]
    if len(exact or folders) == 1:
        folder = (exact or folders)[0]
        return check_concept_name(folder.name), folder
    if folders:
        raise BadInput(name, f"matches several folders ({', '.join(f.name for f in folders)}); give the exact name")
    known = sorted(c["key"] for c in registry.get("concepts", []))
    raise BadInput(name, f"is no concept in {concepts_dir} or the catalogue (known: {', '.join(known) or 'none'})")


def cmd_remove_concept(args) -> int:
    """Move a concept's folder to <data>/removed/ and confirm its retirement."""
    import shutil
    from datetime import datetime, timezone

    from ..concepts import load_registry
    from ..io import BadInput
    from ..removals import confirm_removals
    from ..roots import removed_folder

    config = load_config(args.config, **overrides(args))
    paths = config.paths
    try:
        key, folder = _find_concept(args.name, paths.concepts, load_registry(paths.registry))
    except BadInput as exc:
        print(f"remove-concept: {exc}", file=sys.stderr)
        return 2
    # Confirmed first: a catalogue run between the two steps then retires it instead of refusing.
    confirm_removals(paths, [key])
    if folder is None:
        print(f"concept {key!r}: its folder is already gone; its removal is confirmed")
    else:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        destination = removed_folder(paths.data) / f"{folder.name}-{stamp}"
        n = 2
        while destination.exists():
            destination, n = removed_folder(paths.data) / f"{folder.name}-{stamp}-{n}", n + 1
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), str(destination))
        print(f"concept {key!r} removed: its photos are in {destination}")
    return 0 if args.no_build else _build(config, args)


def _build(config, args) -> int:
    """The incremental materialisation that `gen4gen materialize` runs."""
    preflight(config)  # ends the command (exit 3) when weights are missing
    from gen4gen_assets.definitions import build_definitions
    from gen4gen_assets.runner import materialize_all

    summary = materialize_all(build_definitions(config_file=args.config, data_dir=args.data_dir), instance(),
                              incremental=True)
    print(f"{len(summary.succeeded)} runs ({summary.steps} steps) succeeded, {len(summary.failed)} failed, "
          f"in {summary.seconds:.1f} s")
    for label, message in summary.failed.items():
        print(f"  failed: {label}: {message}")
    return 1 if summary.failed else 0


def register(sub) -> None:
    demo = sub.add_parser("demo-data", help="write the sample concepts (photos shipped in installed packages)")
    demo.add_argument("--data-dir")
    demo.set_defaults(func=cmd_demo_data)
    add = sub.add_parser("add-concept", help="copy a folder of photos in as a new concept and build what it adds")
    add.add_argument("path", help="folder with the concept's photos")
    add.add_argument("--name", required=True, help="concept name (the folder name under concepts/)")
    add.add_argument("--class", dest="class_name", help="class name, e.g. 'stuffed animal' (default: from the name)")
    add.add_argument("--no-build", action="store_true", help="only copy; let the sensor or `materialize` build it")
    add.add_argument("--data-dir")
    add.set_defaults(func=cmd_add_concept)
    remove = sub.add_parser("remove-concept", help="move a concept's photos to <data>/removed/ and retire it")
    remove.add_argument("name", help="concept name or catalogue key")
    remove.add_argument("--no-build", action="store_true", help="only move and confirm; build later")
    remove.add_argument("--data-dir")
    remove.set_defaults(func=cmd_remove_concept)
