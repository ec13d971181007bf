"""Import image archives at start, once, after the daemon serves.

An archive already imported (same size and mtime, its images still present) is skipped, so that
a restart does not re-read hundreds of megabytes. The import runs in the background: the archives
are checked before the daemon serves (a missing one still stops it), and a deploy that needs an
image while the import runs waits for it (``ContainerdRuntime.preloading``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Sequence
from pathlib import Path

from scheduler import domain, errors, log
from scheduler.runtime.base import ContainerRuntime

_log = log.get("images.preload")


def check_archives(archives: Sequence[Path]) -> None:
    """Fail at once, naming the option, when a listed archive does not exist.

    Raises:
        InvalidArgument: naming the archive and ``images.preload``.
    """
    for archive in archives:
        try:
            archive.stat()
        except OSError as err:
            raise errors.InvalidArgument(
                f"images.preload: image archive {archive} does not exist ({err.strerror})", field="images.preload"
            ) from err


async def preload_after(
    ready: Awaitable[object], runtime: ContainerRuntime, archives: Sequence[Path], record: Path
) -> None:
    """Once ``ready`` is done, :func:`preload`; a failure is logged (the daemon keeps serving)."""
    await ready
    try:
        names = await preload(runtime, archives, record)
    except errors.SchedulerError as err:
        _log.error("images.preload_failed", error=err.message)
    except OSError as err:
        _log.error("images.preload_failed", error=str(err))
    else:
        _log.info("images.preload.done", images=len(names))


async def preload(runtime: ContainerRuntime, archives: Sequence[Path], record: Path) -> list[str]:
    """Import each archive unless ``record`` says it was imported and its images are still there.

    Returns the names of the images imported or found.
    """
    check_archives(archives)
    try:
        seen: dict[str, dict[str, object]] = json.loads(record.read_text())
    except (OSError, ValueError):
        seen = {}
    names: list[str] = []
    for archive in archives:
        stat = archive.stat()
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
    found = await asyncio.gather(*(_present(runtime, name) for name in names))
    return bool(names) and all(found)


async def _present(runtime: ContainerRuntime, name: str) -> bool:
    try:
        await runtime.ensure_image(name, domain.PullPolicy.NEVER)
    except errors.NotFound:
        return False
    return True
