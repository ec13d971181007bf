"""Build the demo image archives into ``images/out``, skipping those whose inputs did not change.

Usage: ``python -m images.build [--out DIR] [--force] [NAME...]`` where NAME is an archive stem
(``postgres-15``) or an image name. Each archive has a ``<file>.inputs.json`` beside it recording the
recipe hash and the size and mtime of every host file read; when they all match, the build is skipped
without running ``ldd`` or reading any file, so a no-op rebuild takes milliseconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from images.oci import Layer, write_archive, write_layer
from images.recipes import FILES, RECIPES, Recipe, base_layer
from images.rootfs import BuildError, Rootfs, host_stats

OUT_DIR = Path(__file__).parent / "out"
RECIPE_VERSION = "1"
"""Bump to force a rebuild when the output format changes in a way the source hash misses."""


def recipe_hash() -> str:
    """Hash of the builder's own code and shipped files: any edit rebuilds every image."""
    sha = hashlib.sha256(RECIPE_VERSION.encode())
    here = Path(__file__).parent
    sources = sorted(here.glob("*.py")) + sorted(p for p in FILES.rglob("*") if p.is_file())
    for path in sources:
        sha.update(str(path.relative_to(here)).encode() + b"\0")
        sha.update(path.read_bytes() + b"\0")
    return sha.hexdigest()


def _stamp_path(out: Path) -> Path:
    return out.with_name(out.name + ".inputs.json")


def is_fresh(out: Path, digest: str) -> bool:
    """True when ``out`` was built from the same recipe and the same host files."""
    try:
        stamp = json.loads(_stamp_path(out).read_text())
        size = out.stat().st_size
    except (OSError, ValueError):
        return False
    if stamp.get("recipe") != digest or stamp.get("size") != size:
        return False
    inputs = stamp.get("inputs", {})
    return isinstance(inputs, dict) and host_stats(inputs) == inputs


def _build_one(recipe: Recipe, out: Path, base: Rootfs, base_layer_blob: Layer, digest: str, blob_dir: Path) -> None:
    fs = Rootfs()
    recipe.fill(fs)
    layers = [base_layer_blob]
    if fs.entries:
        layers.append(write_layer(fs, blob_dir, f"{recipe.name}: application files"))
    write_archive(out, recipe.name, recipe.config, layers)
    stamp = {
        "recipe": digest,
        "size": out.stat().st_size,
        "name": recipe.name,
        "inputs": host_stats(base.inputs | fs.inputs),
    }
    _stamp_path(out).write_text(json.dumps(stamp, indent=1, sort_keys=True))


def build(names: list[str] | None = None, out_dir: Path = OUT_DIR, force: bool = False) -> dict[str, Path]:
    """Build the images (all when ``names`` is empty); return image name -> archive path."""
    recipes = [r for r in RECIPES if not names or r.name in names or r.file.removesuffix(".tar") in names]
    if names and len(recipes) != len(set(names)):
        known = ", ".join(r.file.removesuffix(".tar") for r in RECIPES)
        raise BuildError(f"unknown image in {names}; known: {known}")
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = recipe_hash()
    result = {r.name: out_dir / r.file for r in recipes}
    stale = [r for r in recipes if force or not is_fresh(out_dir / r.file, digest)]
    if not stale:
        return result
    blob_dir = Path(tempfile.mkdtemp(prefix=".blobs-", dir=out_dir))
    try:
        base = base_layer()
        base_blob = write_layer(base, blob_dir, "busybox base")
        with ThreadPoolExecutor(max_workers=len(stale)) as pool:
            futures = [pool.submit(_build_one, r, out_dir / r.file, base, base_blob, digest, blob_dir) for r in stale]
            for future in futures:
                future.result()
    finally:
        shutil.rmtree(blob_dir, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m images.build", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="archive stems (postgres-15) or image names")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory (default images/out)")
    parser.add_argument("--force", action="store_true", help="rebuild even when nothing changed")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        built = build(args.names or None, args.out, args.force)
    except BuildError as err:
        print(f"images: {err}", file=sys.stderr)
        return 1
    for name, path in built.items():
        print(f"{name}\t{path}\t{path.stat().st_size // 1024} KiB")
    print(f"images ready in {time.monotonic() - started:.2f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
