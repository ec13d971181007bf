"""Shims that outlived their task: found in /proc, ended by PID at start-up.

A task create cut short (the daemon killed while containerd starts the shim) can leave
containerd-shim-runc-v2 running, with its log writer and sometimes the container's process,
while containerd itself has no task of that id: nothing ever stops it, and containerd's own
accounting cannot show it. At start-up, before anything of ours creates a task, every shim of
our namespace serving our containerd whose task containerd does not know is such an orphan.
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
            bundle = Path(os.readlink(entry / "cwd"))
        found.append(Shim(int(entry.name), options["-id"], bundle))
    return found


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
