"""The ``Fleet`` Protocol: the nodes a daemon knows of, as the API reports and drains them."""

from __future__ import annotations

from typing import Protocol

from scheduler.cluster.node import Node
from scheduler.domain import Environment, EnvironmentSpec


class Fleet(Protocol):
    """Every node whose lease is alive (or, without a fleet, this daemon alone)."""

    async def nodes(self) -> list[Node]:
        """The live nodes, by name, with what each offers and what is allocated on it."""
        ...

    async def admit(self, name: str, spec: EnvironmentSpec) -> None:
        """Refuse a new environment that no live node has room for now.

        Raises:
            ResourceExhausted: naming the resource (or label) no node offers.
        """
        ...

    async def here(self, name: str, spec: EnvironmentSpec) -> str:
        """The node an environment made here (a clone, a restore) is placed on: this one, if it has room.

        Returns "" without a fleet (nothing is placed).

        Raises:
            ResourceExhausted: this node cannot take it (draining, a label, a resource: named).
        """
        ...

    async def check_local(self, env: Environment, why: str = "ask that node for its logs and metrics") -> None:
        """Refuse node-local work (logs, metrics, a clone) about an environment another node runs.

        ``why`` tells the client what to do instead.

        Raises:
            FailedPrecondition: reason ``WRONG_NODE``, naming the owner and its API address.
        """
        ...

    async def drain(self, name: str) -> Node:
        """Mark node ``name`` draining: it takes no new environment and gives its own away.

        Raises:
            NotFound: no live node has that name.
            FailedPrecondition: there is no fleet to move environments to.
        """
        ...

    async def undrain(self, name: str) -> Node:
        """Make node ``name`` eligible for new environments again (a no-op when it is not drained).

        Raises:
            NotFound: no live node has that name.
            FailedPrecondition: there is no fleet.
        """
        ...
