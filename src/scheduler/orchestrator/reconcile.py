"""Startup reconciliation: converge the store, containerd and the host after a crash or restart.

Runs once when the daemon starts, after the supervisor subscribed to task events and before the
orchestrator resumes unfinished operations and the API serves. Ownership is read from the labels
every container carries (``runtime.containerd.labels``), so nothing depends on in-memory state of
the previous run:

- a running container of a known environment is **adopted** as it is (same task, same pid): its
  status is refreshed and the supervisor watches it from now on;
- a container whose process died meanwhile is handed to the supervisor, which applies the
  service's restart policy;
- a container labelled ours whose environment is not in the store, or that its environment does
  not list (a crash between create and record), is removed;
- an environment left PENDING or DEPLOYING loses the containers of the interrupted attempt and is
  deployed again from its stored spec, so that the resumed deploy creates no duplicates;
- an environment interrupted in the middle of an update keeps serving from what it has: its
  listed containers are adopted, and the update is resumed as a rolling replacement of every
  service whose replicas are not all of the new generation (services it had not reached yet
  included, as nothing tells them apart from unchanged ones);
- network allocations of environments that no longer exist are released (``network.sweep``).

Volumes of environments that are gone are kept: a delete with ``keep_volumes`` leaves them on
purpose.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from scheduler import errors, labels, log
from scheduler.domain import (
    ChangeAction,
    Condition,
    ContainerInfo,
    ContainerState,
    ContainerStatus,
    Environment,
    EnvironmentStatus,
    Health,
    HistoryEntry,
    ServiceChange,
    TaskState,
)
from scheduler.network.base import NetworkManager
from scheduler.orchestrator.ledger import Ledger, Owns, owns_all
from scheduler.orchestrator.status import now, with_condition
from scheduler.orchestrator.supervisor import SUPERVISED, Operations, Supervisor
from scheduler.runtime.base import ContainerRuntime

_log = log.get("reconcile")

RESUME_DRAIN = timedelta(seconds=2)
"""How long replaced replicas keep serving in-flight requests when an update is resumed."""
_LIVE = (TaskState.RUNNING, TaskState.PAUSED, TaskState.PAUSING, TaskState.CREATED)


@dataclass
class ReconcileReport:
    """What one reconciliation did, by container id (or environment name for ``redeployed``)."""

    adopted: list[str] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)
    """Containers found dead; the supervisor applied their restart policy."""
    removed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Containers the store lists but the runtime no longer has."""
    redeployed: list[str] = field(default_factory=list)
    """Environments whose interrupted deploy starts over."""
    resumed: list[str] = field(default_factory=list)
    """Environments whose interrupted update is rolled out again."""


def interrupted_deploy(env: Environment) -> bool:
    """Whether ``env`` was left before its deploy finished."""
    return env.status in (EnvironmentStatus.PENDING, EnvironmentStatus.DEPLOYING)


def interrupted_update(env: Environment) -> bool:
    """Whether ``env`` was left in the middle of an update (accepted, not yet rolled out)."""
    return env.status in SUPERVISED and env.observed_generation < env.generation


def interrupted(env: Environment) -> bool:
    """Whether ``env`` was left in the middle of a deploy or an update."""
    return interrupted_deploy(env) or interrupted_update(env)


def unfinished_services(env: Environment, generations: dict[str, str]) -> list[ServiceChange]:
    """What a resumed update still has to roll out, from the generation label of each container.

    ``generations`` maps container ids to their generation label. A service with no container is
    added; one whose replicas are missing, not running, not (yet) healthy or of an older
    generation is replaced: the update had not switched its address to them.
    """
    current = str(env.generation)
    changes = []
    for service in env.spec.services:
        mine = [c for c in env.containers if c.service == service.name]
        if not mine:
            changes.append(ServiceChange(service.name, ChangeAction.ADD, "resumed after a restart"))
        elif len(mine) != service.replicas or any(
            generations.get(c.container_id) != current
            or c.state is not ContainerState.RUNNING
            or c.health not in (Health.HEALTHY, Health.NONE)
            for c in mine
        ):
            changes.append(ServiceChange(service.name, ChangeAction.REPLACE, "resumed after a restart"))
    return changes


