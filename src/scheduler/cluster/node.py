"""A node of the fleet as every other node sees it: its record under its lease in etcd.

The record is written by the node itself (name, address, capacity, labels, what it runs) and
read by the placement leader and by ``ListNodes``. A record exists only while its lease is
kept alive, so a node whose daemon, host or link died drops out after the lease TTL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from scheduler.domain import EnvironmentSpec
from scheduler.domain import Resources as ServiceResources
from scheduler.errors import Internal

NODE_SELECTOR_PREFIX = "node."
"""Environment labels under this prefix are requirements on the labels of the node that runs it."""


@dataclass(frozen=True)
class Resources:
    """An amount of each resource placement counts: CPU, memory, published ports, environments."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    ports: int = 0
    environments: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millis + other.cpu_millis,
            self.memory_bytes + other.memory_bytes,
            self.ports + other.ports,
            self.environments + other.environments,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millis - other.cpu_millis,
            self.memory_bytes - other.memory_bytes,
            self.ports - other.ports,
            self.environments - other.environments,
        )


RESOURCE_NAMES: Mapping[str, str] = {
    "cpu_millis": "CPU millicores",
    "memory_bytes": "bytes of memory",
    "ports": "published ports",
    "environments": "environments",
}
"""Each counted resource and how messages name it, in the order they are checked."""


@dataclass(frozen=True)
class Node:
    """One member of the fleet, as registered under its lease."""

    name: str
    address: str
    """The node's API address (``HOST:PORT``): where other nodes proxy its node-local calls."""
    capacity: Resources
    allocated: Resources = Resources()
    """What the environments placed on it ask for, as the node last reported it."""
    labels: Mapping[str, str] = field(default_factory=dict)
    pool: str = ""
    port_range: tuple[int, int] = (0, 0)
    draining: bool = False
    """Set by ``DrainNode``: it keeps its lease but takes no new environment, and loses its own."""
    started_at: datetime | None = None
    leader: bool = False
    """Whether it holds the placement election; read from the election key, never stored here."""

    @property
    def free(self) -> Resources:
        """Capacity not yet asked for."""
        return self.capacity - self.allocated


def demand_of(spec: EnvironmentSpec) -> Resources:
    """What one environment asks of the node that runs it: its services' requests (defaults applied)."""
    return Resources(
        cpu_millis=sum(_cpu_request(s.resources) * s.replicas for s in spec.services),
        memory_bytes=sum(_memory_request(s.resources) * s.replicas for s in spec.services),
        ports=sum(p.publish for s in spec.services for p in s.ports),
        environments=1,
    )


def _cpu_request(res: ServiceResources) -> int:
    # A spec stored before requests existed has none: it counts its limit, as it did then.
    return res.cpu_request_millis or res.cpu_millis


def _memory_request(res: ServiceResources) -> int:
    return res.memory_request_bytes or res.memory_bytes


def selector_of(spec: EnvironmentSpec) -> dict[str, str]:
    """The node labels an environment requires: its own labels under ``node.`` (``node.disk=ssd``)."""
    return {k: v for k, v in spec.labels.items() if k.startswith(NODE_SELECTOR_PREFIX)}


def node_to_json(node: Node) -> str:
    """Serialise a node record for its etcd key."""
    return json.dumps(
        {
            "name": node.name,
            "address": node.address,
            "capacity": _resources_dict(node.capacity),
            "allocated": _resources_dict(node.allocated),
            "labels": dict(node.labels),
            "pool": node.pool,
            "port_range": list(node.port_range),
            "draining": node.draining,
            "started_at": node.started_at.isoformat() if node.started_at else None,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def node_from_json(text: str | bytes) -> Node:
    """Read a node record written by :func:`node_to_json`.

    Raises:
        Internal: the record is not one this code wrote.
    """
    try:
        data = json.loads(text)
        low, high = data["port_range"]
        return Node(
            name=str(data["name"]),
            address=str(data["address"]),
            capacity=Resources(**data["capacity"]),
            allocated=Resources(**data["allocated"]),
            labels={str(k): str(v) for k, v in data["labels"].items()},
            pool=str(data["pool"]),
            port_range=(int(low), int(high)),
            draining=bool(data["draining"]),
            started_at=datetime.fromisoformat(data["started_at"]) if data["started_at"] else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise Internal(f"node record is malformed: {err}") from err


def _resources_dict(res: Resources) -> dict[str, int]:
    return {name: getattr(res, name) for name in RESOURCE_NAMES}
