"""Allocations that must survive a restart: subnets, VIPs, backends, attachments, host ports.

One JSON file written atomically (temporary file, fsync, rename), with a version field. A
corrupt file is set aside as ``.corrupt.<time>`` rather than silently discarded or fatal.
The records are mutable on purpose: only :class:`scheduler.network.cni.CniNetwork` holds them,
under its lock.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler import log as slog
from scheduler.errors import Internal

VERSION = 1
log = slog.get("network-state")


@dataclass
class PortRecord:
    """One port of a service: what the VIP forwards."""

    port: int
    protocol: str = "tcp"


@dataclass
class ServiceRecord:
    """A service's VIP, its forwarded ports (empty: all) and its current backends."""

    vip: str
    ports: list[PortRecord] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)


@dataclass
class ContainerRecord:
    """One attached container."""

    hostname: str
    ip: str
    netns: str
    aliases: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    """The CNI ADD result, passed back as ``prevResult`` to CHECK and DEL."""


@dataclass
class HostPortRecord:
    """One published host port and the service port it forwards to."""

    env: str
    service: str
    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"

    @property
    def key(self) -> str:
        """Identity of the allocation."""
        return f"{self.protocol}/{self.host_ip}/{self.host_port}"


@dataclass
class EnvRecord:
    """One environment's network."""

    subnet: str
    bridge: str
    services: dict[str, ServiceRecord] = field(default_factory=dict)
    containers: dict[str, ContainerRecord] = field(default_factory=dict)


@dataclass
class NetworkState:
    """Everything persisted by one instance."""

    envs: dict[str, EnvRecord] = field(default_factory=dict)
    ports: list[HostPortRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The versioned envelope written to disk (the records as ``asdict`` has them).

        Built by hand: it is taken on every commit with every environment in it, and
        ``dataclasses.asdict``'s deep copy cost more than the rest of a commit with a few hundred.
        """
        envs = {
            name: {
                "subnet": env.subnet,
                "bridge": env.bridge,
                "services": {
                    s: {
                        "vip": svc.vip,
                        "ports": [{"port": p.port, "protocol": p.protocol} for p in svc.ports],
                        "backends": list(svc.backends),
                    }
                    for s, svc in env.services.items()
                },
                "containers": {
                    c: {
                        "hostname": cont.hostname,
                        "ip": cont.ip,
                        "netns": cont.netns,
                        "aliases": list(cont.aliases),
                        "result": cont.result,
                    }
                    for c, cont in env.containers.items()
                },
            }
            for name, env in self.envs.items()
        }
        ports = [
            {
                "env": p.env,
                "service": p.service,
                "host_ip": p.host_ip,
                "host_port": p.host_port,
                "container_port": p.container_port,
                "protocol": p.protocol,
            }
            for p in self.ports
        ]
        return {"version": VERSION, "data": {"envs": envs, "ports": ports}}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> NetworkState:
        """Parse the envelope; raises ValueError/KeyError/TypeError on a malformed document."""
        if doc.get("version") != VERSION:
            raise ValueError(f"unsupported state version {doc.get('version')!r}")
        data = doc["data"]
        envs: dict[str, EnvRecord] = {}
        for name, env in data["envs"].items():
            services = {
                s: ServiceRecord(
                    vip=rec["vip"],
                    ports=[PortRecord(**p) for p in rec["ports"]],
                    backends=list(rec["backends"]),
                )
                for s, rec in env["services"].items()
            }
            containers = {c: ContainerRecord(**rec) for c, rec in env["containers"].items()}
            envs[name] = EnvRecord(env["subnet"], env["bridge"], services, containers)
        ports = [HostPortRecord(**p) for p in data["ports"]]
        return cls(envs, ports)


class StateFile:
    """Atomic load and save of :class:`NetworkState`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._guard = threading.Lock()
        self._issued = 0
        self._written = 0

    def load(self) -> NetworkState:
        """Read the state; a missing file is an empty state, a corrupt one is set aside."""
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return NetworkState()
        try:
            return NetworkState.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError) as err:
            aside = self.path.with_name(f"{self.path.name}.corrupt.{int(time.time())}")
            os.replace(self.path, aside)
            log.error("network_state.corrupt", path=str(self.path), error=str(err), moved_to=str(aside))
            return NetworkState()

    def save(self, state: NetworkState) -> None:
        """Write the state so that a crash leaves either the old or the new file, never half."""
        self.write(self.encode(state), self.next_sequence())

    def encode(self, state: NetworkState) -> str:
        """The file's text for ``state``: taken on the caller's thread, while the records are stable.

        Compact, because only the C encoder (no ``indent``) keeps up with a commit per change.
        """
        return json.dumps(state.to_json(), sort_keys=True, separators=(",", ":"))

    def next_sequence(self) -> int:
        """A number that orders snapshots: a write older than the last one written is dropped."""
        with self._guard:
            self._issued += 1
            return self._issued

    def write(self, text: str, sequence: int) -> None:
        """Replace the file with ``text`` unless a newer snapshot is already there.

        Writes run in threads that outlive a cancelled caller, so two may overlap: each gets its
        own temporary file, and the lock with the sequence keeps the newest on disk.
        """
        with self._guard:
            if sequence <= self._written:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = ""
            try:
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
                with os.fdopen(fd, "w") as out:
                    out.write(text)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
                self._written = sequence
            except OSError as err:
                if tmp:
                    Path(tmp).unlink(missing_ok=True)
                raise Internal(f"cannot write network state {self.path}: {err}") from err
