"""Fixtures for network tests: private CniNetwork instances and sockets inside namespaces.

A "container" here is a network namespace plus sockets opened inside it: a dedicated thread
enters the namespace (setns), creates the socket and returns; the socket stays bound to that
namespace whatever thread uses it afterwards. No containerd is involved.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import os
import random
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from scheduler.network.addresses import read_host_routes
from scheduler.network.cni import CniNetwork, CniSettings

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def require_root() -> None:
    """Skip without root, except under CI where missing prerequisites must fail."""
    problems = []
    if os.geteuid() != 0:
        problems.append("root")
    if not Path("/usr/lib/cni/bridge").exists():
        problems.append("CNI plugins in /usr/lib/cni")
    if problems:
        message = "network integration tests need " + " and ".join(problems)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def free_pool() -> str:
    """A random /16 in 10.0.0.0/8 that no host route touches, so parallel sessions rarely meet."""
    routes = [r.network for r in read_host_routes() if r.network.prefixlen > 0]
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{random.randint(64, 254)}.0.0/16")
        if not any(net.overlaps(r) for r in routes):
            return str(net)
    raise RuntimeError("no free /16 in 10.64.0.0/10")


def random_port_range(width: int = 200) -> tuple[int, int]:
    """A random block of host ports below the ephemeral range."""
    low = random.randrange(10000, 19000)
    return low, low + width - 1


def socket_in(
    netns_path: str, kind: int = socket.SOCK_STREAM, family: int = socket.AF_INET, proto: int = 0
) -> socket.socket:
    """A socket created inside the network namespace pinned at ``netns_path``."""
    box: list[socket.socket | BaseException] = []

    def run() -> None:
        try:
            target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(target, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns_path}")
                box.append(socket.socket(family, kind, proto))
            finally:
                os.close(target)
        except BaseException as err:
            box.append(err)
        # The thread ends here, still in the foreign namespace: it is never reused.

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


class Server:
    """A TCP server in a namespace answering each connection with its name, like a replica."""

    def __init__(self, netns_path: str, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self.accepted = 0
        self._sock = socket_in(netns_path)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("0.0.0.0", port))
        self._sock.listen(128)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            with conn:
                try:
                    conn.sendall(self.name.encode())
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


class UdpServer:
    """A UDP server in a namespace answering every datagram with its name."""

    def __init__(self, netns_path: str, name: str, port: int) -> None:
        self.name = name
        self._sock = socket_in(netns_path, socket.SOCK_DGRAM)
        self._sock.bind(("0.0.0.0", port))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                _, peer = self._sock.recvfrom(256)
            except TimeoutError:
                continue
            except OSError:
                return
            self._sock.sendto(self.name.encode(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def connect(netns_path: str | None, host: str, port: int, timeout: float = 2.0) -> str:
    """Connect from inside ``netns_path`` (or the host when None) and return what the server says."""
    sock = socket_in(netns_path) if netns_path else socket.socket()
    with sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        chunks = []
        while True:
            data = sock.recv(256)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode()


def can_connect(netns_path: str | None, host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection succeeds and the server answers."""
    try:
        return bool(connect(netns_path, host, port, timeout))
    except OSError:
        return False


def resolve(hosts_path: str, name: str) -> str:
    """Look ``name`` up in a hosts file, as the C library would."""
    for line in Path(hosts_path).read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and name in fields[1:]:
            return fields[0]
    raise LookupError(f"{name} not in {hosts_path}")


def unique(prefix: str) -> str:
    """A unique name for environments and containers."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def make_network(tmp_path: Path) -> AsyncIterator[Callable[..., CniNetwork]]:
    """Factory of started-later CniNetwork instances with private prefix, pool, ports and state.

    Teardown removes everything each instance made and checks that nothing of it is left.
    """
    require_root()
    made: list[CniNetwork] = []

    def factory(**overrides: object) -> CniNetwork:
        settings = CniSettings(
            pool=str(overrides.pop("pool", free_pool())),
            subnet_prefix=int(overrides.pop("subnet_prefix", 24)),  # type: ignore[call-overload]
            port_range=overrides.pop("port_range", random_port_range()),  # type: ignore[arg-type]
        )
        instance = str(overrides.pop("instance", "t" + uuid.uuid4().hex[:5]))
        state_dir = Path(str(overrides.pop("state_dir", tmp_path / instance)))
        net = CniNetwork(state_dir, settings, instance, **overrides)  # type: ignore[arg-type]
        made.append(net)
        return net

    yield factory
    for net in made:
        await net.teardown()
        left = {k: v for k, v in (await net.resources()).items() if v}
        assert left == {}, f"instance {net.names.instance} leaked {left}"
