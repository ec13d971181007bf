"""What the image service needs to know of the daemon's configuration (the daemon converts its own).

The runtime does not read the daemon's settings: these plain values are all it takes, so that it
can be built and tested without the configuration layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from scheduler import domain
from scheduler.reference import DEFAULT_ALLOWED_REGISTRIES


@dataclass(frozen=True)
class RegistryOptions:
    """Per-registry-host access, like containerd's hosts.toml."""

    mirrors: tuple[str, ...] = ()
    """Endpoints (``http://127.0.0.1:5000``) tried in order before the host itself."""
    insecure: bool = False
    """Allow plain HTTP to this host."""
    username: str = ""
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class ImageOptions:
    """Pull policy and the registries images may come from."""

    pull_policy: domain.PullPolicy = domain.PullPolicy.IF_NOT_PRESENT
    registries: Mapping[str, RegistryOptions] = field(default_factory=dict)
    """Keyed by registry host (``docker.io``, ``127.0.0.1:5000``); a host listed here may be pulled from."""
    allowed_registries: tuple[str, ...] = DEFAULT_ALLOWED_REGISTRIES
    """Registry hosts (``HOST`` or ``HOST:PORT``) images may be pulled from, besides ``registries``."""

    def registry_allowed(self, host: str) -> bool:
        """Whether images may be pulled from registry ``host`` (as written in a reference)."""
        return host in self.registries or host in self.allowed_registries
