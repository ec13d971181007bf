"""Who owns a loopback TCP client's socket: one sock_diag netlink lookup, as identd answers.

Plaintext TCP carries no credentials, so for a caller on loopback the daemon asks the kernel for
the uid owning the client's end of the connection.
"""

from __future__ import annotations

import atexit
import functools
import ipaddress
import itertools
import socket
import struct
import threading
from dataclasses import dataclass

from scheduler import log

_log = log.get("peers")

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLMSG_ERROR = 2
_TCP_ESTABLISHED = 1
_NOCOOKIE = 0xFFFFFFFF
_NLMSGHDR = struct.Struct("=IHHII")
"""struct nlmsghdr: length, type, flags, sequence, port id."""
_DIAG_REQUEST = struct.Struct("=BBBBIHH16s16sIII")
"""struct inet_diag_req_v2 with its inet_diag_sockid (ports in network order, addresses as bytes)."""
_DIAG_MESSAGE = struct.Struct("=BBBBHH16s16sIIIIIIII")
"""struct inet_diag_msg: family, state, timer, retrans, sockid, expires, queues, uid, inode."""


def loopback_owner(peer: str, server_port: int) -> int | None:
    """The uid owning the client end of a loopback TCP connection, or None if it is not one.

    ``peer`` is gRPC's form (``ipv4:127.0.0.1:41234``, ``ipv6:[::1]:41234``). The kernel is asked
    (``NETLINK_SOCK_DIAG``, one exact lookup) for the socket whose local end is the peer's address
    and port and whose remote port is ``server_port``, in this network namespace: a TCP 4-tuple
    names at most one live connection, so no other process's socket can answer. Only an
    established, full socket counts (a time-wait entry reports uid 0). A loopback client reaches
    a loopback server from its own address in the usual case; the rare client that reached
    another loopback address is found by a dump the kernel filters on both ports. An IPv4 client
    may own a dual-stack socket, which the kernel finds by its v4 addresses.

    The kernel is asked on every call: ports are reused, so an owner is never remembered per
    address; only what the peer string says (its address in the forms the kernel reports) is.
    """
    client = _loopback_peer(peer)
    if client is None or not 0 < server_port < 65536:
        return None
    with _DIAG_LOCK:
        global _diag
        if _diag is None:
            _diag = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
            # Never waits: the kernel answers a sock_diag request within the sendto that asks
            # (its netlink input runs in the sender's context), and makes each further part of
            # a dump in the recv that takes the one before. A timeout instead would cost a
            # poll() before every sendto and recv, doubling the syscalls of each call.
            _diag.setblocking(False)
        try:
            uid = _diag_owner(_diag, client.family, client, server_port, exact=True)
            families = [client.family] if client.family == socket.AF_INET6 else [client.family, socket.AF_INET6]
            for dump_family in families if uid is None else ():
                uid = _diag_owner(_diag, dump_family, client, server_port, exact=False)
                if uid is not None:
                    break
            return uid
        except OSError as err:
            _log.warning("peer.diag_failed", error=str(err))
            _close_diag()
            return None


@dataclass(frozen=True)
class _Client:
    """A loopback peer's address and port, in the forms sock_diag takes and reports."""

    family: int
    port: int
    packed: bytes
    """The address as ``inet_diag_sockid`` holds it (16 bytes, an IPv4 one padded)."""
    packed_v6: bytes
    """The address as a dual-stack socket reports it (IPv4 as v4-mapped)."""


@functools.lru_cache(maxsize=1024)
def _loopback_peer(peer: str) -> _Client | None:
    """What a gRPC peer string says, if it names a loopback TCP client (a pure function of the string)."""
    parsed = _parse_peer(peer)
    if parsed is None:
        return None
    address, port = parsed
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_loopback:
        return None
    family = socket.AF_INET if isinstance(address, ipaddress.IPv4Address) else socket.AF_INET6
    return _Client(family, port, address.packed.ljust(16, b"\0"), _as_v6(address).packed)


_diag: socket.socket | None = None
"""The netlink socket, kept open: opening one per call cost more than the question."""
_DIAG_LOCK = threading.Lock()
_BUFFER = bytearray(65536)
"""Where the kernel's answers are read (under ``_DIAG_LOCK``), instead of a new 64 KiB buffer per read."""
_SEQUENCE = itertools.count(1)


@atexit.register
def _close_diag() -> None:
    global _diag
    if _diag is not None:
        _diag.close()
        _diag = None


def _diag_owner(diag: socket.socket, family: int, client: _Client, server_port: int, *, exact: bool) -> int | None:
    """Ask for the socket ``client -> server_port``; its owner's uid if one.

    ``exact``: the one socket from the client's address to the same address (the usual case).
    Otherwise a dump of every socket with both ports (the kernel filters on ports), the client
    address matched here.
    """
    client_bytes = client.packed_v6 if family == socket.AF_INET6 else client.packed
    request = _request(family, client.port, client_bytes, server_port, exact)
    flags = _NLM_F_REQUEST | (0 if exact else 0x300)  # NLM_F_DUMP
    # The socket is reused: replies to an earlier question (the rest of a dump) carry its sequence.
    sequence = next(_SEQUENCE) & 0xFFFFFFFF
    diag.sendto(
        _NLMSGHDR.pack(_NLMSGHDR.size + len(request), _SOCK_DIAG_BY_FAMILY, flags, sequence, 0) + request, (0, 0)
    )
    want = (client.packed, client.packed_v6)
    data = _BUFFER
    while True:
        size = diag.recv_into(data)
        offset = 0
        answered = False
        while offset + _NLMSGHDR.size <= size:
            length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size or offset + length > size:  # never read past what the kernel wrote
                return None
            body = offset + _NLMSGHDR.size
            offset += (length + 3) & ~3
            if seq != sequence:
                continue
            answered = True
            if kind == _NLMSG_ERROR or kind == 3:  # an error (ENOENT: no such socket) or NLMSG_DONE
                return None
            if kind != _SOCK_DIAG_BY_FAMILY or length - _NLMSGHDR.size < _DIAG_MESSAGE.size:
                continue
            fields = _DIAG_MESSAGE.unpack_from(data, body)
            state, src, uid, inode = fields[1], fields[6], fields[14], fields[15]
            sport, dport = socket.ntohs(fields[4]), socket.ntohs(fields[5])
            if state == _TCP_ESTABLISHED and inode and sport == client.port and dport == server_port and src in want:
                return int(uid)
        if answered and exact:
            return None


@functools.lru_cache(maxsize=1024)
def _request(family: int, client_port: int, client_bytes: bytes, server_port: int, exact: bool) -> bytes:
    """The ``inet_diag_req_v2`` asking for ``client -> server_port`` (a pure function of its arguments)."""
    return _DIAG_REQUEST.pack(
        family,
        socket.IPPROTO_TCP,
        0,
        0,
        1 << _TCP_ESTABLISHED,
        socket.htons(client_port),
        socket.htons(server_port),
        client_bytes,
        client_bytes if exact else bytes(16),
        0,
        _NOCOOKIE,
        _NOCOOKIE,
    )


def _parse_peer(peer: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    try:
        return ipaddress.ip_address(host.strip("[]")), int(port)
    except ValueError:
        return None


def _as_v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """An address as a dual-stack socket lists it (IPv4 as v4-mapped)."""
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
