"""Shims that outlived their task: found in /proc, ended by PID at start-up.

A task create cut short (the daemon killed while containerd starts the shim) can leave
containerd-shim-runc-v2 running, with its log writer and sometimes the container's process,
while containerd itself has no task of that id: nothing ever stops it, and containerd's own
accounting cannot show it. At start-up, before anything of ours creates a task, every shim of
our namespace serving our containerd that serves no task containerd knows is such an orphan.

A shim serves a group of tasks (one environment's, see ``spec.with_shim_group``) and is named
after the first of them, which may be gone while the others run: a shim is kept when its
named task is known or when it listens on the socket a known task's bundle records.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from scheduler.runtime import logger

_PROC = Path("/proc")


@dataclass(frozen=True)
class Shim:
    """A running shim: its PID, task id and bundle (its working directory)."""

    pid: int
    task_id: str
    bundle: Path | None
    """Its first task's bundle, where it was started; the directory is gone once that task is."""


def _args(pid: int) -> list[str]:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def shims(socket: str, namespace: str) -> list[Shim]:
    """Shims started by the containerd at ``socket`` for tasks of ``namespace``."""
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        args = _args(int(entry.name))
        if not args or not Path(args[0]).name.startswith("containerd-shim"):
            continue
        options = dict(zip(args[1::2], args[2::2], strict=False))
        if options.get("-namespace") != namespace or options.get("-address") != socket or "-id" not in options:
            continue
        bundle = None
        with contextlib.suppress(OSError):
            bundle = Path(os.readlink(entry / "cwd").removesuffix(" (deleted)"))
        found.append(Shim(int(entry.name), options["-id"], bundle))
    return found


def orphans(running: list[Shim], known: set[str]) -> list[Shim]:
    """The shims of ``running`` that serve none of the ``known`` task ids."""
    unnamed = [shim for shim in running if shim.task_id not in known]
    if not unnamed:
        return []
    # Every task's bundle sits beside the others, under the one directory of the namespace.
    parents = {shim.bundle.parent for shim in running if shim.bundle is not None}
    serving = set()
    for parent in parents:
        for task_id in known:
            with contextlib.suppress(OSError, ValueError):
                serving.add((parent / task_id / "address").read_text().strip().removeprefix("unix://"))
    return [shim for shim in unnamed if not (_sockets(shim.pid) & serving)]


def _sockets(pid: int) -> set[str]:
    """Paths of the unix sockets ``pid`` holds open (a shim: the one it listens on)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(_PROC / str(pid) / "fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(_PROC / str(pid) / "fd" / fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    paths = set()
    with contextlib.suppress(OSError):
        # Num RefCount Protocol Flags Type St Inode [Path], in the process's own network namespace.
        for line in (_PROC / str(pid) / "net" / "unix").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[6] in inodes:
                paths.add(fields[7])
    return paths


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, through /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rpartition(")")[2].split()[1]), []).append(int(entry.name))
    found: list[int] = []
    pending = list(children.get(pid, []))
    while pending and len(found) < 100_000:
        child = pending.pop()
        found.append(child)
        pending += children.get(child, [])
    return found


def end(shim: Shim) -> None:
    """SIGKILL the shim and everything under it, then unmount the rootfs it mounted in its bundle.

    Under it are the task's waiting log process and maybe the container's processes; without a
    task in containerd, nothing of it can be stopped more gently. The host's shared log writer
    may have been reparented under it too: it writes for every other container, so it stays.
    """
    for pid in [*descendants(shim.pid), shim.pid]:
        if logger.is_shared_writer(_args(pid)):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if shim.bundle is not None and (shim.bundle / "rootfs").is_dir():
        subprocess.run(["umount", "-l", str(shim.bundle / "rootfs")], capture_output=True, timeout=30)
