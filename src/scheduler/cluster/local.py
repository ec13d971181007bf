"""The single-host mode as a fleet of one: ``ListNodes`` reports this daemon, nothing drains."""

from __future__ import annotations

import os
from dataclasses import replace

from scheduler.cluster.node import Node, Resources, demand_of
from scheduler.domain import Environment, EnvironmentSpec, EnvironmentStatus
from scheduler.errors import FailedPrecondition, NotFound
from scheduler.orchestrator.ledger import Ledger


class SingleNode:
    """This daemon as the one node; what is allocated is summed from the ledger when asked."""

    def __init__(self, node: Node, ledger: Ledger) -> None:
        self._node = node
        self._ledger = ledger

    async def nodes(self) -> list[Node]:
        """This node, with the demand of every environment it holds (deleting ones excluded)."""
        return [replace(self._node, allocated=allocated(self._ledger), leader=True)]

    async def admit(self, name: str, spec: EnvironmentSpec) -> None:
        """Nothing to check: the daemon's own quotas (``limits``) already bound what it runs."""

    async def here(self, name: str, spec: EnvironmentSpec) -> str:
        """Nothing is placed: the daemon's own quotas already bound what it runs."""
        return ""

    async def check_local(self, env: Environment, why: str = "") -> None:
        """Nothing to check: every environment runs here."""

    async def drain(self, name: str) -> Node:
        """Refuse: there is nowhere to move environments to.

        Raises:
            NotFound: ``name`` is not this node.
            FailedPrecondition: always otherwise, naming ``cluster.etcd``.
        """
        raise self._alone(name, "drained")

    async def undrain(self, name: str) -> Node:
        """Refuse: a daemon running alone is never drained.

        Raises:
            NotFound: ``name`` is not this node.
            FailedPrecondition: always otherwise, naming ``cluster.etcd``.
        """
        raise self._alone(name, "undrained")

    def _alone(self, name: str, what: str) -> NotFound | FailedPrecondition:
        if name != self._node.name:
            return NotFound(f"node {name!r} not found; this daemon is the node {self._node.name!r}", node=name)
        return FailedPrecondition(
            f"node {name!r} cannot be {what}: this daemon runs alone (set cluster.etcd to join a fleet)",
            node=name,
        )


def allocated(ledger: Ledger, node: str | None = None) -> Resources:
    """What the environments of ``ledger`` (those placed on ``node``, if given) ask for."""
    total = Resources()
    for env in ledger.all():
        if env.status is not EnvironmentStatus.DELETING and (node is None or env.node == node):
            total += demand_of(env.spec)
    return total


def host_capacity(cpu_millis: int, memory_bytes: int, port_range: tuple[int, int], environments: int) -> Resources:
    """What a node offers: the configured amounts, or (0) every core and all physical memory."""
    cores = len(os.sched_getaffinity(0))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    low, high = port_range
    return Resources(
        cpu_millis=cpu_millis or cores * 1000,
        memory_bytes=memory_bytes or memory,
        ports=high - low + 1,
        environments=environments,
    )
