"""Fencing a node cut off from etcd: its environments' processes stop before they run twice.

A node that cannot renew its lease (partitioned from etcd, or etcd unreachable for it) is taken
for lost by the others: once its lease lapses and the failover grace has passed, the leader
moves its environments to live nodes. Were its containers to keep running, two copies would
run (two PostgreSQLs writing, two APIs answering). So, as Nomad's
``stop_after_client_disconnect`` and a kubelet losing its lease do, the node stops them itself:
when its lease is lost (no keep-alive answered for a whole TTL, so the cluster's copy of the
lease has lapsed or is about to) and it has not registered again within half the failover
grace (``delay``: a short etcd election stops nothing, since the leader waits the whole grace
before moving anything), it stops every task of the environments placed on it, each within a
quarter of the grace (SIGTERM, then SIGKILL), before the leader can have moved them.
Nothing is written while it is cut off (etcd is what it cannot reach); containers, volumes and
network stay.

While fenced, the node owns nothing: the supervisor restarts nothing, the orchestrator and the
agent start no operation. When it registers again it first reads what etcd holds now: the
environments moved meanwhile are evicted by its agent; those still placed on it are recorded
as stopped (``Sleeping``, reason ``Fenced``) and started again, in dependency order, health-gated.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

from scheduler import log
from scheduler.domain import Condition, ContainerState, Environment, EnvironmentStatus, Health
from scheduler.errors import NotFound, SchedulerError
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.orchestrator import Orchestrator
from scheduler.orchestrator.sleep import SLEEPING, STOPPABLE
from scheduler.orchestrator.status import now, with_condition
from scheduler.runtime.base import ContainerRuntime

_log = log.get("cluster.fence")

_LIVE = (ContainerState.RUNNING, ContainerState.RESTARTING, ContainerState.CREATED)
FENCED = "Fenced"
"""Reason of the ``Sleeping`` condition of an environment whose node was cut off from etcd."""


def to_stop(envs: list[Environment], node: str) -> dict[str, tuple[str, list[str]]]:
    """The environments a fenced ``node`` stops: by name, their uid and the containers with a process."""
    return {
        env.name: (env.uid, [c.container_id for c in env.containers if c.state in _LIVE])
        for env in envs
        if env.node == node and env.status is not EnvironmentStatus.DELETING
    }


def to_resume(fenced: dict[str, str], envs: list[Environment], node: str) -> list[str]:
    """Which of the ``fenced`` environments (uid by name) are still this node's to start again.

    One moved (or deleted, or recreated) meanwhile is not: the agent evicts it.
    """
    by_name = {env.name: env for env in envs}
    return [
        name
        for name, uid in fenced.items()
        if (env := by_name.get(name)) is not None and env.uid == uid and env.node == node and env.status in STOPPABLE
    ]


def as_fenced(env: Environment, message: str) -> Environment:
    """``env`` recorded as stopped by fencing, so that a start brings it back as from sleep."""
    at = now()
    containers = tuple(
        replace(c, state=ContainerState.STOPPED, health=Health.UNKNOWN, pid=0, finished_at=at, message=message)
        if c.state in _LIVE
        else c
        for c in env.containers
    )
    condition = Condition(SLEEPING, True, FENCED, message, last_transition=at)
    ready = Condition("Ready", False, FENCED, "stopped: " + message, last_transition=at)
    conditions = with_condition(with_condition(env.conditions, condition), ready)
    return replace(env, status=EnvironmentStatus.STOPPED, containers=containers, conditions=conditions, updated_at=at)


class Fence:
    """This node's fence: whether it is up, and stopping and resuming what it runs."""

    def __init__(self, node: str, *, failover_grace: timedelta) -> None:
        self.node = node
        self.delay = failover_grace / 2
        """How long after losing its lease the node waits to register again before it fences."""
        self.grace = failover_grace / 4
        """How long each process may take to stop on SIGTERM before SIGKILL."""
        self.active = False
        """Set from the moment the lease is lost until the node registered again and read etcd."""
        self._fenced: dict[str, str] = {}
        """Environments stopped by the fence: uid by name."""
        self.stopped: list[str] = []
        """Containers whose processes the fence stopped (for tests and logs)."""

    def owns(self, env: Environment) -> bool:
        """Whether ``env`` is this node's to run now: placed here, and the node not fenced."""
        return env.node == self.node and not self.active

    async def close_in(self, ledger: Ledger, runtime: ContainerRuntime, orchestrator: Orchestrator) -> None:
        """Fence: stop every process of the environments placed here, writing nothing."""
        self.active = True
        targets = to_stop(list(ledger.all()), self.node)
        _log.warning("node.fenced", node=self.node, environments=len(targets))
        self._fenced.update({name: uid for name, (uid, _) in targets.items()})
        cids = [cid for _, ids in targets.values() for cid in ids]
        for cid in cids:
            orchestrator.expected_exits.add(cid)
        await asyncio.gather(*(self._stop(runtime, cid) for cid in cids))

    async def _stop(self, runtime: ContainerRuntime, cid: str) -> None:
        try:
            await runtime.stop(cid, self.grace)
            await runtime.release(cid)
        except NotFound:
            pass
        except SchedulerError as err:
            _log.warning("fence.stop_failed", container=cid, error=err.message)
            return
        self.stopped.append(cid)

    def lift(self) -> None:
        """The node registered again: it owns what is placed on it once more."""
        self.active = False

    async def resume(self, ledger: Ledger, orchestrator: Orchestrator) -> list[str]:
        """Start again what the fence stopped and is still placed here (``ledger`` read from etcd anew)."""
        fenced, self._fenced = self._fenced, {}
        resumed = []
        message = "the node could not reach etcd and stopped its environments' processes"
        for name in to_resume(fenced, list(ledger.all()), self.node):
            uid = fenced[name]

            def stopped(env: Environment, uid: str = uid) -> Environment | None:
                if env.uid != uid or env.node != self.node or env.status not in STOPPABLE:
                    return None
                return as_fenced(env, message)

            try:
                after = await ledger.change(name, stopped)
            except (NotFound, SchedulerError) as err:
                _log.warning("fence.resume_failed", env=name, error=str(err))
                continue
            if after.status is EnvironmentStatus.STOPPED:
                orchestrator.submit_start(name, "the node reached etcd again")
                resumed.append(name)
        _log.info("node.unfenced", node=self.node, resumed=len(resumed), moved=len(fenced) - len(resumed))
        return resumed
