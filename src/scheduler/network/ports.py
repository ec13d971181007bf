"""Host ports: who holds which, probing the host, and holding the port while it is published.

A published port is forwarded by DNAT, which no other program sees; so while it is ours the
scheduler keeps a bound (never listening) socket on it. Another program's ``bind`` then fails
instead of silently losing its traffic to our rule, and another scheduler instance's probe
skips the port.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable

from scheduler.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from scheduler.network.state import HostPortRecord


def check_protocol(protocol: str) -> str:
    """Validate a transport protocol name."""
    if protocol not in ("tcp", "udp"):
        raise InvalidArgument(f"protocol {protocol!r} must be 'tcp' or 'udp'", field="protocol")
    return protocol


def check_host_ip(host_ip: str) -> str:
    """Validate a host address for a published port (IPv4, or 0.0.0.0 for all)."""
    try:
        addr = ipaddress.ip_address(host_ip)
    except ValueError as err:
        raise InvalidArgument(f"host_ip {host_ip!r} is not an IP address", field="host_ip") from err
    if not isinstance(addr, ipaddress.IPv4Address):
        raise InvalidArgument(f"host_ip {host_ip!r} must be IPv4", field="host_ip")
    return host_ip


def check_port(port: int, field: str) -> int:
    """Validate a port number."""
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidArgument(f"{field} {port!r} must be from 1 to 65535", field=field)
    return port


def _overlaps(a: str, b: str) -> bool:
    return a == b or a == "0.0.0.0" or b == "0.0.0.0"


def holder(records: Iterable[HostPortRecord], host_ip: str, port: int, protocol: str) -> HostPortRecord | None:
    """Our allocation that conflicts with ``host_ip:port/protocol``, if any."""
    for rec in records:
        if rec.host_port == port and rec.protocol == protocol and _overlaps(rec.host_ip, host_ip):
            return rec
    return None


def bind(host_ip: str, port: int, protocol: str) -> socket.socket:
    """Bind (without listening) to prove the port free and keep it so.

    Raises:
        FailedPrecondition: another program holds the port, naming it.
    """
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    try:
        try:
            sock.bind((host_ip, port))
        except OSError as err:
            if err.errno != errno.EADDRINUSE or protocol != "tcp":
                raise
            _bind_past_time_wait(sock, host_ip, port)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise FailedPrecondition(
                f"host port {host_ip}:{port}/{protocol} is in use by another program on the host",
                field="host_port",
            ) from err
        if err.errno == errno.EADDRNOTAVAIL:
            raise InvalidArgument(f"host_ip {host_ip} is not an address of this host", field="host_ip") from err
        raise FailedPrecondition(
            f"cannot bind host port {host_ip}:{port}/{protocol}: {err}", field="host_port"
        ) from err
    return sock


def _bind_past_time_wait(sock: socket.socket, host_ip: str, port: int) -> None:
    """Bind once more, past the TIME_WAIT remnants of connections the wake gate served.

    The gate's listening socket allows address reuse (see ``wake.py``), so the connections it
    accepted leave TIME_WAIT entries that allow it too, for a minute after they close. A bind
    with SO_REUSEADDR gets past those, and past nothing that listens or that refuses reuse (such
    as another holder's socket); reuse is then switched off again, so that this socket goes on
    refusing everyone else's bind.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host_ip, port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)


class PortHolder:
    """The sockets that keep our published ports bound, keyed like :class:`HostPortRecord`."""

    def __init__(self) -> None:
        self._sockets: dict[str, socket.socket] = {}

    def __len__(self) -> int:
        return len(self._sockets)

    def claim(
        self,
        records: Iterable[HostPortRecord],
        env: str,
        service: str,
        host_ip: str,
        port: int,
        protocol: str,
        port_range: tuple[int, int],
    ) -> int:
        """Take ``port`` (or, if 0, the first free one of ``port_range``) and hold it; returns it.

        Raises:
            AlreadyExists: the port is published by one of our services (named).
            FailedPrecondition: another program holds it, or the range is exhausted.
        """
        records = list(records)
        if port:
            rec = holder(records, host_ip, port, protocol)
            if rec is not None:
                raise AlreadyExists(
                    f"host port {host_ip}:{port}/{protocol} is already published by service "
                    f"{rec.service!r} of environment {rec.env!r}",
                    field="host_port",
                    env=rec.env,
                    service=rec.service,
                )
            self._sockets[f"{protocol}/{host_ip}/{port}"] = bind(host_ip, port, protocol)
            return port
        low, high = port_range
        for candidate in range(low, high + 1):
            if holder(records, host_ip, candidate, protocol) is not None:
                continue
            try:
                sock = bind(host_ip, candidate, protocol)
            except FailedPrecondition:
                continue
            self._sockets[f"{protocol}/{host_ip}/{candidate}"] = sock
            return candidate
        raise FailedPrecondition(
            f"network.port_range {low}-{high} has no free {protocol} port left on {host_ip} "
            f"for service {service!r} of environment {env!r}",
            field="network.port_range",
        )

    def held(self, key: str) -> socket.socket | None:
        """The socket held for one allocation, if any."""
        return self._sockets.get(key)

    def rehold(self, rec: HostPortRecord) -> bool:
        """Bind an allocation again after a restart; False when someone took it meanwhile."""
        if rec.key in self._sockets:
            return True
        try:
            self._sockets[rec.key] = bind(rec.host_ip, rec.host_port, rec.protocol)
        except (FailedPrecondition, InvalidArgument):
            return False
        return True

    def release(self, key: str) -> None:
        """Close the socket of one allocation (unknown keys are fine)."""
        sock = self._sockets.pop(key, None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        """Close every held socket."""
        for key in list(self._sockets):
            self.release(key)
