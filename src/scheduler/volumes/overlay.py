"""Layered volumes: a read-only template below, the environment's own changes above (overlayfs).

On a filesystem without reflinks (ext4) a volume seeded from a PostgreSQL template was a byte
copy of its 39 MB and ~990 files. Twenty deploys at once made eighteen such copies: measured on
2 shared cores (load 10-20), the copies were 10 of the daemon's 14.5 CPU seconds, about 1 GB
written, and the last PostgreSQL container waited for them. An overlay mount costs a
``mount(2)``: the template is the lower layer, read-only and shared, and the environment's
writes (PostgreSQL's first start copies up the few files it changes) go to its upper layer.

On disk, volume ``<env>/<name>`` is the mount point; its layers live beside it in
``<env>/.layers-<name>/``: ``upper/``, ``work/`` and ``lower`` (a record of the lower layer's
path). The record is written before the mount, so a volume whose mount is gone (after a
reboot) is known as layered and mounted again at start (:func:`remount`) rather than taken for
an empty one. The mount is ``nosuid,nodev`` like the containers' own view of volumes. A layered
volume is unmounted before it is removed or restored (a restore leaves a plain directory).
Its template must outlive it: :func:`lowers` names every lower layer in use, and the template
collector keeps those.

Functions are synchronous filesystem work (callers run them in a thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
from pathlib import Path

PREFIX = ".layers-"
"""Beside each layered volume: its layers (never a valid volume or environment name)."""
RECORD = "lower"
_MS_NOSUID = 2
_MS_NODEV = 4
_MNT_DETACH = 2
_UNSAFE = (",", ":", "\\", "\n")
"""Characters overlayfs's option string would need escaped: such paths are not layered."""
_libc = ctypes.CDLL(None, use_errno=True)


def layers(volume: Path) -> Path:
    """The directory holding ``volume``'s layers (whether or not it exists)."""
    return volume.parent / f"{PREFIX}{volume.name}"


def is_layered(volume: Path) -> bool:
    """Whether ``volume`` is (or, after a reboot, was) an overlay mount."""
    return (layers(volume) / RECORD).is_file()


def create(volume: Path, lower: Path) -> None:
    """Make ``volume`` (missing or an empty directory) an overlay on ``lower`` and mount it.

    The upper layer's root takes ``lower``'s owner and mode (a data directory's 0700 and uid).

    Raises:
        OSError: the host cannot mount it (no overlayfs, a path it cannot take); nothing is left.
    """
    if any(c in str(p) for p in (volume, lower) for c in _UNSAFE):
        raise OSError(errno.EINVAL, "path not usable in overlayfs options", str(lower))
    info = os.lstat(lower)
    held = layers(volume)
    made = not volume.exists()
    held.mkdir(mode=0o700)
    try:
        (held / "upper").mkdir(mode=0o700)
        (held / "work").mkdir(mode=0o700)
        os.chown(held / "upper", info.st_uid, info.st_gid)
        os.chmod(held / "upper", stat.S_IMODE(info.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
        partial = held / f".{RECORD}.partial"
        partial.write_text(str(lower))
        os.replace(partial, held / RECORD)
        if made:
            volume.mkdir(mode=0o755)
        mount(volume)
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                volume.rmdir()
        shutil.rmtree(held, ignore_errors=True)
        raise


def mount(volume: Path) -> None:
    """Mount ``volume``'s overlay from its recorded layers (it must not be mounted).

    Raises:
        OSError: the lower layer is gone, or the mount failed.
    """
    held = layers(volume)
    lower = Path((held / RECORD).read_text())
    if not lower.is_dir():
        raise OSError(errno.ENOENT, "lower layer (its template) is gone", str(lower))
    options = f"lowerdir={lower},upperdir={held / 'upper'},workdir={held / 'work'}"
    flags = _MS_NOSUID | _MS_NODEV
    if _libc.mount(b"overlay", os.fsencode(volume), b"overlay", flags, options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount overlay: {os.strerror(err)}", str(volume))


def unmount(volume: Path) -> None:
    """Unmount ``volume`` if it is mounted (lazily when something still holds it)."""
    if not os.path.ismount(volume):
        return
    if _libc.umount2(os.fsencode(volume), 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EBUSY and _libc.umount2(os.fsencode(volume), _MNT_DETACH) == 0:
        return
    if err not in (errno.EINVAL, errno.ENOENT):
        raise OSError(err, f"umount: {os.strerror(err)}", str(volume))


def drop(volume: Path) -> None:
    """Unmount ``volume`` and remove its layers: it is left an empty directory (or absent)."""
    unmount(volume)
    shutil.rmtree(layers(volume), ignore_errors=True)


def unmount_all(env_dir: Path) -> None:
    """Unmount every layered volume of one environment's directory (before removing it)."""
    if not env_dir.is_dir() or env_dir.is_symlink():
        return
    for held in env_dir.iterdir():
        if held.name.startswith(PREFIX):
            unmount(env_dir / held.name[len(PREFIX) :])


def remount(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Mount again every layered volume under ``root`` whose mount is gone.

    Returns those mounted, and those that could not be (their template is gone) with why.
    """
    mounted, failed = [], []
    for volume, _lower in _records(root):
        if os.path.ismount(volume):
            continue
        try:
            volume.mkdir(mode=0o755, exist_ok=True)
            mount(volume)
        except OSError as err:
            failed.append((volume, f"{err.strerror}: {err.filename}"))
        else:
            mounted.append(volume)
    return mounted, failed


def lowers(root: Path) -> set[Path]:
    """The lower layers every layered volume under ``root`` was made on."""
    return {lower for _volume, lower in _records(root)}


def _records(root: Path) -> list[tuple[Path, Path]]:
    found: list[tuple[Path, Path]] = []
    if not root.is_dir():
        return found
    for env_dir in root.iterdir():
        if env_dir.name.startswith(".") or not env_dir.is_dir() or env_dir.is_symlink():
            continue
        for held in env_dir.iterdir():
            if held.name.startswith(PREFIX):
                try:
                    lower = Path((held / RECORD).read_text())
                except OSError:
                    continue  # made by a create that failed midway: no volume on it
                found.append((env_dir / held.name[len(PREFIX) :], lower))
    return found