class Reconciler:
    """One pass of startup reconciliation; see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        runtime: ContainerRuntime,
        network: NetworkManager,
        supervisor: Supervisor,
        operations: Operations,
        *,
        resume_drain: timedelta = RESUME_DRAIN,
        owns: Owns = owns_all,
    ) -> None:
        self._owns = owns
        self._ledger = ledger
        self._resume_drain = resume_drain
        self._runtime = runtime
        self._network = network
        self._supervisor = supervisor
        self._ops = operations

    async def run(self) -> ReconcileReport:
        """Converge once; safe to repeat (a second run finds nothing to do)."""
        started = time.monotonic()
        report = ReconcileReport()
        # In a fleet, environments placed on other nodes count as gone here: a node that comes
        # back after its environments were moved removes its stale containers.
        envs = {env.name: env for env in self._ledger.all() if self._owns(env)}
        found = await self._runtime.list({labels.OWNER: labels.OWNER_VALUE})
        by_env: dict[str, list[ContainerInfo]] = {}
        for info in found:
            by_env.setdefault(info.labels.get(labels.ENV, ""), []).append(info)

        for name, infos in by_env.items():
            if name not in envs:
                for info in infos:
                    await self._remove(name, info.id, report, "its environment no longer exists")
        resume: list[tuple[Environment, list[ServiceChange]]] = []
        for env in envs.values():
            infos = by_env.get(env.name, [])
            if env.status is EnvironmentStatus.DELETING:
                continue  # the orchestrator resumes the deletion, which removes everything
            if env.status is EnvironmentStatus.PENDING and not infos and not env.containers:
                continue  # never started: the orchestrator's start submits its deploy
            if interrupted_deploy(env):
                await self._restart_deploy(env, infos, report)
                continue
            await self._adopt_environment(env, infos, report)
            if interrupted_update(env):
                resume.append(await self._resume_update(env, infos, report))

        await self._network.sweep(list(envs))
        for env, changes in resume:
            if changes:
                self._ops.submit_update(env.name, env, changes, self._resume_drain)
        for env in envs.values():
            if env.status in SUPERVISED and not interrupted(env):
                await self._supervisor.settle(env.name)
        _log.info(
            "reconcile.done",
            adopted=len(report.adopted),
            exited=len(report.exited),
            removed=len(report.removed),
            missing=len(report.missing),
            redeployed=report.redeployed,
            resumed=report.resumed,
            seconds=round(time.monotonic() - started, 3),
        )
        return report

    async def evict(self, name: str) -> list[str]:
        """Remove this daemon's containers and network of ``name``, which runs elsewhere now.

        The environment's record is left alone: it belongs to the node it was placed on since.
        """
        report = ReconcileReport()
        for info in await self._runtime.list({labels.OWNER: labels.OWNER_VALUE, labels.ENV: name}):
            await self._remove(name, info.id, report, "its environment runs on another node now")
        await self._network.sweep([env.name for env in self._ledger.all() if self._owns(env)])
        return report.removed

    async def _adopt_environment(self, env: Environment, infos: list[ContainerInfo], report: ReconcileReport) -> None:
        listed = {c.container_id: c for c in env.containers}
        specs = {s.name: s for s in env.spec.services}
        present = {info.id: info for info in infos}
        for found in infos:
            if (listed_status := listed.get(found.id)) is None or listed_status.service not in specs:
                await self._remove(env.name, found.id, report, "its environment does not list it")
        for status in env.containers:
            spec = specs.get(status.service)
            info = present.get(status.container_id)
            if spec is None:
                continue
            if status.state is ContainerState.STOPPED and env.status is EnvironmentStatus.STOPPED:
                continue  # asleep on purpose (a task kept created for a quick wake is no process to adopt)
            if info is None:
                if status.state in (ContainerState.RUNNING, ContainerState.RESTARTING, ContainerState.CREATED):
                    await self._set(
                        env.name, status.container_id, state=ContainerState.UNKNOWN, pid=0, message="container is gone"
                    )
                    report.missing.append(status.container_id)
                continue
            if info.task_state in _LIVE and info.pid:
                if info.task_state in (TaskState.PAUSED, TaskState.PAUSING):
                    # Only a clone's copy freezes a container: a daemon stopped mid-copy must not
                    # leave its source frozen.
                    await self._runtime.resume(status.container_id)
                    _log.info("reconcile.thawed", env=env.name, container=status.container_id)
                await self._set(env.name, status.container_id, state=ContainerState.RUNNING, pid=info.pid)
                up_for = (now() - status.started_at).total_seconds() if status.started_at else 0.0
                adopted = replace(status, state=ContainerState.RUNNING, pid=info.pid)
                self._supervisor.adopt(env.name, adopted, spec, up_for=max(up_for, 0.0))
                report.adopted.append(status.container_id)
                continue
            if status.state in (ContainerState.EXITED, ContainerState.UNKNOWN):
                continue  # already accounted for (policy no, or given up)
            report.exited.append(status.container_id)
            if env.status in SUPERVISED:
                await self._supervisor.container_exited(env.name, status.container_id, status.pid, info.exit_status)
            else:
                await self._set(
                    env.name,
                    status.container_id,
                    state=ContainerState.EXITED,
                    exit_code=info.exit_status,
                    pid=0,
                    finished_at=now(),
                    message="exited while the scheduler was down",
                )

    async def _resume_update(
        self, env: Environment, infos: list[ContainerInfo], report: ReconcileReport
    ) -> tuple[Environment, list[ServiceChange]]:
        """What an interrupted update had not finished (adoption ran first), to submit after the sweep."""
        current = await self._ledger.get(env.name)
        generations = {info.id: info.labels.get(labels.GENERATION, "") for info in infos}
        changes = unfinished_services(current, generations)
        await self._ledger.append_history(
            HistoryEntry(
                env.name,
                current.generation,
                now(),
                "scheduler",
                "resume",
                "; ".join(f"{c.service}: {c.action.value.lower()}" for c in changes) or "nothing left to roll out",
            )
        )
        report.resumed.append(env.name)
        if changes:
            return current, changes

        def rolled_out(latest: Environment) -> Environment:
            condition = Condition(
                "Ready", True, "Updated", f"generation {latest.generation} rolled out", last_transition=now()
            )
            return replace(
                latest,
                observed_generation=latest.generation,
                conditions=with_condition(latest.conditions, condition),
                updated_at=now(),
            )

        await self._ledger.change(env.name, rolled_out)
        return current, changes

    async def _restart_deploy(self, env: Environment, infos: list[ContainerInfo], report: ReconcileReport) -> None:
        """Remove what an interrupted deploy or update left and queue a fresh deploy of the stored spec."""
        for info in infos:
            await self._remove(env.name, info.id, report, "its deploy was interrupted")
        was = env.status

        def redeploy(current: Environment) -> Environment:
            condition = Condition(
                "Ready",
                False,
                "Resumed",
                f"the scheduler restarted while the environment was {was.value.lower()}; deploying generation "
                f"{current.generation} again",
                last_transition=now(),
            )
            return replace(
                current,
                status=EnvironmentStatus.DEPLOYING,
                containers=(),
                conditions=with_condition(current.conditions, condition),
                updated_at=now(),
            )

        await self._ledger.change(env.name, redeploy)
        await self._ledger.append_history(
            HistoryEntry(env.name, env.generation, now(), "scheduler", "resume", f"interrupted while {was.value}")
        )
        report.redeployed.append(env.name)

    async def _remove(self, env: str, cid: str, report: ReconcileReport, why: str) -> None:
        self._ops.expected_exits.add(cid)
        _log.info("reconcile.remove", env=env, container=cid, reason=why)
        try:
            await self._runtime.delete(cid)
        except errors.SchedulerError as err:
            _log.warning("reconcile.remove_failed", container=cid, error=err.message)
            return
        with contextlib.suppress(errors.NotFound):
            await self._network.detach(env, cid)
        report.removed.append(cid)

    async def _set(self, env: str, cid: str, **changes: Any) -> ContainerStatus | None:
        return await self._ledger.change_container(env, cid, **changes)
