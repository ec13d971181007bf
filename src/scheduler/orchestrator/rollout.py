"""Rollout: update, scale and roll back a running environment without a gap in service.

Services move to their new spec in dependency order, each with no gap (new replicas start and
pass their health gate before the service's address switches to them; stateful services stop
first: one writer per volume). A failure rolls the services already moved back to the previous
spec and records why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from scheduler import domain, errors, log
from scheduler.domain import (
    Condition,
    Environment,
    EnvironmentStatus,
    EventType,
    HealthCheckKind,
    HistoryEntry,
    ServiceSpec,
)
from scheduler.orchestrator.status import now
from scheduler.orchestrator.steps import DeployFailure, Steps
from scheduler.stacks.graph import topological_order

_log = log.get("orchestrator")


class Rollout(Steps):
    """Rolls a stored spec change out (``redeploy`` starts over when there was nothing to keep)."""

    def __init__(self, *args: Any, redeploy: Callable[[str], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._redeploy = redeploy

    async def run(
        self, name: str, previous: Environment, changes: list[domain.ServiceChange], drain: timedelta
    ) -> None:
        try:
            env = await self._ledger.get(name)
        except errors.NotFound:
            return
        if previous.status is EnvironmentStatus.FAILED:
            # Nothing reliable to keep serving: start over with the new spec.
            await self._remove_containers(name, previous)
            await self._redeploy(name)
            return
        actions = {c.service: c.action for c in changes}
        done: list[ServiceSpec] = []
        old_services = {s.name: s for s in previous.spec.services}
        try:
            for wave in topological_order(env.spec.services):
                for service_name in wave:
                    service = next(s for s in env.spec.services if s.name == service_name)
                    action = actions.get(service_name, domain.ChangeAction.KEEP)
                    if action is domain.ChangeAction.KEEP:
                        continue
                    await self._roll_service(env, service, old_services.get(service_name), action, drain)
                    done.append(service)
            for change in changes:
                if change.action is domain.ChangeAction.REMOVE:
                    await self._retire_service(env, old_services[change.service], drain)
        except DeployFailure as failure:
            _log.warning("update.failed", env=name, service=failure.service, reason=failure.message)
            await self._roll_back(name, previous, env, failure, done, drain)
            return
        endpoints = await self._network.endpoints(name)
        rolled_out = env.generation
        await self._set_status(
            name,
            EnvironmentStatus.RUNNING,
            EventType.ENVIRONMENT_RUNNING,
            condition=Condition("Ready", True, "Updated", f"generation {rolled_out} rolled out", last_transition=now()),
            also=lambda e: replace(e, observed_generation=rolled_out, endpoints=endpoints),
        )
        _log.info("update.done", env=name, generation=rolled_out)

    async def _roll_service(
        self,
        env: Environment,
        service: ServiceSpec,
        old: ServiceSpec | None,
        action: domain.ChangeAction,
        drain: timedelta,
    ) -> None:
        """Bring ``service`` to its new spec with no gap in service (stateful ones stop first)."""
        image = await self._pull_image(env.name, service)
        current = await self._containers_of(env.name, service.name)
        if action is domain.ChangeAction.ADD:
            await self._network.ensure_service(env.name, service.name, [p.container_port for p in service.ports])
        if service.stateful and current:
            # One writer per volume: the old container stops before its replacement starts.
            for replica in current:
                await self._remove_container(env.name, replica.container_id, (old or service).stop_grace)
            current = []
        keep = [c for c in current if c.replica < service.replicas] if action is domain.ChangeAction.SCALE else []
        retire = [c for c in current if c not in keep]
        indices = [i for i in range(service.replicas) if i not in {c.replica for c in keep}]
        started = await asyncio.gather(*(self._start_replica(env, service, image, i) for i in indices))
        if service.health.kind is not HealthCheckKind.NONE:
            try:
                await asyncio.gather(*(self._await_health(env.name, service, cid, ip, t0) for cid, ip, t0 in started))
            except DeployFailure:
                for cid, _, _ in started:
                    await self._remove_container(env.name, cid, timedelta(seconds=1))
                await self._restore_statuses(env.name, current, {cid for cid, _, _ in started})
                raise
        # The switch: the VIP and published ports move to the new set in one rule swap.
        backends = [c.ip for c in keep] + [ip for _, ip, _ in started]
        await self._network.set_backends(env.name, service.name, backends)
        self._observer.step(env.name, "traffic", service.name, "moved to " + ", ".join(backends))
        if action is domain.ChangeAction.ADD:
            await self._publish_ports(env, service)
        if retire:
            await asyncio.sleep(drain.total_seconds())
            await asyncio.gather(
                *(self._remove_container(env.name, c.container_id, service.stop_grace) for c in retire)
            )
        await self._forget_retired(env.name, {c.container_id for c in retire}, {cid for cid, _, _ in started})

    async def _retire_service(self, env: Environment, service: ServiceSpec, drain: timedelta) -> None:
        current = await self._containers_of(env.name, service.name)
        await self._network.set_backends(env.name, service.name, [])
        await asyncio.sleep(drain.total_seconds())
        for replica in current:
            await self._remove_container(env.name, replica.container_id, service.stop_grace)
        await self._forget_retired(env.name, {c.container_id for c in current}, set())

    async def _roll_back(
        self,
        name: str,
        previous: Environment,
        attempted: Environment,
        failure: DeployFailure,
        done: list[ServiceSpec],
        drain: timedelta,
    ) -> None:
        """Put the services already moved back on their previous spec; the failed one never switched."""
        old_services = {s.name: s for s in previous.spec.services}
        rollback_error = ""
        for service in reversed(done):
            old = old_services.get(service.name)
            try:
                if old is None:
                    await self._retire_service(attempted, service, drain)
                else:
                    await self._roll_service(previous, old, service, domain.ChangeAction.REPLACE, drain)
            except DeployFailure as err:
                rollback_error = f"; rolling back {service.name} failed too: {err.message}"
        condition = Condition(
            "RolledBack",
            True,
            failure.reason,
            f"generation {attempted.generation} rolled back: {failure.message}{rollback_error}",
            service=failure.service,
            last_transition=now(),
        )

        def restore(env: Environment) -> Environment:
            return replace(
                env,
                spec=previous.spec,
                request=previous.request,
                generation=env.generation + 1,
                observed_generation=env.generation + 1,
            )

        status = EnvironmentStatus.DEGRADED if rollback_error else EnvironmentStatus.RUNNING
        rolled = await self._set_status(
            name, status, EventType.ENVIRONMENT_ROLLED_BACK, failure.message, condition=condition, also=restore
        )
        await self._ledger.append_history(
            HistoryEntry(name, rolled.generation, now(), "scheduler", "rollback", failure.message)
        )
