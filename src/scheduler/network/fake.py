"""``FakeNetwork``: the ``NetworkManager`` Protocol in memory, for unit tests of what sits above it.

Addresses come from a counter, service backends and attachments are dicts a test can read, and
every rule of the real implementation that callers rely on holds: detaching a container that is
not attached to that environment, or setting backends of an unknown service, is NotFound.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from scheduler import domain
from scheduler.errors import NotFound
from scheduler.network.base import Attachment, EnvNetworkInfo, NetworkManager, ServiceInfo, ServicePort


class FakeNetwork:
    """The NetworkManager Protocol in memory: addresses, service backends, sweeps."""

    def __init__(self) -> None:
        self.envs: set[str] = set()
        self.backends: dict[tuple[str, str], tuple[str, ...]] = {}
        self.attached: dict[str, str] = {}
        self.owners: dict[str, str] = {}
        self.reserved: set[str] = set()
        """Containers reserved and not attached yet."""
        self.swept: list[set[str]] = []
        self.backend_calls: list[tuple[str, str, tuple[str, ...]]] = []
        self.held: dict[str, list[tuple[domain.Endpoint, socket.socket]]] = {}
        """Sockets a test hands out as an environment's published ports (wake on connection)."""
        self.counts: dict[str, int] = {}
        """Connection counters a test sets per environment (idle detection)."""
        self._ips = itertools.count(2)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ensure_environment(self, env: str, subnet: str = "") -> EnvNetworkInfo:
        self.envs.add(env)
        return EnvNetworkInfo(env, "10.9.0.0/24", "br-test", "10.9.0.1", "10.9.0.240/28")

    async def ensure_service(self, env: str, service: str, ports: Sequence[int | ServicePort] = ()) -> str:
        self.backends.setdefault((env, service), ())
        return "10.9.0.250"

    async def reserve(self, env: str, container_id: str, hostname: str) -> Attachment | None:
        self.reserved.add(container_id)
        return Attachment(env, container_id, hostname, f"/run/netns/{container_id}", "", "", "/h", "/r")

    async def attach(self, env: str, container_id: str, hostname: str, aliases: Sequence[str] = ()) -> Attachment:
        ip = f"10.9.0.{next(self._ips)}"
        self.reserved.discard(container_id)
        self.attached[container_id] = ip
        self.owners[container_id] = env
        return Attachment(env, container_id, hostname, f"/run/netns/{container_id}", ip, "10.9.0.1", "/h", "/r")

    async def check(self, env: str, container_id: str) -> None:
        pass

    async def detach(self, env: str, container_id: str) -> None:
        if container_id in self.reserved:
            self.reserved.discard(container_id)
            return
        if self.owners.get(container_id) != env:
            raise NotFound(f"container {container_id} is not attached to {env}")
        ip = self.attached.pop(container_id)
        self.owners.pop(container_id)
        for key, ips in self.backends.items():
            self.backends[key] = tuple(i for i in ips if i != ip)

    async def set_backends(self, env: str, service: str, ips: Sequence[str]) -> None:
        if (env, service) not in self.backends:
            raise NotFound(f"service {service} of {env} not found")
        self.backends[(env, service)] = tuple(ips)
        self.backend_calls.append((env, service, tuple(ips)))

    async def write_hosts(self, env: str) -> None:
        pass

    async def publish(
        self,
        env: str,
        service: str,
        container_port: int,
        host_port: int = 0,
        host_ip: str = "",
        protocol: str = "tcp",
    ) -> domain.Endpoint:
        return domain.Endpoint(service, host_ip or "127.0.0.1", host_port or 30000, container_port)

    async def unpublish_environment(self, env: str) -> None:
        pass

    async def delete_environment(self, env: str) -> None:
        self.envs.discard(env)
        for key in [k for k in self.backends if k[0] == env]:
            del self.backends[key]

    async def environment(self, env: str) -> EnvNetworkInfo:
        return await self.ensure_environment(env)

    async def remove_service(self, env: str, service: str) -> None:
        self.backends.pop((env, service), None)

    async def service(self, env: str, service: str) -> ServiceInfo:
        if (env, service) not in self.backends:
            raise NotFound(f"service {service} of {env} not found")
        return ServiceInfo(env, service, "10.9.0.250", (), self.backends[(env, service)])

    async def endpoints(self, env: str) -> tuple[domain.Endpoint, ...]:
        return ()

    async def resources(self) -> dict[str, int]:
        return {"envs": len(self.envs)}

    def listeners(self, env: str) -> list[tuple[domain.Endpoint, socket.socket]]:
        return list(self.held.get(env, []))

    async def connection_counts(self) -> dict[str, int]:
        return dict(self.counts)

    async def sweep(self, keep_envs: Collection[str]) -> None:
        keep = set(keep_envs)
        self.swept.append(keep)
        for env in [e for e in self.envs if e not in keep]:
            await self.delete_environment(env)


if TYPE_CHECKING:  # the type checker proves the fake keeps up with the Protocol
    _conforms: NetworkManager = FakeNetwork()
