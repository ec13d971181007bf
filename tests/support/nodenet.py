"""A test bridge on the host and one network namespace per fleet node, linked to it by a veth pair.

The bridge's subnet is a free /24 below the test daemons' pools; its host side has the first
address (etcd listens there, so that the nodes reach it); node ``i`` gets ``.10+i`` on its
namespace's end of the veth, with ``lo`` up and a default route through the host. Names start
with the fleet's own prefix (``f`` and four hex digits), so that what a killed run left is found
by it: the bridge ``PREFIXbr``, the host ends ``PREFIXh0``..., the namespaces and their ends
``PREFIXn0``... ``remove`` ends the processes left in a namespace (by PID), deletes the
namespaces, veths and bridge, and is safe to call on half-made or already-removed pieces.
"""

from __future__ import annotations

import ipaddress
import random
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from scheduler.network.addresses import read_host_routes
from tests.support.processes import descendants, end

NETNS_DIR = Path("/run/netns")
MADE: list[NodeNetwork] = []
"""Every NodeNetwork with a bridge not yet removed: what the end of a session removes if a fleet's
own clean-up was cut short."""


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.1.0.0-10.63.255.0 that no host route touches: below where test daemons pick
    their pools (10.64 and up, ``free_pool``), so that a bridge made here never makes another
    session's daemon refuse its pool as overlapping a host route."""
    routes = [r.network for r in read_host_routes() if r.network.prefixlen > 0]
    for _ in range(500):
        net = ipaddress.IPv4Network(f"10.{random.randint(1, 63)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(route) for route in routes):
            return net
    raise AssertionError("no free /24 in 10.1.0.0-10.63.255.0 for a test bridge")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` (iproute2), raising with its error output when ``check`` and it fails."""
    run = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and run.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {run.stderr.strip()}")
    return run


@dataclass
class NodeNetwork:
    """The bridge and every node's namespace; ``node_ip(i)`` is node ``i``'s address."""

    prefix: str = field(default_factory=lambda: "f" + secrets.token_hex(2))
    subnet: ipaddress.IPv4Network = field(default_factory=lambda: free_subnet())
    namespaces: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def host_ip(self) -> str:
        """The host's address on the bridge: what nodes reach the host's services (etcd) on."""
        return str(self.subnet[1])

    def node_ip(self, index: int) -> str:
        return str(self.subnet[10 + index])

    def netns(self, index: int) -> str:
        return f"{self.prefix}n{index}"

    def netns_path(self, index: int) -> str:
        return str(NETNS_DIR / self.netns(index))

    def host_link(self, index: int) -> str:
        return f"{self.prefix}h{index}"

    def create_bridge(self) -> None:
        MADE.append(self)
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.host_ip}/{self.subnet.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add_node(self, index: int) -> str:
        """Make node ``index``'s namespace, linked to the bridge; returns the namespace's name."""
        name, inner = self.netns(index), self.netns(index)
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("link", "add", self.host_link(index), "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", name)
        ip("link", "set", self.host_link(index), "master", self.bridge, "up")
        ip("-n", name, "link", "set", "lo", "up")
        ip("-n", name, "addr", "add", f"{self.node_ip(index)}/{self.subnet.prefixlen}", "dev", inner)
        ip("-n", name, "link", "set", inner, "up")
        ip("-n", name, "route", "add", "default", "via", self.host_ip)
        return name

    def link(self, index: int, up: bool) -> None:
        """Take node ``index``'s link to the bridge down (a pulled cable) or up again."""
        ip("link", "set", self.host_link(index), "up" if up else "down")

    def pids(self, index: int) -> list[int]:
        """Processes running in node ``index``'s namespace."""
        run = ip("netns", "pids", self.netns(index), check=False)
        return [int(p) for p in run.stdout.split()] if run.returncode == 0 else []

    def remove(self) -> None:
        """End what still runs in the namespaces, then delete them, the veths and the bridge."""
        for name in list(self.namespaces):
            index = int(name.removeprefix(f"{self.prefix}n"))
            victims = set(self.pids(index))
            for pid in list(victims):
                victims |= set(descendants(pid))
            end(victims)
            ip("netns", "del", name, check=False)
            ip("link", "del", self.host_link(index), check=False)
            self.namespaces.remove(name)
        ip("link", "del", self.bridge, check=False)
        if self in MADE:
            MADE.remove(self)

    def leftovers(self) -> list[str]:
        """Links and namespaces named with the prefix that still exist (for a test's final check)."""
        links = [line.split()[0].split("@")[0] for line in ip("-br", "link").stdout.splitlines() if line.strip()]
        names = [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]
        return [n for n in links + names if n.startswith(self.prefix)]
