"""Guards the daemon passes before it starts anything: one daemon per data dir, a free listen address.

Both fail with one line that says who is in the way, so that a second ``make run`` or a port
held by another program is understood at once instead of surfacing as a containerd or bind error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from scheduler.errors import FailedPrecondition, Unavailable

LOCK_NAME = "scheduler.lock"


class DataDirInUse(FailedPrecondition):
    """Another daemon holds the data dir's lock."""


class AddressInUse(Unavailable):
    """Something already listens on server.listen."""


@dataclass
class DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/scheduler.lock``, which holds the owner's PID.

    The kernel drops the lock when its holder exits, however it exits, so a stale file never
    blocks a start; the PID in it is only there to be named.
    """

    data_dir: Path
    _fd: int | None = None

    @property
    def path(self) -> Path:
        """The lock file."""
        return self.data_dir / LOCK_NAME

    def acquire(self) -> None:
        """Take the lock and write our PID.

        Raises:
            DataDirInUse: another process holds it (its PID is named when the file says).
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            who = f"the daemon with pid {holder}" if holder.isdigit() else "another daemon"
            raise DataDirInUse(
                f"data dir {self.data_dir} is already served by {who} (lock {self.path}); "
                "stop it first, or give this one another data_dir",
                field="data_dir",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays: removing it could race with the next daemon's open)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def check_listen_free(listen: str) -> None:
    """Fail if ``HOST:PORT`` cannot be bound because something listens there.

    Raises:
        AddressInUse: naming the port and, when /proc shows it, the holder's PID and command.
    """
    host, _, port_text = listen.rpartition(":")
    port = int(port_text)
    if port == 0:
        return
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                return  # Other bind problems (a foreign address...) are the server's to report.
            holder = listener_of(port)
            by = f" by {holder}" if holder else ""
            raise AddressInUse(
                f"server.listen: port {port} of {host} is already in use{by}", field="server.listen"
            ) from None


def listener_of(port: int) -> str:
    """``pid 123 (nginx: master process ...)`` for the process listening on TCP ``port``, or ``""``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rpartition(":")[2], 16) == port:
                    inodes.add(f"socket:[{inode}]")
    if not inodes:
        return ""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        raw = (proc / "cmdline").read_bytes().decode(errors="replace")
                        command = " ".join(raw.replace("\0", " ").split())
                        return f"pid {proc.name} ({command[:120]})"
    return ""
