"""Committing many 1024² PNGs to DVC, the way gen4gen does (gen4gen/versioning/), and why hard links.

Builds a scratch git + DVC repository, writes ``--files`` distinct PNGs (photo-like content,
about 2 MB each at 1024², PNG level 1 as the pipeline writes them) into per-partition folders
``build/recoloured/pNNNN/`` (``--per-partition`` images each), then times through gen4gen's own
functions:

* ``commit all``: one ``dvc commit --force`` of every partition's stage (hashing every file,
  linking it into the cache, writing the stage files);
* ``status``: ``dvc status`` right after (hashes come from DVC's state database);
* ``recommit``: the same commit again with nothing changed;
* ``one partition``: one rewritten image, one partition's stage committed (the cost per
  Dagster step);
* ``one partition, checked``: the same with the step's records, as Dagster's steps commit: every
  file's sha256 is checked against them first (a file changed since is never versioned);
* a link-type comparison (``--link-types``) on ``--compare-files`` images, each in a fresh repository.

    .venv/bin/python bench/bench_dvc.py                      # 10,000 images: about 20 GB of scratch
    .venv/bin/python bench/bench_dvc.py --files 2000 --compare-files 500

Needs DVC's environment (``make dvc-env``). The scratch folder is deleted at the end (--keep
keeps it).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gen4gen import versioning  # noqa: E402
from gen4gen.config import PROJECT_ROOT, load_config  # noqa: E402
from gen4gen.io import sha256_file  # noqa: E402


def base_images(size: int, count: int = 4) -> list[bytes]:
    """Photo-like PNGs (scikit-image's sample photos, resized, a little sensor noise), level 1."""
    import numpy as np
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(0)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    images = []
    for k in range(count):
        photo = Image.fromarray(photos[k % len(photos)]).convert("RGB").resize((size, size), Image.BILINEAR)
        array = np.clip(np.asarray(photo).astype(np.int16) + rng.normal(0, 2, (size, size, 3)), 0, 255)
        buffer = io.BytesIO()
        Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
        images.append(buffer.getvalue())
    return images


def distinct_png(base: bytes, index: int) -> bytes:
    """The base image with a tEXt chunk naming the index: a valid PNG with its own bytes."""
    payload = b"Comment\0bench image %08d" % index
    chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload + struct.pack(">I", zlib.crc32(b"tEXt" + payload))
    return base[:33] + chunk + base[33:]  # right after the IHDR chunk


def make_project(root: Path, link_types: list[str]):
    root.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text("/data/\n", encoding="utf-8")
    config_file = root / "gen4gen.toml"
    config_file.write_text(
        f'data_dir = "{(root / "data").as_posix()}"\n[dvc]\nroot = "{root.as_posix()}"\n'
        f'executable = "{(PROJECT_ROOT / ".venv-dvc/bin/dvc").as_posix()}"\n'
        f'remote_url = "{(root.parent / (root.name + "-remote")).as_posix()}"\n'
        f"cache_types = {json.dumps(link_types)}\n", encoding="utf-8")
    config = load_config(config_file)
    versioning.setup_repository(config, log=lambda *_: None)
    return config


def write_images(config, files: int, per_partition: int, bases: list[bytes]) -> tuple[list[str], int]:
    keys = [f"p{k:04d}" for k in range((files + per_partition - 1) // per_partition)]
    for key in keys:
        config.paths.recoloured(key).mkdir(parents=True, exist_ok=True)

    def write(index: int) -> int:
        blob = distinct_png(bases[index % len(bases)], index)
        (config.paths.recoloured(keys[index // per_partition]) / f"{index:05d}.png").write_bytes(blob)
        return len(blob)

    with ThreadPoolExecutor(4) as pool:
        total = sum(pool.map(write, range(files)))
    return keys, total


def du(*paths: Path) -> int:
    """Bytes on disk, counting each hard-linked inode once."""
    out = subprocess.run(["du", "-scb", *map(str, paths)], capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def commit(config, keys: list[str], records=None) -> float:
    began = time.perf_counter()
    outcome = versioning.commit_stages(config, [("recoloured", key) for key in keys], push=False, records=records)
    if outcome.status != "committed":
        raise SystemExit(outcome.message())
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--per-partition", type=int, default=100, help="images per partition folder (stage)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--compare-files", type=int, default=1000, help="0: no link-type comparison")
    parser.add_argument("--cache-types", default="hardlink,copy",
                        help="cache.type of the main run ([dvc] cache_types; gen4gen's default)")
    parser.add_argument("--link-types", default="hardlink,copy,symlink",
                        help="compared on --compare-files images (the first is gen4gen's default)")
    parser.add_argument("--scratch", help="folder for the scratch repositories (default: a temporary one)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (PROJECT_ROOT / ".venv-dvc/bin/dvc").is_file():
        print("DVC is not installed: run `make dvc-env`", file=sys.stderr)
        return 2
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench-dvc-"))
    scratch.mkdir(parents=True, exist_ok=True)
    os.environ["DVC_SITE_CACHE_DIR"] = str(scratch / "dvc-site")
    figures: dict = {"cpus": os.cpu_count(), "files": args.files, "size": args.size}
    try:
        bases = base_images(args.size)
        config = make_project(scratch / "main", args.cache_types.split(","))
        began = time.perf_counter()
        keys, total = write_images(config, args.files, args.per_partition, bases)
        figures.update(partitions=len(keys), bytes=total, generate_s=time.perf_counter() - began)
        os.sync()
        figures["commit_all_s"] = commit(config, keys)
        began = time.perf_counter()
        assert versioning.status(config) == {}
        figures["status_s"] = time.perf_counter() - began
        figures["recommit_s"] = commit(config, keys)
        first = config.paths.recoloured(keys[0]) / "00000.png"
        replacement = first.with_suffix(".tmp")
        replacement.write_bytes(distinct_png(bases[1], 10**7))
        os.replace(replacement, first)  # as gen4gen writes: a new file renamed over the old one
        figures["one_partition_s"] = commit(config, keys[:1])
        records = [SimpleNamespace(path=str(p), sha256=sha256_file(p))
                   for p in sorted(config.paths.recoloured(keys[0]).iterdir())]
        replacement.write_bytes(distinct_png(bases[2], 10**7))
        os.replace(replacement, first)
        records[0].sha256 = sha256_file(first)
        figures["one_partition_checked_s"] = commit(config, keys[:1], records)
        figures["disk_bytes"] = du(config.paths.data, scratch / "main" / ".dvc" / "cache")
        shutil.rmtree(scratch / "main")

        comparison = {}
        for link in args.link_types.split(",") if args.compare_files else []:
            project = make_project(scratch / f"compare-{link}", [link])
            subset, size = write_images(project, args.compare_files, args.per_partition, bases)
            os.sync()
            seconds = commit(project, subset)
            comparison[link] = {"commit_s": seconds, "bytes": size,
                                "disk_bytes": du(project.paths.data, scratch / f"compare-{link}" / ".dvc" / "cache")}
            shutil.rmtree(scratch / f"compare-{link}")
        figures["link_types"] = comparison
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    gb = figures["bytes"] / 1e9
    print(f"{figures['files']} PNGs of {args.size}² ({gb:.1f} GB) in {figures['partitions']} partition stages, "
          f"{figures['cpus']} CPUs, cache.type {args.cache_types}:")
    print(f"  generate (not DVC)      {figures['generate_s']:7.1f} s")
    print(f"  commit all (one call)   {figures['commit_all_s']:7.1f} s   {figures['files'] / figures['commit_all_s']:7.0f} "
          f"files/s  {gb / figures['commit_all_s'] * 1000:6.0f} MB/s")
    print(f"  dvc status              {figures['status_s']:7.1f} s")
    print(f"  recommit, no change     {figures['recommit_s']:7.1f} s")
    print(f"  one partition           {figures['one_partition_s']:7.1f} s   (one image changed, "
          f"{args.per_partition} in the stage)")
    print(f"  one partition, checked  {figures['one_partition_checked_s']:7.1f} s   (the same, every file's sha256 "
          "checked against the step's records first)")
    print(f"  disk (data + cache)     {figures['disk_bytes'] / 1e9:7.1f} GB   (data alone {gb:.1f} GB)")
    if figures["link_types"]:
        print(f"link types on {args.compare_files} images:")
    for link, row in figures["link_types"].items():
        print(f"  {link:<9} commit {row['commit_s']:6.1f} s   {args.compare_files / row['commit_s']:6.0f} files/s   "
              f"disk {row['disk_bytes'] / row['bytes']:4.2f}× the data")
    return 0


if __name__ == "__main__":
    sys.exit(main())
