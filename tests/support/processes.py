"""Processes and mounts a test left behind, found through /proc, so that they can be counted and removed.

A containerd shim outlives its containerd by design, and a task's log process (and the host's
shared log writer) outlives everything but its task: asking containerd what is running cannot
see them once that containerd is gone, so a test session that made them looks for them in /proc
by what their command line names (the test's containerd socket, namespace or data dir) and ends
them by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from scheduler.runtime.containerd.orphans import descendants

__all__ = [
    "alive",
    "cmdline",
    "descendants",
    "end",
    "loops_under",
    "mounts_under",
    "processes_naming",
    "shims_of",
    "unmount_under",
    "wait_loops_gone",
]


def cmdline(pid: int) -> list[str]:
    """The arguments of ``pid``; empty when it is gone or a kernel thread."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def processes_naming(*needles: str) -> dict[int, str]:
    """Every process (not this one) whose command line contains one of ``needles``, by PID."""
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        args = cmdline(int(entry.name))
        line = " ".join(args)
        if args and any(needle in line for needle in needles):
            found[int(entry.name)] = line
    return found


def shims_of(socket: str) -> dict[int, str]:
    """containerd shims serving the containerd at ``socket`` (``-address SOCKET`` on their command line)."""
    found = {}
    for pid, line in processes_naming(socket).items():
        args = cmdline(pid)
        if args and "containerd-shim" in Path(args[0]).name and socket in args:
            found[pid] = line
    return found


def end(pids: Iterable[int], timeout: float = 10) -> None:
    """SIGKILL each PID (a leftover has no state worth a graceful stop) and wait until they are gone."""
    pending = set(pids)
    for pid in pending:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = {pid for pid in pending if alive(pid)}
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent does not)."""
    return Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", "X")


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return stat.rpartition(")")[2].split()[0]


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first (the order to unmount them in)."""
    prefix = str(path).rstrip("/")
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def loops_under(path: Path) -> list[str]:
    """Loop devices whose backing file lies at or below ``path`` (a volume filesystem image)."""
    prefix = str(path).rstrip("/") + "/"
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            name = backing.read_text().strip()
        except OSError:
            continue  # detached meanwhile
        if name.startswith(prefix):
            found.append("/dev/" + backing.parts[3])
    return sorted(found)


def wait_loops_gone(path: Path, timeout: float = 30) -> list[str]:
    """Wait until no loop device is backed by a file under ``path``; return those left after ``timeout``.

    A detached loop device whose filesystem a dying container's mount namespace still holds goes
    only when that namespace does.
    """
    deadline = time.monotonic() + timeout
    while (left := loops_under(path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def unmount_under(path: Path) -> None:
    """Lazily unmount everything at or below ``path``, then detach loop devices of images under it."""
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
    for device in loops_under(path):
        subprocess.run(["losetup", "-d", device], capture_output=True, timeout=30)
