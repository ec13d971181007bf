"""Settings of what the daemon drives on its host: containerd, container logs, images and registries, networks."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from scheduler.config.options import (
    CommandPath,
    ConfigPath,
    SecretStr,
    _Section,
)
from scheduler.reference import DEFAULT_ALLOWED_REGISTRIES


class ContainerLogSettings(_Section):
    """Containers' stdout and stderr files, written and rotated by the host's log writer."""

    max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    """Size in bytes at which a stream's file is rotated."""
    max_files: int = Field(default=3, ge=1, le=100)
    """Files kept per stream, the current one included (``stdout.log``, ``stdout.log.1``, ...)."""


class ContainerdSettings(_Section):
    """How the daemon reaches containerd."""

    socket: ConfigPath = ""
    """Socket of an existing containerd; empty starts (or adopts) a managed one under data_dir."""
    namespace: str = "scheduler"
    """containerd namespace that holds everything the scheduler creates."""
    binary: CommandPath = "containerd"
    """containerd binary for the managed instance."""
    snapshotter: str = "overlayfs"
    runtime: str = "io.containerd.runc.v2"
    call_timeout: float = Field(default=30.0, gt=0)
    """Deadline, in seconds, of one containerd call."""

    @field_validator("namespace")
    @classmethod
    def _namespace_is_identifier(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*", value):
            raise ValueError(f"{value!r} is not a valid containerd namespace")
        return value


class RegistryHost(_Section):
    """Per-registry-host settings, like containerd's hosts.toml."""

    mirrors: list[str] = []
    """Endpoints (``http://127.0.0.1:5000``) tried in order before the host itself."""
    insecure: bool = False
    """Allow plain HTTP to this host."""
    username: str = ""
    password: SecretStr = ""


class ImageSettings(_Section):
    """Image pulls and imports."""

    pull_policy: Literal["if-not-present", "always", "never"] = "if-not-present"
    registries: dict[str, RegistryHost] = {}
    """Keyed by registry host (``docker.io``, ``127.0.0.1:5000``); a host listed here may be pulled from."""
    allowed_registries: list[str] = list(DEFAULT_ALLOWED_REGISTRIES)
    """Registry hosts (``HOST`` or ``HOST:PORT``) images may be pulled from, besides ``registries``."""
    preload: list[ConfigPath] = []
    """Image archives (OCI layout or ``docker save`` tars) imported at start."""

    def registry_allowed(self, host: str) -> bool:
        """Whether images may be pulled from registry ``host`` (as written in a reference)."""
        return host in self.registries or host in self.allowed_registries


class NetworkSettings(_Section):
    """Environment networks and published ports."""

    pool: str = "10.88.0.0/16"
    """Address pool carved into one subnet per environment."""
    subnet_prefix: int = Field(default=24, ge=16, le=28)
    port_range: tuple[int, int] = (20000, 29999)
    """Host ports allocated when a service asks for none in particular."""
    host_ip: str = "127.0.0.1"
    """Default host address for published ports."""
    cni_bin_dir: ConfigPath = "/usr/lib/cni"
    instance: str = Field(default="sch", pattern=r"^[a-z0-9]{1,6}$")
    """Prefix of every bridge, iptables chain and name this daemon owns on the host; two daemons
    on one host need different instances (and non-overlapping pools)."""

    @field_validator("pool")
    @classmethod
    def _pool_is_network(cls, value: str) -> str:
        ipaddress.ip_network(value)
        return value

    @field_validator("host_ip")
    @classmethod
    def _host_ip_is_address(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @field_validator("port_range")
    @classmethod
    def _range_is_ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"{list(value)} is not [LOW, HIGH] with 1 <= LOW <= HIGH <= 65535")
        return value
