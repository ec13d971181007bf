"""Import image archives at start, once.

An archive already imported (same size and mtime, its images still present) is skipped, so that
a restart does not re-read hundreds of megabytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from scheduler import domain, errors, log
from scheduler.runtime.base import ContainerRuntime

_log = log.get("images.preload")


async def preload(runtime: ContainerRuntime, archives: Sequence[Path], record: Path) -> list[str]:
    """Import each archive unless ``record`` says it was imported and its images are still there.

    Returns the names of the images imported or found.
    """
    try:
        seen: dict[str, dict[str, object]] = json.loads(record.read_text())
    except (OSError, ValueError):
        seen = {}
    names: list[str] = []
    for archive in archives:
        try:
            stat = archive.stat()
        except OSError as err:
            raise errors.InvalidArgument(
                f"images.preload: image archive {archive} does not exist ({err.strerror})", field="images.preload"
            ) from err
        key = str(archive.resolve())
        fingerprint = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        previous = seen.get(key)
        if previous is not None and previous.get("fingerprint") == fingerprint:
            imported = [str(n) for n in previous.get("images", [])]  # type: ignore[attr-defined]
            if await _all_present(runtime, imported):
                _log.debug("images.preload.skipped", archive=key, images=imported)
                names += imported
                continue
        images = await runtime.import_archive(archive)
        imported = [image.name for image in images]
        _log.info("images.preloaded", archive=key, images=imported)
        seen[key] = {"fingerprint": fingerprint, "images": imported}
        names += imported
    record.parent.mkdir(parents=True, exist_ok=True)
    temporary = record.with_suffix(".tmp")
    temporary.write_text(json.dumps(seen, indent=1, sort_keys=True))
    temporary.replace(record)
    return names


async def _all_present(runtime: ContainerRuntime, names: list[str]) -> bool:
    for name in names:
        try:
            await runtime.ensure_image(name, domain.PullPolicy.NEVER)
        except errors.NotFound:
            return False
    return bool(names)
