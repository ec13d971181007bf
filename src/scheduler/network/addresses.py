"""The address plan: subnets carved from the pool, VIP blocks, and the host routes to avoid.

Pure functions over :mod:`ipaddress`, plus a reader of ``/proc/net/route``; nothing here
touches the state file or the kernel's configuration.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from scheduler.errors import FailedPrecondition, InvalidArgument

IPv4Net = ipaddress.IPv4Network


@dataclass(frozen=True)
class HostRoute:
    """One IPv4 route of the host's main table."""

    network: IPv4Net
    device: str

    def __str__(self) -> str:
        return f"{self.network} dev {self.device}"


def read_host_routes(path: Path = Path("/proc/net/route"), skip_prefix: str = "") -> list[HostRoute]:
    """IPv4 routes of the host, default route included (callers decide what to ignore).

    ``skip_prefix``: leave out routes of devices named so (our own bridges, one route each).
    """
    routes: list[HostRoute] = []
    lines = path.read_text().splitlines()
    for line in lines[1:]:
        fields = line.split()
        if len(fields) < 8 or (skip_prefix and fields[0].startswith(skip_prefix)):
            continue
        device, dest_hex, mask_hex = fields[0], fields[1], fields[7]
        # /proc/net/route prints addresses as host-endian (little-endian here) 32-bit hex. Built
        # from integers, not text: a host with hundreds of bridges has as many routes, read at
        # every new environment.
        dest = socket.ntohl(int(dest_hex, 16))
        mask = socket.ntohl(int(mask_hex, 16))
        prefix = bin(mask).count("1")
        routes.append(HostRoute(ipaddress.IPv4Network((dest, prefix), strict=False), device))
    return routes


def parse_pool(pool: str, subnet_prefix: int) -> IPv4Net:
    """Validate the pool: an IPv4 network that holds at least one subnet of ``subnet_prefix``."""
    try:
        net = ipaddress.ip_network(pool)
    except ValueError as err:
        raise InvalidArgument(f"network.pool {pool!r} is not a network: {err}", field="network.pool") from err
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidArgument(f"network.pool {pool!r} must be IPv4", field="network.pool")
    if not net.prefixlen <= subnet_prefix <= 28:
        raise InvalidArgument(
            f"network.subnet_prefix /{subnet_prefix} must be between the pool's /{net.prefixlen} and /28",
            field="network.subnet_prefix",
        )
    return net


def parse_subnet(subnet: str, field: str = "subnet") -> IPv4Net:
    """Validate a requested environment subnet (IPv4, /16 to /28)."""
    try:
        net = ipaddress.ip_network(subnet)
    except ValueError as err:
        raise InvalidArgument(f"{field} {subnet!r} is not a network: {err}", field=field) from err
    if not isinstance(net, ipaddress.IPv4Network) or not 16 <= net.prefixlen <= 28:
        raise InvalidArgument(f"{field} {subnet!r} must be an IPv4 network from /16 to /28", field=field)
    return net


def conflicting_routes(
    net: IPv4Net, routes: Iterable[HostRoute], ignore_devices: Iterable[str] = ()
) -> list[HostRoute]:
    """Routes other than the default route that overlap ``net``, except those on ``ignore_devices``."""
    ignored = set(ignore_devices)
    return [r for r in routes if r.network.prefixlen > 0 and r.device not in ignored and r.network.overlaps(net)]


def check_pool_against_routes(pool: IPv4Net, routes: Iterable[HostRoute], own_prefix: str) -> None:
    """Refuse a pool that overlaps a host route not made by this instance."""
    bad = [r for r in conflicting_routes(pool, routes) if not r.device.startswith(own_prefix)]
    if bad:
        raise InvalidArgument(
            f"network.pool {pool} overlaps host route {bad[0]}: pick a pool no host route covers",
            field="network.pool",
        )


def carve_subnet(
    pool: IPv4Net, prefix: int, taken: Iterable[IPv4Net], routes: Iterable[HostRoute], own_prefix: str
) -> IPv4Net:
    """The first subnet of the pool that overlaps neither a taken subnet nor a foreign route.

    Called for every new environment, with every other one taken: a network no wider than a
    candidate blocks exactly the candidate containing it (a set lookup); only the few wider ones
    are compared with each candidate, so a host with hundreds of environments stays linear.
    """
    taken_list = list(taken)
    foreign = [r.network for r in routes if r.network.prefixlen > 0 and not r.device.startswith(own_prefix)]
    # Candidates are numbered by their network address shifted right: integers, not IPv4Network
    # objects, since hundreds of environments at once each scan past every taken one.
    shift = 32 - prefix
    blocked: set[int] = set()
    wide: list[IPv4Net] = []
    for net in (*taken_list, *foreign):
        if net.prefixlen >= prefix:
            blocked.add(int(net.network_address) >> shift)
        else:
            wide.append(net)
    first = int(pool.network_address) >> shift
    for index in range(first, first + (1 << (prefix - pool.prefixlen))):
        if index in blocked:
            continue
        candidate = ipaddress.IPv4Network((index << shift, prefix))
        if any(candidate.overlaps(w) for w in wide):
            continue
        return candidate
    raise FailedPrecondition(
        f"network.pool {pool} has no free /{prefix} subnet left ({len(taken_list)} in use)",
        field="network.pool",
    )


@dataclass(frozen=True)
class SubnetPlan:
    """How one environment subnet is split: gateway, container range, VIP block."""

    subnet: IPv4Net
    gateway: ipaddress.IPv4Address
    range_start: ipaddress.IPv4Address
    range_end: ipaddress.IPv4Address
    vip_block: IPv4Net

    @classmethod
    def of(cls, subnet: IPv4Net) -> SubnetPlan:
        """Gateway is the first host; the top quarter (a CIDR) is kept for VIPs."""
        return _plan(subnet)

    @classmethod
    def _compute(cls, subnet: IPv4Net) -> SubnetPlan:
        vip_block = list(subnet.subnets(prefixlen_diff=2))[-1]
        return cls(
            subnet=subnet,
            gateway=subnet.network_address + 1,
            range_start=subnet.network_address + 2,
            range_end=vip_block.network_address - 1,
            vip_block=vip_block,
        )

    def vip_candidates(self) -> Iterable[ipaddress.IPv4Address]:
        """VIPs from the top down, the broadcast address excluded."""
        top = int(self.vip_block.broadcast_address) - 1
        bottom = int(self.vip_block.network_address)
        for value in range(top, bottom - 1, -1):
            yield ipaddress.IPv4Address(value)

    def allocate_vip(self, used: Iterable[str]) -> str:
        """The highest free VIP of the block."""
        used_set = set(used)
        for candidate in self.vip_candidates():
            if str(candidate) not in used_set:
                return str(candidate)
        raise FailedPrecondition(
            f"subnet {self.subnet} has no free service address left in {self.vip_block}", field="service"
        )

    def is_container_ip(self, ip: str) -> bool:
        """Whether ``ip`` is in the range IPAM hands out."""
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError:
            return False
        return self.range_start <= addr <= self.range_end


@functools.lru_cache(maxsize=4096)
def network(text: str) -> IPv4Net:
    """A stored subnet (``"10.88.3.0/24"``) as a network: records keep text, rule syncs parse every one."""
    return ipaddress.IPv4Network(text)


@functools.lru_cache(maxsize=4096)
def _plan(subnet: IPv4Net) -> SubnetPlan:
    """Plans are asked for every environment at every rule sync: computed once per subnet."""
    return SubnetPlan._compute(subnet)
