"""The folders that files from outside may come from, and the one rule that keeps them there.

A path that comes from outside the platform (a photo in a concept folder, a scene-bank photo,
an image named in a prompts file, a file named in a manifest) is used only when its real path,
every link followed, lies inside its root. Each root is resolved once, so the root folder itself
may be a link (a shared dataset mounted elsewhere); nothing under it may lead out of it.

The platform's own files (the catalogue, manifests, caches) name files relative to their root
(:meth:`Root.relative`, read back with :meth:`Root.locate`), never by absolute path, so a data
folder moved or mounted elsewhere keeps working once the configuration points at it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from .io import BadInput, ensure_inside


class OutsideRoot(BadInput):
    """A path from outside that is absolute, climbs with ``..`` or resolves out of its root."""


@dataclass(frozen=True)
class Root:
    name: str  # what the folder is, for messages: "concepts folder"
    path: Path  # as configured; may itself be a link
    setting: str | None  # the configuration that moves it; None when it is fixed

    def check(self, candidate: str | os.PathLike) -> Path:
        """The real path of ``candidate``; OutsideRoot naming it when that leaves the root."""
        try:
            return ensure_inside(self.path, Path(candidate), self.name)
        except BadInput as exc:
            raise OutsideRoot(exc.path, exc.reason) from None

    def join(self, relative: str, base: Path | None = None) -> Path:
        """A file named inside a file we read (prompts line, manifest entry), checked.

        ``relative`` must be a plain relative name: absolute paths and ``..`` are refused
        before anything is looked up, whatever they would resolve to.
        """
        where = base if base is not None else self.path
        if not isinstance(relative, str) or not relative.strip():
            raise OutsideRoot(str(relative), "is not a file name")
        for flavour in (PurePosixPath(relative), PureWindowsPath(relative)):
            if flavour.is_absolute() or flavour.drive or flavour.root:
                raise OutsideRoot(relative, f"is an absolute path; only names relative to the {self.name} "
                                            f"{self.path} are accepted")
            if ".." in flavour.parts:
                raise OutsideRoot(relative, f"climbs out with '..'; only names inside the {self.name} "
                                            f"{self.path} are accepted")
        candidate = where / relative
        self.check(candidate)
        return candidate

    def relative(self, path: str | os.PathLike) -> str:
        """How a file inside the root is written into the platform's own files (catalogue, manifests,
        caches): its real path relative to the root, with ``/`` separators, so the folder may be
        moved or mounted elsewhere. :meth:`locate` reads it back. OutsideRoot when it leaves the root.
        """
        real = self.check(path)
        return real.relative_to(Path(self.path).resolve()).as_posix()

    def locate(self, stored: str, written_before: bool = True) -> Path:
        """The real path of a name the platform wrote (see :meth:`relative`), under the root as it is now.

        Names with ``..`` are refused, as by :meth:`join`. Versions before names were relative wrote
        absolute paths: with ``written_before`` one is accepted while it lies inside the root as it is
        now (outside it, OutsideRoot names where it leads); without, any absolute name is refused.
        """
        if written_before and isinstance(stored, str) and os.path.isabs(stored):
            return self.check(stored)
        return self.check(self.join(stored))


DATA = "data folder"
CONCEPTS = "concepts folder"
SCENE_BANK = "scene bank"
WEIGHTS = "weights folder"
GENERATED = "generated-images folder"
SOURCE = "source folder"


def data_root(folder: Path) -> Root:
    """Build artifacts and manifests live here; ``data_dir`` / ``GEN4GEN_DATA_DIR`` / ``--data-dir``."""
    return Root(DATA, Path(folder), "data_dir")


def concepts_root(folder: Path) -> Root:
    """Concept photos: ``<data>/concepts`` or ``concepts_dir`` elsewhere (then its own root)."""
    return Root(CONCEPTS, Path(folder), "concepts_dir")


def scene_bank_root(folder: Path) -> Root:
    """Background photos: always ``<data>/backgrounds`` (it moves with the data folder)."""
    return Root(SCENE_BANK, Path(folder), None)


def weights_root(folder: Path | None = None) -> Root:
    """Where ``make weights`` puts model files: ``weights/`` in the checkout."""
    from .config import PROJECT_ROOT

    return Root(WEIGHTS, Path(folder) if folder else PROJECT_ROOT / "weights", None)


def generated_root(folder: Path) -> Root:
    """Images to evaluate: ``evaluation.generated_dir``."""
    return Root(GENERATED, Path(folder), "evaluation.generated_dir")


def source_root(folder: Path) -> Root:
    """A folder handed to ``gen4gen add-concept``: its files may not lead out of it."""
    return Root(SOURCE, Path(folder), None)


def project_roots(config) -> list[Root]:
    """Every root of a configuration, for messages and documentation."""
    from .config import resolve_path

    paths = config.paths
    roots = [data_root(paths.data), concepts_root(paths.concepts), scene_bank_root(paths.backgrounds),
             weights_root()]
    if config.evaluation.generated_dir:
        roots.append(generated_root(resolve_path(config.evaluation.generated_dir)))
    return roots


def removed_folder(data: Path) -> Path:
    """Where ``gen4gen remove-concept`` moves a concept's photos: they are the user's, never deleted."""
    return Path(data) / "removed"
