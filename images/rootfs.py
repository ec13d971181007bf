"""A root filesystem described in memory, filled from the host, written as a deterministic layer tar.

Host files are copied at their real merged-/usr paths (``/lib`` is a symlink to ``usr/lib`` in every
image, as on the host), and every symlink on the way is kept, so the dynamic loader finds libraries
exactly where ``ldd`` saw them.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


class BuildError(Exception):
    """An image cannot be built on this host (a binary or library is missing)."""


@dataclass(frozen=True)
class Entry:
    """One path of the rootfs: a directory, a regular file (from the host or inline) or a symlink."""

    kind: str
    mode: int
    uid: int = 0
    gid: int = 0
    source: str = ""
    """Host path a regular file is read from; empty when ``data`` holds the content."""
    data: bytes = b""
    target: str = ""


class Rootfs:
    """Paths of one layer plus the host files they were read from (the build cache's inputs)."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.inputs: set[str] = set()

    # --- entries given directly ------------------------------------------------------------

    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self.entries[_rel(path)] = Entry("dir", mode, uid, gid)

    def file(self, path: str, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.entries[_rel(path)] = Entry("file", mode, uid, gid, data=raw)

    def symlink(self, path: str, target: str) -> None:
        self.entries[_rel(path)] = Entry("symlink", 0o777, target=target)

    # --- entries copied from the host ------------------------------------------------------

    def host_path(self, path: str, dest: str | None = None, mode: int | None = None) -> None:
        """Copy a host file, keeping every symlink between ``path`` and the real file."""
        if dest is not None:
            real = os.path.realpath(path)
            self._host_regular(real, dest, mode)
            return
        seen: set[str] = set()
        current = path
        while True:
            where = os.path.join(os.path.realpath(os.path.dirname(current)), os.path.basename(current))
            if where in seen:
                raise BuildError(f"symlink loop at {path}")
            seen.add(where)
            if os.path.islink(where):
                target = os.readlink(where)
                self.inputs.add(where)
                self.entries[_rel(where)] = Entry("symlink", 0o777, target=target)
                current = os.path.join(os.path.dirname(where), target)
                continue
            self._host_regular(where, where, mode)
            return

    def host_tree(self, root: str, skip: Callable[[str], bool] = lambda _p: False) -> None:
        """Copy a host directory tree (files, directories, symlinks as they are)."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not skip(os.path.join(dirpath, d)))
            self.entries[_rel(dirpath)] = Entry("dir", 0o755)
            for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                full = os.path.join(dirpath, name)
                if skip(full):
                    continue
                if os.path.islink(full):
                    self.inputs.add(full)
                    self.entries[_rel(full)] = Entry("symlink", 0o777, target=os.readlink(full))
                else:
                    self._host_regular(full, full, None)

    def binaries_with_libs(self, paths: Iterable[str]) -> None:
        """Copy executables or shared objects and every library ``ldd`` says they load."""
        wanted = sorted(set(paths))
        for path in wanted:
            if not os.path.exists(path):
                raise BuildError(f"{path} is missing on this host (see scripts/install-system.sh)")
            self.host_path(path)
        for lib in _ldd(wanted):
            self.host_path(lib)

    def _host_regular(self, source: str, dest: str, mode: int | None) -> None:
        info = os.stat(source)
        if not stat.S_ISREG(info.st_mode):
            raise BuildError(f"{source} is not a regular file")
        self.inputs.add(source)
        self.entries[_rel(dest)] = Entry(
            "file", mode if mode is not None else stat.S_IMODE(info.st_mode), source=source
        )

    # --- output ----------------------------------------------------------------------------

    def write_tar(self, out: BinaryIO) -> None:
        """Write the layer: sorted paths, parents first, mtime 0, no user or group names."""
        entries = dict(self.entries)
        for path in list(entries):
            parent = os.path.dirname(path)
            while parent and parent not in entries:
                entries[parent] = Entry("dir", 0o755)
                parent = os.path.dirname(parent)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(entries, key=lambda p: p.split("/")):
                entry = entries[path]
                info = tarfile.TarInfo(path)
                info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, 0
                info.uname = info.gname = ""
                if entry.kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif entry.kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, entry.target
                    tar.addfile(info)
                elif entry.source:
                    with open(entry.source, "rb") as src:
                        info.size = os.fstat(src.fileno()).st_size
                        tar.addfile(info, src)
                else:
                    info.size = len(entry.data)
                    tar.addfile(info, io.BytesIO(entry.data))


def _rel(path: str) -> str:
    rel = os.path.normpath(path).lstrip("/")
    if not rel or rel == "." or rel.startswith(".."):
        raise BuildError(f"bad rootfs path {path!r}")
    return rel


def _ldd(paths: list[str]) -> list[str]:
    """Libraries the dynamic loader resolves for ``paths`` (one ``ldd`` run for all of them)."""
    dynamic = [p for p in paths if _is_elf(p)]
    if not dynamic:
        return []
    proc = subprocess.run(["ldd", *dynamic], capture_output=True, text=True, check=False)
    libs: set[str] = set()
    for line in proc.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            raise BuildError(f"a library is missing on this host: {line}")
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (", 1)[0].strip()
            if target.startswith("/"):
                libs.add(target)
        elif line.startswith("/") and " (" in line:
            libs.add(line.split(" (", 1)[0])
    return sorted(libs)


def _is_elf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def host_stats(paths: Iterable[str]) -> dict[str, list[int]]:
    """Size and mtime of each input path (lstat: a changed symlink counts too)."""
    result: dict[str, list[int]] = {}
    for path in sorted(paths):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            result[path] = [-1, -1]
            continue
        result[path] = [info.st_size, info.st_mtime_ns]
    return result


def read_text(path: Path) -> str:
    """Contents of a file shipped with the recipes (images/files)."""
    return path.read_text()
