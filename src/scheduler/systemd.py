"""The sd_notify protocol, spoken directly: datagrams to the socket systemd names in ``NOTIFY_SOCKET``.

With ``Type=notify`` systemd waits for ``READY=1`` before it calls the unit started, shows
``STATUS=`` lines in ``systemctl status``, expects ``WATCHDOG=1`` at least every ``WATCHDOG_USEC``
and learns of a shutdown from ``STOPPING=1``. Without ``NOTIFY_SOCKET`` (not started by systemd)
every call does nothing. The protocol is one datagram per message on a unix socket, a path or
(leading ``@``) an abstract name; see sd_notify(3).
"""

from __future__ import annotations

import os
import socket
import time

NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
"""What systemd hands a ``Type=notify`` service; the notifier takes them out of the environment."""
SERVICE_MANAGER_VARIABLES = (*NOTIFY_VARIABLES, "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
"""Those and socket activation's: meant for the daemon itself, never for a child it starts."""


class Notifier:
    """Sends state changes to systemd, if it asked for them."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        """Read (and, from the process environment, remove) ``NOTIFY_SOCKET`` and ``WATCHDOG_*``.

        They are removed so that children (the managed containerd speaks sd_notify too) do not
        report to systemd on the daemon's behalf, as sd_notify's ``unset_environment`` does.
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_seconds = _watchdog_seconds(env)
        if environ is None:
            for name in NOTIFY_VARIABLES:
                os.environ.pop(name, None)

    @property
    def enabled(self) -> bool:
        """Whether systemd listens."""
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` lines as one message; False if nobody listens or it could not be sent."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        """Tell systemd the daemon serves."""
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> bool:
        """Tell systemd a reload started (it ends with :meth:`ready`)."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> bool:
        """Tell systemd the daemon is shutting down."""
        return self.send("STOPPING=1", "STATUS=shutting down")

    def watchdog(self) -> bool:
        """Tell systemd the daemon is alive (the event loop turns)."""
        return self.send("WATCHDOG=1")


def _watchdog_seconds(env: dict[str, str] | os._Environ[str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6
