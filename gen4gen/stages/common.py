"""What every stage shares: its result record, manifests, JSON and PNG writing.

No Dagster here: assets call the stage functions, tests and benchmarks call them directly. Each
stage writes its files into the folder it is given (the partition's staging folder) and its
``manifest.json`` last. Each also returns a lineage record per file it wrote, naming the files it
was made from, for the lineage store.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path


from ..io import (encode_png, json_bytes, read_json, sha256_bytes, write_if_changed)
from ..lineage import ArtifactRecord

# The lineage of the exported images, as Parquet beside them (written by the mycanvas asset).
LINEAGE_EXPORT_FILES = ("lineage_artifacts.parquet", "lineage_edges.parquet")

MANIFEST = "manifest.json"


class StageInputError(RuntimeError):
    """An upstream artifact this stage needs is missing; the message says which and how to build it."""


@dataclass
class StageResult:
    manifest: dict
    written: list[Path] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    lineage: list[ArtifactRecord] = field(default_factory=list)


def read_manifest(folder: Path, what: str, how: str) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise StageInputError(f"{what} is missing ({path} does not exist); {how}")
    return read_json(path)


def write_json(path: Path, payload) -> str:
    data = json_bytes(payload)
    write_if_changed(path, data)
    return sha256_bytes(data)


def listing(path: Path, sha: str, files: list[tuple[Path, str]]) -> ArtifactRecord:
    """A manifest or index file: its parents are the files it lists."""
    return ArtifactRecord(str(path), sha, [(str(f), h, "listed") for f, h in files])


def write_png(path: Path, image, level: int, written: list[Path]) -> dict:
    data = encode_png(image, level)
    write_if_changed(path, data)
    written.append(path)
    return {"file": path.name, "sha256": sha256_bytes(data)}


class PngWriter:
    """Encode and write PNGs on worker threads while the stage computes the next image.

    PNG compression releases the GIL, so on two cores this overlaps most of the encoding.
    ``result()`` waits for every write and re-raises the first failure.
    """

    def __init__(self, level: int, workers: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self.level = level
        self.written: list[Path] = []
        self._pool = ThreadPoolExecutor(workers)
        self._futures = []

    def submit(self, path: Path, image) -> Future:
        future = self._pool.submit(write_png, path, image, self.level, self.written)
        self._futures.append(future)
        return future

    def result(self) -> list[Path]:
        try:
            for future in self._futures:
                future.result()
        finally:
            self._pool.shutdown(wait=True)
        return self.written

