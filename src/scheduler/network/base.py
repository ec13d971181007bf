"""What the orchestrator asks of the network layer, and the values it gets back.

The orchestrator talks to :class:`NetworkManager` only; :class:`scheduler.network.cni.CniNetwork`
is the implementation that drives the standard CNI plugins and iptables on this host.
"""

from __future__ import annotations

import socket
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from scheduler import domain

Transport = Literal["tcp", "udp"]


@dataclass(frozen=True)
class ServicePort:
    """A port a service listens on inside its containers; its VIP forwards it to the backends."""

    port: int
    protocol: Transport = "tcp"


@dataclass(frozen=True)
class EnvNetworkInfo:
    """The network of one environment: one bridge, one subnet, VIPs at the top of the subnet."""

    env: str
    subnet: str
    """CIDR of the environment, e.g. ``10.88.3.0/24``."""
    bridge: str
    """Host bridge interface (at most 15 characters)."""
    gateway: str
    """Address of the bridge inside the subnet; containers route through it."""
    vip_range: str
    """CIDR at the top of the subnet that holds service VIPs; IPAM never hands these out."""


@dataclass(frozen=True)
class Attachment:
    """A container joined to its environment's network.

    The caller hands ``netns_path`` to the OCI spec (``linux.namespaces[type=network].path``) and
    bind-mounts ``hosts_path`` and ``resolv_path`` read-only on ``/etc/hosts`` and ``/etc/resolv.conf``.
    Both files are rewritten in place (same inode) when the environment's membership changes, so a
    file bind mount keeps seeing the current content.
    """

    env: str
    container_id: str
    hostname: str
    netns_path: str
    ip: str
    gateway: str
    hosts_path: str
    resolv_path: str


@dataclass(frozen=True)
class ServiceInfo:
    """A service's stable address and where it currently forwards to."""

    env: str
    service: str
    vip: str
    ports: tuple[ServicePort, ...]
    """Forwarded ports; empty means every port of every protocol is forwarded."""
    backends: tuple[str, ...]


class NetworkManager(Protocol):
    """Per-environment networks, service VIPs, published ports and their cleanup.

    Every method is idempotent where that makes sense (``ensure_*``, ``detach``, ``delete_*``), so
    a reconciler can call it again after a crash. Errors come from :mod:`scheduler.errors`:
    ``InvalidArgument`` (bad name, address or port, naming it), ``NotFound`` (unknown environment or
    service), ``AlreadyExists`` (a host port held by another service), ``FailedPrecondition`` (a host
    port held by another program, an exhausted pool), ``Internal`` (a plugin or iptables failure,
    with the tool's message).
    """

    async def start(self) -> None:
        """Load persisted allocations, check the pool against host routes, install base rules."""

    async def close(self) -> None:
        """Release in-process resources (held port sockets); leaves the kernel state in place."""

    async def ensure_environment(self, env: str, subnet: str = "") -> EnvNetworkInfo:
        """Create (or return) the environment's bridge and subnet; ``subnet`` pins a CIDR."""

    async def ensure_service(self, env: str, service: str, ports: Sequence[int | ServicePort] = ()) -> str:
        """Give a service its stable VIP (returned) and forward ``ports`` on it (all if empty)."""

    async def reserve(self, env: str, container_id: str, hostname: str) -> Attachment | None:
        """Create the container's netns and files before the slow part of :meth:`attach` (no ``ip`` yet).

        A task can be set up in them while attach runs; None when attach must do it all. Needs no
        bridge yet; :meth:`detach` removes a reservation that attach never took up.
        """

    async def attach(self, env: str, container_id: str, hostname: str, aliases: Sequence[str] = ()) -> Attachment:
        """Create the container's netns (or take its reservation), run CNI ADD, write its hosts and resolv.conf."""

    async def check(self, env: str, container_id: str) -> None:
        """Run CNI CHECK on an attached container; raises FailedPrecondition when it drifted."""

    async def detach(self, env: str, container_id: str) -> None:
        """CNI DEL, remove the netns and files, drop the container from service backends."""

    async def set_backends(self, env: str, service: str, ips: Sequence[str]) -> None:
        """Re-point the service's VIP and published ports to ``ips`` in one atomic rule swap."""

    async def write_hosts(self, env: str) -> None:
        """Rewrite every hosts file of the environment from its current membership."""

    async def publish(
        self,
        env: str,
        service: str,
        container_port: int,
        host_port: int = 0,
        host_ip: str = "",
        protocol: Transport = "tcp",
    ) -> domain.Endpoint:
        """Forward a host port to the service's backends; 0 allocates one from the range."""

    async def unpublish_environment(self, env: str) -> None:
        """Release every host port of the environment."""

    async def delete_environment(self, env: str) -> None:
        """Remove everything the environment owns: containers, rules, ports, leases, bridge."""

    async def environment(self, env: str) -> EnvNetworkInfo:
        """The environment's network; NotFound when it has none."""

    async def remove_service(self, env: str, service: str) -> None:
        """Drop the service's VIP, its rules and its published ports; idempotent."""

    async def service(self, env: str, service: str) -> ServiceInfo:
        """The service's VIP, ports and backends; NotFound when unknown."""

    async def endpoints(self, env: str) -> tuple[domain.Endpoint, ...]:
        """Published ports of the environment."""

    async def resources(self) -> dict[str, int]:
        """Count every network resource this instance owns, by kind, from the kernel and disk."""

    async def sweep(self, keep_envs: Collection[str]) -> None:
        """Remove everything owned by this instance that does not belong to ``keep_envs``."""

    def listeners(self, env: str) -> list[tuple[domain.Endpoint, socket.socket]]:
        """The daemon's own bound sockets on the environment's published TCP ports.

        The network layer keeps owning them (it closes them when the ports are released); wake on
        connection listens on them while the environment sleeps.
        """

    async def connection_counts(self) -> dict[str, int]:
        """Per environment, connections its published ports forwarded so far (kernel counters).

        Only changes matter: a count that moved means new connections since the last reading.
        """
