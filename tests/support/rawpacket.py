"""Hand-made Ethernet frames sent from inside a namespace, as a container with NET_RAW could.

A socket connected to 127.0.0.1 inside a container reaches the container's own loopback; an
attacker aiming at the host's loopback writes frames instead: destination 127.0.0.1, sent to
the gateway's MAC address. These helpers do exactly that from a packet socket opened in the
container's network namespace, and watch for the host's answer.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import struct
import subprocess
import time
from pathlib import Path

from tests.support.network import socket_in

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
TCP_SYN, TCP_ACK = 0x02, 0x10


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), random.randrange(65536), 0, 64, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + payload


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, length)


def udp_packet(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    """An IPv4 UDP datagram with valid checksums."""
    header = struct.pack("!HHHH", sport, dport, 8 + len(data), 0)
    check = _checksum(_pseudo(src, dst, socket.IPPROTO_UDP, 8 + len(data)) + header + data) or 0xFFFF
    return _ipv4(src, dst, socket.IPPROTO_UDP, header[:6] + struct.pack("!H", check) + data)


def tcp_syn(src: str, dst: str, sport: int, dport: int) -> bytes:
    """An IPv4 TCP SYN with valid checksums."""
    header = struct.pack("!HHIIBBHHH", sport, dport, random.randrange(1 << 32), 0, 5 << 4, TCP_SYN, 65535, 0, 0)
    check = _checksum(_pseudo(src, dst, socket.IPPROTO_TCP, len(header)) + header)
    return _ipv4(src, dst, socket.IPPROTO_TCP, header[:16] + struct.pack("!H", check) + header[18:])


def gateway_mac(netns_path: str) -> tuple[str, str, bytes]:
    """The namespace's own address on eth0, and the address and MAC of the host interface in its subnet."""
    routes = subprocess.run(
        ["nsenter", f"--net={netns_path}", "ip", "-4", "-o", "addr", "show", "dev", "eth0"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    own = ipaddress.IPv4Interface(routes.split()[3])
    host = subprocess.run(["ip", "-4", "-o", "addr", "show"], check=True, capture_output=True, text=True).stdout
    for line in host.splitlines():
        fields = line.split()
        address = ipaddress.IPv4Interface(fields[3])
        if address.network == own.network and address.ip != own.ip:
            mac = Path(f"/sys/class/net/{fields[1]}/address").read_text().strip()
            return str(own.ip), str(address.ip), bytes.fromhex(mac.replace(":", ""))
    raise AssertionError(f"no host interface in {own.network}")


class RawSender:
    """A packet socket on eth0 of a namespace that sends IPv4 frames to the gateway's MAC."""

    def __init__(self, netns_path: str) -> None:
        self.source_ip, self.gateway_ip, self._gateway = gateway_mac(netns_path)
        self._sock = socket_in(netns_path, socket.SOCK_RAW, socket.AF_PACKET, socket.htons(ETH_P_ALL))
        self._sock.bind(("eth0", 0))
        self._mac: bytes = self._sock.getsockname()[4]

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RawSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, packet: bytes) -> None:
        self._sock.send(self._gateway + self._mac + struct.pack("!H", ETH_P_IP) + packet)

    def syn_arrives(self, dst: str, dport: int, timeout: float = 2.0, *, host_listener: bool = False) -> bool:
        """Send a SYN to ``dst:dport``; whether it got there within ``timeout``.

        Arrival shows as a SYN-ACK coming back, or, for a listener in the host's own namespace
        (``host_listener``), as a half-open connection on it even when no answer can route back.
        """
        sport = random.randrange(33000, 60000)
        self.send(tcp_syn(self.source_ip, dst, sport, dport))
        deadline = time.monotonic() + timeout
        self._sock.settimeout(0.1)
        while time.monotonic() < deadline:
            if host_listener and _half_open(dport, sport):
                return True
            try:
                frame = self._sock.recv(65535)
            except TimeoutError:
                continue
            if len(frame) < 54 or struct.unpack("!H", frame[12:14])[0] != ETH_P_IP or frame[23] != socket.IPPROTO_TCP:
                continue
            ihl = (frame[14] & 0x0F) * 4
            tcp = frame[14 + ihl :]
            src_port, dst_port = struct.unpack("!HH", tcp[:4])
            if src_port == dport and dst_port == sport and tcp[13] & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK:
                return True
        return False

    def udp_arrives(self, listener: socket.socket, dst: str, timeout: float = 2.0) -> bool:
        """Send a datagram to ``dst`` at ``listener``'s port; whether the listener receives it."""
        token = os.urandom(8)
        dport = listener.getsockname()[1]
        self.send(udp_packet(self.source_ip, dst, random.randrange(33000, 60000), dport, token))
        listener.settimeout(0.1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if listener.recv(2048) == token:
                    return True
            except TimeoutError:
                continue
        return False


def _half_open(port: int, peer_port: int) -> bool:
    out = subprocess.run(
        ["ss", "-Htn", "state", "syn-recv", f"( sport = :{port} and dport = :{peer_port} )"],
        capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip
    return bool(out.strip())
