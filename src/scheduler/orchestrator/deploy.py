"""Deploy: bring every service of an environment up in dependency order.

A deploy runs one task per service. Each service task waits until every dependency reached its
condition (started, healthy, completed) within that edge's deadline, then starts its replicas
(network attach, create, start in parallel), waits for health, and only then puts the replicas
behind the service's stable address. Independent services therefore start in parallel. The first
failure cancels the rest and marks the environment FAILED with the service and the reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from scheduler import domain, errors, log
from scheduler.domain import (
    Condition,
    DependencyCondition,
    Environment,
    EnvironmentStatus,
    EventType,
    HealthCheckKind,
    ServiceSpec,
)
from scheduler.orchestrator.status import now
from scheduler.orchestrator.steps import DeployFailure, Steps

_log = log.get("orchestrator")


@dataclass
class _Milestones:
    """Per-service events that dependents wait on."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    healthy: asyncio.Event = field(default_factory=asyncio.Event)
    completed: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, condition: DependencyCondition) -> asyncio.Event:
        return {
            DependencyCondition.STARTED: self.started,
            DependencyCondition.HEALTHY: self.healthy,
            DependencyCondition.COMPLETED: self.completed,
        }[condition]


class Deploy(Steps):
    """Deploys one environment's stored spec from nothing."""

    async def _dependencies(self, service: ServiceSpec, milestones: dict[str, _Milestones]) -> None:
        for dep in service.depends_on:
            try:
                await asyncio.wait_for(milestones[dep.service].of(dep.condition).wait(), dep.deadline.total_seconds())
            except TimeoutError:
                raise DeployFailure(
                    service.name,
                    "DependencyTimeout",
                    f"service {service.name}: dependency {dep.service} did not become {dep.condition.value} "
                    f"within {dep.deadline.total_seconds():g}s",
                ) from None

    async def _unprestart(self, cid: str) -> None:
        try:
            await self._runtime.cancel_start(cid)
        except errors.SchedulerError as err:
            _log.warning("deploy.cancel_start_failed", container=cid, error=err.message)

    async def _prestart(self, env: str, service: str, cid: str) -> None:
        try:
            await self._runtime.prepare_start(cid)
        except errors.SchedulerError as err:
            _log.info("deploy.prestart_failed", env=env, service=service, container=cid, error=err.message)

    async def run(self, name: str) -> None:
        """Deploy ``name``'s stored spec; failures end as a FAILED status naming the service."""
        try:
            env = await self._ledger.get(name)
        except errors.NotFound:
            return
        if env.status is EnvironmentStatus.DELETING:
            return
        env = await self._set_status(name, EnvironmentStatus.DEPLOYING, EventType.ENVIRONMENT_DEPLOYING)
        started = time.monotonic()
        try:
            endpoints = await self._bring_up(env)
        except DeployFailure as failure:
            _log.warning("deploy.failed", env=name, service=failure.service, reason=failure.message)
            condition = Condition(
                type="Ready",
                status=False,
                reason=failure.reason,
                message=failure.message,
                service=failure.service,
                last_transition=now(),
            )
            await self._set_status(
                name, EnvironmentStatus.FAILED, EventType.ENVIRONMENT_FAILED, failure.message, condition=condition
            )
            return
        except errors.SchedulerError as err:
            _log.warning("deploy.failed", env=name, reason=err.message)
            await self._fail(name, type(err).__name__, err.message)
            return
        except Exception:  # noqa: BLE001 - a bug must not leave the environment DEPLOYING forever
            _log.exception("deploy.crashed", env=name)
            await self._fail(name, "InternalError", "the deployment hit an internal error; see the daemon log")
            return
        condition = Condition(
            type="Ready", status=True, reason="Deployed", message="every service is up", last_transition=now()
        )
        deployed = env.generation
        await self._set_status(
            name,
            EnvironmentStatus.RUNNING,
            EventType.ENVIRONMENT_RUNNING,
            condition=condition,
            also=lambda e: replace(e, endpoints=endpoints, observed_generation=deployed),
        )
        _log.info("deploy.done", env=name, seconds=round(time.monotonic() - started, 3))

    async def _fail(self, name: str, reason: str, message: str) -> None:
        condition = Condition(type="Ready", status=False, reason=reason, message=message, last_transition=now())
        await self._set_status(
            name, EnvironmentStatus.FAILED, EventType.ENVIRONMENT_FAILED, message, condition=condition
        )

    async def _bring_up(self, env: Environment) -> tuple[domain.Endpoint, ...]:
        """Bring every service up in dependency order; returns the published endpoints."""
        name = env.name
        spec = env.spec
        try:
            await self._network.ensure_environment(name, spec.network.subnet)
        except errors.SchedulerError as err:
            raise DeployFailure(getattr(err, "service", ""), type(err).__name__, err.message) from err
        milestones = {s.name: _Milestones() for s in spec.services}
        try:
            async with asyncio.TaskGroup() as group:
                for service in spec.services:
                    group.create_task(self._bring_up_service(env, service, milestones))
        except* DeployFailure as failures:
            raise failures.exceptions[0] from None
        except* Exception as crashes:
            raise crashes.exceptions[0] from None
        endpoints = [e for service in spec.services for e in await self._publish_ports(env, service)]
        return tuple(endpoints)

    async def _bring_up_service(
        self,
        env: Environment,
        service: ServiceSpec,
        milestones: dict[str, _Milestones],
    ) -> None:
        # Each service pulls its own image and gets its address in its own task: a slow pull
        # overlaps other services' start-up, and only a root's own setup precedes its start.
        image = await self._pull_image(env.name, service)
        try:
            await self._network.ensure_service(env.name, service.name, [p.container_port for p in service.ports])
        except errors.SchedulerError as err:
            raise DeployFailure(service.name, type(err).__name__, err.message) from err
        if service.depends_on:
            # Services that wait anyway prepare in the shadow of the first starts, not competing
            # with them for the CPU: the roots' start is on the critical path, this preparation is not.
            roots = [m.started for name, m in milestones.items() if name in _roots(env.spec.services)]
            await asyncio.gather(*(r.wait() for r in roots))
        prepared = await asyncio.gather(
            *(self._prepare_replica(env, service, image, index) for index in range(service.replicas))
        )
        if service.depends_on:
            # The task (shim, runc create) is set up while the dependencies come up; their being
            # ready is then followed by the exec alone. A failure here is left to the start.
            await asyncio.gather(*(self._prestart(env.name, service.name, cid) for _, cid, _ in prepared))
        try:
            await self._dependencies(service, milestones)
        except BaseException:
            if service.depends_on:
                # Tasks set up ahead must not linger as processes that never ran.
                for _, cid, _ in prepared:
                    self.expected_exits.add(cid)
                await asyncio.shield(asyncio.gather(*(self._unprestart(cid) for _, cid, _ in prepared)))
            raise
        replicas = await asyncio.gather(*(self._launch_replica(env, service, p) for p in prepared))
        mine = milestones[service.name]
        mine.started.set()
        ids_ips = list(replicas)
        if service.health.kind is not HealthCheckKind.NONE:
            await asyncio.gather(*(self._await_health(env.name, service, cid, ip, t0) for cid, ip, t0 in ids_ips))
        await self._network.set_backends(env.name, service.name, [ip for _, ip, _ in ids_ips])
        self._observer.step(env.name, "traffic", service.name, "to " + ", ".join(ip for _, ip, _ in ids_ips))
        mine.healthy.set()
        if any(
            d.condition is DependencyCondition.COMPLETED
            for s in env.spec.services
            for d in s.depends_on
            if d.service == service.name
        ):
            codes = await asyncio.gather(*(self._runtime.wait(cid) for cid, _, _ in ids_ips))
            failed = [status.code for status in codes if status.code != 0]
            if failed:
                raise DeployFailure(
                    service.name, "CompletedWithError", f"service {service.name} exited with code {failed[0]}"
                )
            mine.completed.set()


def _roots(services: Iterable[ServiceSpec]) -> set[str]:
    """Names of the services that depend on nothing."""
    return {s.name for s in services if not s.depends_on}
