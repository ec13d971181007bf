"""The placement leader: one node at a time (etcd election on its node lease) places environments.

While it leads, it runs :func:`scheduler.cluster.decide.decide` on its ledger (which mirrors
etcd) whenever an environment changes and at least every ``interval`` (to notice lapsed leases),
and writes each assignment with compare-and-swap on the environment's revision, fenced on its
election key: the transaction lands only while the leader key it was elected with still exists
(compared by creation revision), so a deposed leader (a long pause, a partition) cannot place
or move anything once another node leads. An assignment is written only if the environment is
still the incarnation, and still on the node, it was decided for; a move resets the environment
to PENDING with no containers, so the new owner deploys it from its spec, and says why in its
``Placed`` condition. Leadership ends with the node's lease, or at the first fenced write.
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
from scheduler.orchestrator.ledger import Change, Ledger
from scheduler.orchestrator.status import with_condition
from scheduler.storage.etcd.store import EtcdStateStore

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
        store: EtcdStateStore,
        node: str,
        *,
        grace: timedelta,
        strategy: Strategy,
        interval: float = 1.0,
    ) -> None:
        self._fleet = fleet
        self._registry = registry
        self._ledger = ledger
        self._store = store
        self._writer: EtcdStateStore | None = None
        """``store`` fenced on the election key of the current term; None while not leading."""
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
                term = await self._fleet.election.campaign(lease.id, self._node.encode())
            except errors.SchedulerError as err:
                _log.warning("leader.campaign_failed", node=self._node, error=err.message)
                await asyncio.sleep(1.0)
                continue
            _log.info("leader.elected", node=self._node, key=term.key, revision=term.revision)
            self.leading = True
            self._writer = self._store.fenced(term.key, term.revision)
            self._missing_since.clear()
            try:
                await self._lead(lease.lost)
            except errors.FailedPrecondition as err:
                if err.reason != "FENCED":
                    raise
                _log.warning("leader.fenced", node=self._node, error=err.message)
            finally:
                self.leading = False
                self._writer = None
                _log.info("leader.stepped_down", node=self._node)

    async def _lead(self, lost: asyncio.Event) -> None:
        while not lost.is_set():
            self._wake.clear()
            try:
                await self.place_once()
            except errors.FailedPrecondition as err:
                if err.reason == "FENCED":
                    raise
                _log.warning("leader.pass_failed", error=err.message)
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

        if not await self._write(a.env, apply):
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

        await self._write(item.env, apply)

    async def _write(self, name: str, change: Change) -> bool:
        """Apply ``change`` to ``name`` through the fenced writer; whether it was written.

        Raises:
            FailedPrecondition: reason ``FENCED``, this node no longer leads.
        """
        current = self._ledger.find(name)
        writer = self._writer
        if current is None or writer is None:
            return False
        updated = change(current)
        if updated is None or updated is current:
            return False
        try:
            written = await writer.put(updated, expected_revision=current.revision)
        except (errors.NotFound, errors.Conflict):
            return False  # changed since it was decided on: the mirror brings it, the next pass decides again
        self._ledger.absorb(written)
        return True
