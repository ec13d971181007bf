"""This daemon as a node of a fleet: the pieces that make it one, started and stopped in order.

Start: the ledger mirror follows etcd (and has applied its first snapshot), the agent takes
over the environments placed here, the node registers under its lease, and it campaigns for
placement leadership; with a fence, it stops its environments' processes whenever its lease
is lost and resumes them once registered again (see ``scheduler.cluster.fence``). Stop: the
reverse; the lease is revoked last but one, so the fleet sees the node leave at once instead of
after the lease TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta

from scheduler import log
from scheduler.cluster.agent import Agent
from scheduler.cluster.fence import Fence
from scheduler.cluster.leader import Leader
from scheduler.cluster.local import allocated
from scheduler.cluster.mirror import LedgerMirror
from scheduler.cluster.node import Node
from scheduler.cluster.placement import Strategy
from scheduler.cluster.registry import EtcdFleet, NodeRegistry
from scheduler.errors import SchedulerError, Unavailable
from scheduler.orchestrator.backup import Backups
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.orchestrator import Orchestrator
from scheduler.orchestrator.reconcile import Reconciler
from scheduler.runtime.base import ContainerRuntime
from scheduler.storage.etcd import EtcdClient, Lease
from scheduler.storage.etcd.store import EtcdStateStore

_log = log.get("cluster")

SYNC_TIMEOUT = 30.0
"""Seconds the first snapshot of the environments may take before the daemon gives up starting."""


@dataclass(frozen=True)
class MembershipSettings:
    """How this node takes part: lease TTL, failover grace, placement strategy."""

    lease_ttl: int
    failover_grace: timedelta
    strategy: Strategy


class FleetMember:
    """Mirror, agent, registration and leader campaign of one node; see the module docstring."""

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        node: Node,
        ledger: Ledger,
        orchestrator: Orchestrator,
        reconciler: Reconciler,
        settings: MembershipSettings,
        backups: Backups | None = None,
        fence: tuple[Fence, ContainerRuntime] | None = None,
    ) -> None:
        self.node = node
        self.fleet = EtcdFleet(client, prefix, local=node.name)
        self.mirror = LedgerMirror(client, prefix, ledger)
        self.fence = fence[0] if fence is not None else None
        self._runtime = fence[1] if fence is not None else None
        self._orchestrator = orchestrator
        self.agent = Agent(node.name, ledger, orchestrator, reconciler, backups, self.fence)
        self.registry = NodeRegistry(client, prefix, node, settings.lease_ttl, lambda: allocated(ledger, node.name))
        self.leader = Leader(
            self.fleet,
            self.registry,
            ledger,
            EtcdStateStore(client, prefix),
            node.name,
            grace=settings.failover_grace,
            strategy=settings.strategy,
        )
        self._ledger = ledger
        self._campaign: asyncio.Task[None] | None = None
        self._guard: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Join the fleet.

        Raises:
            Unavailable: the environments could not be read from etcd in time.
            AlreadyExists: another live daemon has this node's name.
        """
        self.mirror.start()
        try:
            async with asyncio.timeout(SYNC_TIMEOUT):
                await self.mirror.synced.wait()
        except TimeoutError as err:
            await self.mirror.close()
            raise Unavailable(f"etcd: no snapshot of the environments within {SYNC_TIMEOUT} s") from err
        self.agent.start()
        await self.registry.join()
        self._ledger.watch(lambda before, after: self.registry.changed())
        self._campaign = asyncio.create_task(self.leader.run(), name="placement-leader")
        if self.fence is not None:
            self._guard = asyncio.create_task(self._keep_fence(self.fence), name="node-fence")
        _log.info("node.joined", node=self.node.name, address=self.node.address)

    async def _keep_fence(self, fence: Fence) -> None:
        assert self._runtime is not None
        loop = asyncio.get_running_loop()
        while True:
            await self.registry.registered.wait()
            lost = self.registry.lease
            await lost.lost.wait()
            # A node back within half the grace loses nothing (the leader waits the whole grace
            # before moving), so a short etcd election or a busy moment stops nothing.
            deadline = loop.time() + fence.delay.total_seconds()
            # Polled: ``registered`` may still be set from the lost lease until the registry notices.
            while loop.time() < deadline and not self._registered_again(lost):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            if self._registered_again(lost):
                continue
            await fence.close_in(self._ledger, self._runtime, self._orchestrator)
            while True:
                await self.registry.registered.wait()
                fence.lift()
                try:
                    await self.mirror.refresh()
                    break
                except SchedulerError as err:  # registered, yet etcd failed again: read once more
                    _log.warning("node.refresh_failed", node=self.node.name, error=err.message)
                    await asyncio.sleep(1.0)
            self.agent.resync()
            await fence.resume(self._ledger, self._orchestrator)

    def _registered_again(self, lost: Lease) -> bool:
        return self.registry.registered.is_set() and self.registry.lease is not lost

    async def close(self) -> None:
        """Leave the fleet: stop leading, deregister, stop following."""
        # The fence first: the revoked lease of a clean shutdown is no partition.
        for task in (self._guard, self._campaign):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.registry.close()
        await self.agent.close()
        await self.mirror.close()
