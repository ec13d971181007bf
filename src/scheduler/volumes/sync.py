"""Copy a live directory tree, then bring the copy up to date by rewriting only what changed.

A consistent copy of a live volume is taken in two passes: a full pass while its writers run
(no pause, but files may be caught mid-change or vanish), then, with the writers frozen, a second
pass over the files changed since the first began. Where the filesystem has reflinks, each such
file is cloned again whole (a metadata operation: the freeze lasts milliseconds whatever the
volume's size); elsewhere it is compared block by block and only blocks that differ are
rewritten, so the freeze lasts as long as reading the changed files, not as long as copying the
volume. New files are copied by :mod:`.copy` (reflink where the filesystem has it), under its
rules: numeric owners kept, setuid and setgid dropped, device nodes, FIFOs and sockets left out.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from scheduler.volumes.copy import clone_contents, copy_file, kept_mode, reflinks

BLOCK = 1 << 20
"""Unit of comparison and rewrite in the second pass."""
CLOCK_SLACK = 1.0
"""Seconds before ``since`` that still count as "changed": file times come from a coarse clock and
are set when a write begins, so a write that began just before ``since`` may still be landing."""


@dataclass
class SyncStats:
    """What one pass did."""

    files: int = 0
    """Regular files copied or compared."""
    bytes_written: int = 0
    """Bytes copied or rewritten (a cloned file writes none)."""
    cloned: int = 0
    """Files that share their source's extents (reflinks)."""
    removed: int = 0
    """Entries of the copy that no longer exist in the source."""


def sync_tree(source: Path, target: Path, since: float | None = None) -> SyncStats:
    """Make ``target`` a copy of ``source``.

    With ``since`` (a ``time.time()`` taken before the previous pass began), files whose
    modification and change times are both older than it are trusted to be unchanged; the others
    are compared block by block. Entries that vanish while a pass runs are skipped: only a pass
    over a frozen source promises a consistent copy.
    """
    stats = SyncStats()
    _copy_dir_meta(source, target)
    reflink = since is not None and reflinks(target)
    for dirpath, dirnames, filenames in os.walk(source):
        rel = os.path.relpath(dirpath, source)
        here = target / rel if rel != "." else target
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):  # os.walk lists it, never enters it
                _copy_entry(Path(dirpath) / name, here / name, since, stats, reflink)
            else:
                _copy_dir_meta(Path(dirpath) / name, here / name)
        for name in filenames:
            _copy_entry(Path(dirpath) / name, here / name, since, stats, reflink)
        present = set(dirnames) | set(filenames)
        try:
            leftovers = os.listdir(here)
        except FileNotFoundError:
            continue  # the source directory vanished before its copy was made
        for existing in leftovers:
            if existing not in present:
                _remove(here / existing)
                stats.removed += 1
    return stats


def _copy_dir_meta(source: Path, target: Path) -> None:
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        _remove(target)
    target.mkdir(exist_ok=True)
    os.chown(target, st.st_uid, st.st_gid)
    os.chmod(target, kept_mode(st.st_mode))


def _copy_entry(source: Path, target: Path, since: float | None, stats: SyncStats, reflink: bool) -> None:
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        link = os.readlink(source)
        if target.is_symlink() and os.readlink(target) == link:
            return
        _remove(target)
        os.symlink(link, target)
        os.lchown(target, st.st_uid, st.st_gid)
        return
    if not stat.S_ISREG(st.st_mode):
        return  # sockets, fifos and devices are not data
    try:
        existing = os.lstat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        _remove(target)
        existing = None
    if existing is not None and since is not None and max(st.st_mtime, st.st_ctime) < since - CLOCK_SLACK:
        if existing.st_size == st.st_size:
            return
    stats.files += 1
    try:
        if existing is None:
            copied = copy_file(source, target)
            stats.cloned += copied.cloned
            stats.bytes_written += 0 if copied.cloned else copied.bytes
            return
        if reflink and _reclone(source, target):
            stats.cloned += 1
        else:
            stats.bytes_written += _rewrite_changed(source, target)
    except FileNotFoundError:
        target.unlink(missing_ok=True)  # vanished while copied: it has no place in the copy
        return
    os.chown(target, st.st_uid, st.st_gid)
    os.chmod(target, kept_mode(st.st_mode))


def _reclone(source: Path, target: Path) -> bool:
    """Replace ``target``'s contents by a clone of ``source``'s (only where :func:`reflinks` said yes).

    False leaves ``target`` empty, to be rewritten whole.
    """
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            # Emptied first: a clone whose end is not block-aligned must end at its target's end.
            os.ftruncate(dst, 0)
            return clone_contents(src, dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _rewrite_changed(source: Path, target: Path) -> int:
    written = 0
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dst = os.open(target, os.O_RDWR | os.O_NOFOLLOW)
        try:
            size = os.fstat(src).st_size
            offset = 0
            while offset < size:
                block = os.pread(src, BLOCK, offset)
                if not block:
                    break
                if os.pread(dst, len(block), offset) != block:
                    os.pwrite(dst, block, offset)
                    written += len(block)
                offset += len(block)
            os.ftruncate(dst, offset)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return written


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
