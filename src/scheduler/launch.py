"""What the daemon does before it loads the rest: take the data dir, check the port, launch containerd.

``cli`` calls :func:`begin` before it imports :mod:`scheduler.daemon`, so that a managed containerd
starts (a few hundred milliseconds) while the daemon's modules load; ``daemon.build`` calls it
itself when nobody did. Only light modules are imported here.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.config import Settings
from scheduler.runtime.containerd.managed import ManagedContainerd
from scheduler.startup import DataDirLock, check_listen_free


@dataclass(frozen=True)
class Begun:
    """The data dir's lock, held, and the managed containerd launched (None with a configured socket)."""

    lock: DataDirLock
    containerd: ManagedContainerd | None


def begin(settings: Settings) -> Begun:
    """Take the data dir, check that the listen port is free, then launch the managed containerd.

    In this order: a second daemon on this data dir would adopt the first one's containerd and
    fight it over every container, and a daemon that cannot serve should touch nothing. The
    caller releases the lock and stops containerd (``daemon.build`` does) whatever happens next.

    Raises:
        DataDirInUse: another daemon serves ``data_dir``.
        AddressInUse: something listens on ``server.listen``.
        Unavailable: the containerd binary cannot be run.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(settings.data_dir)
    lock.acquire()
    try:
        if settings.server.listen:
            check_listen_free(settings.server.listen)
        if settings.containerd.socket:
            return Begun(lock, None)
        managed = ManagedContainerd(settings.data_dir / "containerd", binary=settings.containerd.binary)
        managed.launch()
    except BaseException:
        lock.release()
        raise
    return Begun(lock, managed)
