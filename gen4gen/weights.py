"""Offline IS-Net (DIS) weights, assembled from the chunked npm package that ships them.

``@imgly/background-removal-data`` stores each ONNX model as content-addressed chunks
(``package/dist/<sha256>``) indexed by ``package/dist/resources.json``. Every chunk is
checked against its hash, length and offsets before the model is written atomically.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from gen4gen.io import atomic_write_bytes, atomic_write_json, read_json, sha256_file

DEFAULT_PACKAGE = "@imgly/background-removal-data@1.4.5"
LICENCE = "AGPL-3.0 (package @imgly/background-removal-data); model: IS-Net, xuebinqin/DIS (Apache-2.0)"

_RESOURCES = "package/dist/resources.json"
_PACKAGE_JSON = "package/package.json"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def fetch_isnet(dest: Path, variant: str = "medium", package: str = DEFAULT_PACKAGE,
                tarball: Path | None = None) -> Path:
    """Write the IS-Net ONNX model ``variant`` to ``dest`` plus a ``.json`` sidecar; return ``dest``.

    Uses ``tarball`` when given, otherwise ``npm pack <package>``. A ``dest`` whose sha256
    matches its sidecar is kept as is, without calling npm.
    """
    dest = Path(dest)
    sidecar = dest.with_suffix(".json")
    if _is_current(dest, sidecar, variant):
        return dest
    with tempfile.TemporaryDirectory(prefix="gen4gen-weights-") as tmp:
        archive = Path(tarball) if tarball is not None else _npm_pack(package, Path(tmp))
        data, meta = _assemble(archive, variant)
    atomic_write_bytes(dest, data)
    atomic_write_json(sidecar, {
        "package": meta.get("name"),
        "version": meta.get("version"),
        "variant": variant,
        "resource": f"/models/{variant}",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "licence": LICENCE,
    })
    return dest


def _is_current(dest: Path, sidecar: Path, variant: str) -> bool:
    if not (dest.is_file() and sidecar.is_file()):
        return False
    try:
        recorded = read_json(sidecar)
    except (OSError, ValueError):
        return False
    return (isinstance(recorded, dict) and recorded.get("variant") == variant
            and recorded.get("sha256") == sha256_file(dest))


def _npm_pack(package: str, workdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is not installed or not on PATH; it is needed to download {package}. "
                           "Install Node.js/npm, or pass a tarball obtained with `npm pack`.")
    result = subprocess.run([npm, "pack", package], cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`npm pack {package}` failed (exit {result.returncode}): "
                           f"{result.stderr.strip() or result.stdout.strip()}")
    tarballs = sorted(workdir.glob("*.tgz"))
    if len(tarballs) != 1:
        raise RuntimeError(f"`npm pack {package}` produced {len(tarballs)} tarballs in {workdir}, expected one")
    return tarballs[0]


def _assemble(archive: Path, variant: str) -> tuple[bytes, dict]:
    """Verified bytes of the model ``variant`` and the package's package.json.

    Members are read by exact name straight from the archive rather than extracted, so no
    member path can reach the file system; chunk names come from resources.json and are
    accepted only as 64-digit hex.
    """
    key = f"/models/{variant}"
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            if _PACKAGE_JSON not in members or _RESOURCES not in members:
                raise RuntimeError(f"{archive}: not an npm package with {_RESOURCES}")
            meta = json.loads(tar.extractfile(members[_PACKAGE_JSON]).read())
            index = json.loads(tar.extractfile(members[_RESOURCES]).read())
            if key not in index:
                models = sorted(k.removeprefix("/models/") for k in index if k.startswith("/models/"))
                raise RuntimeError(f"{archive}: no model variant {variant!r} (available: {', '.join(models)})")
            entry = index[key]
            chunks = sorted(entry["chunks"], key=lambda c: c["offsets"][0])
            if not chunks:
                raise RuntimeError(f"{archive}: {key} lists no chunks")
            for chunk in chunks:
                digest = chunk["hash"]
                if not _HEX64.fullmatch(digest):
                    raise RuntimeError(f"chunk {digest!r} of {key}: name is not a sha256 hex digest")
                if f"package/dist/{digest}" not in members:
                    raise RuntimeError(f"chunk {digest} of {key}: missing from {archive}")
            # Reading in archive order keeps the gzip stream moving forward: out-of-order
            # reads rewind and re-inflate it each time (15 s instead of 2 s for 88 MB).
            wanted = sorted({members[f"package/dist/{c['hash']}"] for c in chunks}, key=lambda m: m.offset_data)
            blobs = {m.name.rsplit("/", 1)[1]: tar.extractfile(m).read() for m in wanted}
    except (tarfile.TarError, OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"{archive}: cannot read the package ({type(exc).__name__}: {exc})") from exc

    position = 0
    for chunk in chunks:
        digest, (start, end) = chunk["hash"], chunk["offsets"]
        if start != position:
            raise RuntimeError(f"chunk {digest} of {key}: starts at offset {start}, expected {position} "
                               "(chunks are not contiguous)")
        data = blobs[digest]
        if len(data) != end - start:
            raise RuntimeError(f"chunk {digest} of {key}: {len(data)} bytes, expected {end - start}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise RuntimeError(f"chunk {digest} of {key}: sha256 is {actual} (corrupt chunk)")
        position = end
    if "size" in entry and position != entry["size"]:
        raise RuntimeError(f"{key}: chunks add up to {position} bytes, resources.json says {entry['size']}")
    return b"".join(blobs[c["hash"]] for c in chunks), meta
