"""Names of everything this layer creates in the kernel, all derived from the instance prefix.

Two scheduler instances (or two test sessions) with different prefixes never touch each
other's bridges, chains or files. The prefix has no dash, so ``<prefix>-`` identifies one
instance's interfaces exactly.
"""

from __future__ import annotations

import functools
import hashlib
import re

from scheduler.errors import InvalidArgument

_INSTANCE = re.compile(r"[a-z0-9]{1,6}")
_ENV = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,126}[A-Za-z0-9])?")
_CONTAINER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

IFNAME_MAX = 15
"""Linux interface names hold at most 15 characters."""

MASQ_MARK = 0x4000
"""Packet mark bit asking our POSTROUTING chain to masquerade (hairpin, localhost sources)."""


def check_instance(instance: str) -> str:
    """Validate the instance prefix: 1-6 lowercase letters or digits (``network.instance``)."""
    if not _INSTANCE.fullmatch(instance):
        raise InvalidArgument(
            f"network.instance {instance!r} must be 1-6 lowercase letters or digits",
            field="network.instance",
        )
    return instance


def check_env(env: str) -> str:
    """Validate an environment name as used in file and chain names."""
    if not _ENV.fullmatch(env):
        raise InvalidArgument(f"environment name {env!r} must be 1-128 letters, digits, '.', '_' or '-'", field="env")
    return env


def check_service(service: str) -> str:
    """Validate a service name: it becomes a host name in /etc/hosts."""
    if not _HOSTNAME.fullmatch(service):
        raise InvalidArgument(
            f"service name {service!r} must be a host name label (letters, digits, '-')", field="service"
        )
    return service


def check_hostname(name: str, field: str = "hostname") -> str:
    """Validate one host name label written to /etc/hosts."""
    if not _HOSTNAME.fullmatch(name):
        raise InvalidArgument(f"{field} {name!r} must be a host name label (letters, digits, '-')", field=field)
    return name


def check_container_id(container_id: str) -> str:
    """Validate a container id: it names the netns file and the CNI attachment."""
    if not _CONTAINER.fullmatch(container_id):
        raise InvalidArgument(
            f"container id {container_id!r} must be 1-128 letters, digits, '.', '_' or '-'",
            field="container_id",
        )
    return container_id


@functools.lru_cache(maxsize=16384)
def short_hash(*parts: str, length: int = 8) -> str:
    """Stable hex digest of ``parts``: names stay short and identical across restarts.

    Cached: every rule sync names the chains of every environment again.
    """
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


class Names:
    """Every kernel-visible name of one instance."""

    def __init__(self, instance: str) -> None:
        self.instance = check_instance(instance)
        self.iface_prefix = f"{instance}-"
        """Bridges of this instance; iptables matches them with ``<prefix>-+``."""

    def bridge(self, env: str) -> str:
        """Bridge (and CNI network) name of an environment."""
        name = f"{self.instance}-{short_hash(env)}"
        assert len(name) <= IFNAME_MAX
        return name

    @property
    def iface_wildcard(self) -> str:
        """The iptables interface pattern matching every bridge of this instance."""
        return f"{self.instance}-+"

    def chain(self, builtin: str) -> str:
        """Top-level chain jumped to from a built-in chain (``PREROUTING`` -> ``sch-PREROUTING``)."""
        return f"{self.instance}-{builtin}"

    @property
    def services_chain(self) -> str:
        """The nat chain matching every service VIP."""
        return f"{self.instance}-SERVICES"

    @property
    def hostports_chain(self) -> str:
        """The nat chain matching every published host port."""
        return f"{self.instance}-HOSTPORTS"

    def service_chain(self, env: str, service: str, port: int, protocol: str) -> str:
        """The nat chain that balances one service port over its backends."""
        return f"{self.instance}-SVC-{short_hash(env, service, str(port), protocol, length=16)}"

    def endpoint_chain(self, env: str, service: str, port: int, protocol: str, ip: str) -> str:
        """The nat chain that marks hairpin traffic and DNATs to one backend."""
        return f"{self.instance}-SEP-{short_hash(env, service, str(port), protocol, ip, length=16)}"

    def owns_chain(self, chain: str) -> bool:
        """Whether a chain name belongs to this instance."""
        return chain.startswith(self.iface_prefix)
