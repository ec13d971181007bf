"""The placement leader: one node at a time (etcd election on its node lease) places environments.

While it leads, it runs :func:`scheduler.cluster.decide.decide` on its ledger (which mirrors
etcd) whenever an environment changes and at least every ``interval`` (to notice lapsed leases),
and writes each assignment with compare-and-swap on the environment's revision. An assignment
is written only if the environment is still the incarnation, and still on the node, it was
decided for; a move resets the environment to PENDING with no containers, so the new owner
deploys it from its spec, and says why in its ``Placed`` condition. Leadership ends with the
node's lease: a leader that lost it stops before another can be elected.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from scheduler import errors, log
from scheduler.cluster.decide import Assignment, Unplaceable, decide
from scheduler.cluster.placement import Strategy
from scheduler.cluster.registry import EtcdFleet, NodeRegistry
from scheduler.domain import Condition, Environment, EnvironmentStatus
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.status import with_condition

_log = log.get("cluster.leader")

PLACED = "Placed"
"""Condition type: on which node the environment runs and why it was put there."""


class Leader:
    """Campaigns for the placement election, and places while it leads."""

    def __init__(
        self,
        fleet: EtcdFleet,
        registry: NodeRegistry,
        ledger: Ledger,
        node: str,
        *,
        grace: timedelta,
        strategy: Strategy,
        interval: float = 1.0,
    ) -> None:
        self._fleet = fleet
        self._registry = registry
        self._ledger = ledger
        self._node = node
        self._grace = grace
        self._strategy = strategy
        self._interval = interval
        self._wake = asyncio.Event()
        self._missing_since: dict[str, datetime] = {}
        self.leading = False
        self.placed: list[Assignment] = []
        """Every assignment this node wrote while leading (for tests and the measured limits)."""
        ledger.watch(lambda before, after: self._wake.set())

    async def run(self) -> None:
        """Campaign, lead until the node's lease is lost, campaign again; until cancelled."""
        while True:
            await self._registry.registered.wait()
            lease = self._registry.lease
            try:
                await self._fleet.election.campaign(lease.id, self._node.encode())
            except errors.SchedulerError as err:
                _log.warning("leader.campaign_failed", node=self._node, error=err.message)
                await asyncio.sleep(1.0)
                continue
            _log.info("leader.elected", node=self._node)
            self.leading = True
            self._missing_since.clear()
            try:
                await self._lead(lease.lost)
            finally:
                self.leading = False
                _log.info("leader.stepped_down", node=self._node)

    async def _lead(self, lost: asyncio.Event) -> None:
        while not lost.is_set():
            self._wake.clear()
            try:
                await self.place_once()
            except errors.SchedulerError as err:
                _log.warning("leader.pass_failed", error=err.message)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            except TimeoutError:
                pass
            await asyncio.sleep(0.05)  # let a burst of creations arrive before the next pass

    async def place_once(self) -> list[Assignment]:
        """One pass: read the live nodes, decide, write the assignments; returns them."""
        nodes = await self._fleet.nodes()
        now = datetime.now(UTC)
        live = {n.name for n in nodes}
        for gone in [name for name in self._missing_since if name in live]:
            del self._missing_since[gone]
        envs = list(self._ledger.all())
        for env in envs:
            if env.node and env.node not in live:
                self._missing_since.setdefault(env.node, now)
        assignments, stuck = decide(envs, nodes, self._missing_since, now, self._grace, self._strategy)
        written = [a for a in assignments if await self._assign(a)]
        for item in stuck:
            await self._refuse(item)
        self.placed += written
        return written

    async def _assign(self, a: Assignment) -> bool:
        def apply(env: Environment) -> Environment | None:
            if env.uid != a.uid or env.node != a.moved_from:
                return None  # changed since it was decided on: the next pass decides again
            condition = Condition(PLACED, True, "Moved" if a.moved_from else "Placed", f"{a.reason}: on node {a.node}")
            condition = replace(condition, last_transition=datetime.now(UTC))
            moved = replace(env, node=a.node, conditions=with_condition(env.conditions, condition))
            if not a.moved_from or env.status is EnvironmentStatus.DELETING:
                return moved
            return replace(moved, status=EnvironmentStatus.PENDING, containers=(), endpoints=())

        try:
            after = await self._ledger.change(a.env, apply)
        except errors.NotFound:
            return False
        if after.node != a.node:
            return False
        _log.info("leader.assigned", env=a.env, node=a.node, reason=a.reason)
        return True

    async def _refuse(self, item: Unplaceable) -> None:
        message = item.error.message

        def apply(env: Environment) -> Environment | None:
            held = next((c for c in env.conditions if c.type == PLACED), None)
            if env.node or (held is not None and held.message == message):
                return None
            condition = Condition(PLACED, False, "Unschedulable", message, last_transition=datetime.now(UTC))
            return replace(env, conditions=with_condition(env.conditions, condition))

        try:
            await self._ledger.change(item.env, apply)
        except errors.NotFound:
            pass
