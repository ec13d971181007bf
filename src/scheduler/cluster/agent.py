"""A node's agent: runs the environments placed on this node, from the changes stored for them.

In a fleet, any node serves the API and writes changes to etcd; only the node an environment
is placed on acts on it with its containerd. The agent turns each stored change of such an
environment into the orchestrator's operation, as the service does on a daemon running alone:

- newly placed here (created, or moved from a lost or drained node): deploy; one moved here
  with data (PostgreSQL, volumes) first gets the volumes of its latest backup from the fleet's
  shared backup directory, then the backup's database dumps once it runs, and says so in a
  ``DataRestored`` condition ("data as of TIME"), or that no backup existed;
- a new generation (an update accepted by any node): roll out the planned changes;
- marked DELETING: delete (the named volumes kept if the DeleteEnvironment, on any node, said
  ``keep_volumes``);
- a stop or start accepted by another node (``Environment.requested``): carry it out, once;
- placed elsewhere now (this node was lost, drained, or partitioned and came back): remove
  this node's containers of it, leaving its record, which belongs to the new owner.

What it acted on last is kept per environment, so a change it sees twice (its own write echoed
by the watch, a reload after a conflict) starts nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from scheduler import log
from scheduler.cluster.fence import Fence
from scheduler.cluster.leader import PLACED
from scheduler.domain import Condition, Environment, EnvironmentStatus, SleepRequest
from scheduler.errors import NotFound, SchedulerError
from scheduler.orchestrator.backup import Backups, database_mount, gated
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.orchestrator import Orchestrator
from scheduler.orchestrator.plan import plan
from scheduler.orchestrator.reconcile import Reconciler
from scheduler.orchestrator.status import now, with_condition

_log = log.get("cluster.agent")

UPDATE_DRAIN = timedelta(seconds=2)
"""How long replaced containers keep serving when an update accepted by another node rolls out."""


@dataclass(frozen=True)
class _Acted:
    """The state of an environment the agent last started an operation for."""

    env: Environment

    @property
    def deleting(self) -> bool:
        return self.env.status is EnvironmentStatus.DELETING


DATA_RESTORED = "DataRestored"
"""Condition type: from which backup the data of an environment moved to this node came."""


def moved(env: Environment) -> bool:
    """Whether the leader moved ``env`` here from a lost or drained node."""
    return any(c.type == PLACED and c.reason == "Moved" for c in env.conditions)


def holds_data(env: Environment) -> bool:
    """Whether ``env`` keeps data a move would lose: a database or any named volume."""
    return any(database_mount(s) is not None or s.volumes for s in env.spec.services)


class Agent:
    """Starts operations for the environments placed on ``node``; see the module docstring."""

    def __init__(
        self,
        node: str,
        ledger: Ledger,
        orchestrator: Orchestrator,
        reconciler: Reconciler,
        backups: Backups | None = None,
        fence: Fence | None = None,
    ) -> None:
        self.node = node
        self._backups = backups
        self._fence = fence
        self._ledger = ledger
        self._orchestrator = orchestrator
        self._reconciler = reconciler
        self._acted: dict[str, _Acted] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.evicted: list[str] = []
        """Names of environments whose stale containers this node removed (for tests and logs)."""

    def owns(self, env: Environment) -> bool:
        """Whether ``env`` is placed on this node."""
        return env.node == self.node

    def start(self) -> None:
        """Take the environments the boot reconciliation resumed as acted on, then follow changes."""
        for env in self._ledger.all():
            if self.owns(env):
                self._acted[env.name] = _Acted(env)
                if env.requested is not None:
                    self._spawn(self._carry_out(env.name, env.requested), f"{env.requested.action}:{env.name}")
        self._ledger.watch(self._changed)

    async def close(self) -> None:
        """Wait for evictions under way (they are short: a few container removals)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def resync(self) -> None:
        """Act on every environment as if it had just changed (after a fence: what was ignored)."""
        for env in list(self._ledger.all()):
            self._changed(None, env)

    def _changed(self, before: Environment | None, after: Environment | None) -> None:
        if self._fence is not None and self._fence.active:
            return  # cut off from etcd: nothing here is ours to act on; resync() catches up
        if after is None:
            if before is not None:
                self._acted.pop(before.name, None)
            return
        acted = self._acted.get(after.name)
        if acted is not None and acted.env.uid != after.uid:
            acted = None
        if not self.owns(after):
            if acted is not None:
                del self._acted[after.name]
                self._spawn(self._evict(after.name, after.node), f"evict:{after.name}")
            return
        self._act(after, acted)

    def _act(self, env: Environment, acted: _Acted | None) -> None:
        name = env.name
        if env.status is EnvironmentStatus.DELETING:
            if acted is None or not acted.deleting:
                _log.info("agent.delete", env=name)
                self._acted[name] = _Acted(env)
                self._orchestrator.submit_delete(name, keep_volumes=env.keep_volumes)
            return
        if env.requested is not None:
            self._spawn(self._carry_out(name, env.requested), f"{env.requested.action}:{name}")
        if acted is None:
            if gated(env):
                # A restore is putting its volumes in place (it lifts the gate after), or was cut
                # short with its node (moved here): never deployed on partial data.
                return
            if env.status in (EnvironmentStatus.PENDING, EnvironmentStatus.DEPLOYING):
                _log.info("agent.deploy", env=name, generation=env.generation)
                self._acted[name] = _Acted(env)
                if self._backups is not None and moved(env) and holds_data(env):
                    self._spawn(self._recover(env, self._backups), f"recover:{name}")
                else:
                    self._orchestrator.submit_deploy(name)
            return
        if env.generation > acted.env.generation:
            changes = plan(acted.env.spec, env.spec)
            _log.info("agent.update", env=name, generation=env.generation, changes=len(changes))
            previous = acted.env
            self._acted[name] = _Acted(env)
            self._orchestrator.submit_update(name, previous, changes, UPDATE_DRAIN)

    async def _carry_out(self, name: str, request: SleepRequest) -> None:
        """Stop or start ``name`` as another node was asked to; the request is taken off first, once."""
        taken = False

        def take(env: Environment) -> Environment | None:
            nonlocal taken
            if env.requested != request or not self.owns(env):
                return None
            taken = True
            return replace(env, requested=None)

        with contextlib.suppress(NotFound):
            await self._ledger.change(name, take)
        if not taken:
            return
        _log.info("agent.sleep_request", env=name, action=request.action)
        if request.action == "stop":
            self._orchestrator.submit_stop(name, "Requested", request.message)
        else:
            self._orchestrator.submit_start(name, request.message)

    async def _recover(self, env: Environment, backups: Backups) -> None:
        """Deploy an environment moved here with the data of its latest backup."""
        name = env.name
        latest = next(iter(await asyncio.to_thread(backups.list, name)), None)
        opened = None
        if latest is not None:
            try:
                path, manifest, archived, _ = await asyncio.to_thread(backups.open, latest.id)
                if archived.uid == env.uid:
                    await backups.stage(path, manifest, name)
                    opened = (path, manifest)
            except SchedulerError as err:
                _log.warning("agent.backup_unusable", env=name, backup=latest.id, error=err.message)
        self._orchestrator.submit_deploy(name)
        await self._orchestrator.wait_idle(name)
        if opened is None or latest is None:
            await self._note(name, False, "NoBackup", "no backup of this environment was found: its data starts empty")
            return
        current = self._ledger.find(name)
        if current is None or current.status is not EnvironmentStatus.RUNNING or not self.owns(current):
            return
        try:
            await backups.load_databases(opened[0], opened[1], name)
        except SchedulerError as err:
            await self._note(name, False, "RestoreFailed", f"backup {latest.id} did not load: {err.message}")
            return
        when = latest.created_at.isoformat(timespec="seconds")
        await self._note(name, True, "FromBackup", f"data as of {when} (backup {latest.id})")
        _log.info("agent.recovered", env=name, backup=latest.id)

    async def _note(self, name: str, status: bool, reason: str, message: str) -> None:
        condition = Condition(DATA_RESTORED, status, reason, message, last_transition=now())
        with contextlib.suppress(NotFound):
            await self._ledger.change(name, lambda e: replace(e, conditions=with_condition(e.conditions, condition)))

    async def _evict(self, name: str, owner: str) -> None:
        await self._orchestrator.wait_idle(name)
        removed = await self._reconciler.evict(name)
        self.evicted.append(name)
        _log.info("agent.evicted", env=name, now_on=owner or "(unplaced)", containers=len(removed))

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
