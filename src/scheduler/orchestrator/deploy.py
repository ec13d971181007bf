"""Deploy: bring every service of an environment up in dependency order.

A deploy runs one task per service. The services that depend on nothing prepare at once, the
others once those are prepared: image, stable address and published ports, then the replicas
(namespace reserved, volume seeded, container and task created while the CNI plugins run). Each
then waits until every dependency reached its condition (started, healthy, completed) within
that edge's deadline, starts its processes, waits for health, and only then puts the replicas
behind the service's stable address. The critical path is thus the roots' preparation, then
for each service in turn an exec, its start and its health. The first failure cancels the rest
and marks the environment FAILED with the service and the reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

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
from scheduler.orchestrator.steps import DeployFailure, Steps, awaited

_log = log.get("orchestrator")
A = TypeVar("A")
B = TypeVar("B")


@dataclass
class _Milestones:
    """Per-service events that dependents wait on."""

    prepared: asyncio.Event = field(default_factory=asyncio.Event)
    """Its containers and their tasks are set up (not started)."""
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
        # The environment's bridge is made while the services check their images: neither needs the other.
        network = asyncio.ensure_future(self._ensure_network(env))
        milestones = {s.name: _Milestones() for s in env.spec.services}
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._bring_up_service(env, service, milestones, network))
                    for service in env.spec.services
                ]
        except ExceptionGroup as group:
            # Not ``except*``: before Python 3.11.4 (Debian's is 3.11.2) what an ``except*`` clause
            # raises comes out wrapped in another ExceptionGroup, and a failed start looked like a crash.
            failures, _ = group.split(DeployFailure)
            raise _first(failures if failures is not None else group) from None
        finally:
            network.cancel()
            await asyncio.gather(network, return_exceptions=True)
        return tuple(e for task in tasks for e in task.result())

    async def _ensure_network(self, env: Environment) -> None:
        try:
            await self._network.ensure_environment(env.name, env.spec.network.subnet)
        except errors.SchedulerError as err:
            raise DeployFailure(getattr(err, "service", ""), type(err).__name__, err.message) from err

    async def _address(
        self, env: Environment, service: ServiceSpec, network: asyncio.Future[None], after: asyncio.Future[None] | None
    ) -> list[domain.Endpoint]:
        """The service's stable address and its published ports, once the bridge exists and ``after`` is done."""
        await awaited(network, after)
        try:
            await self._network.ensure_service(env.name, service.name, [p.container_port for p in service.ports])
        except errors.SchedulerError as err:
            raise DeployFailure(service.name, type(err).__name__, err.message) from err
        # Published now, like `docker run -p` or a Service's node port: the address is known (and
        # refuses connections) while the service comes up, and takes traffic the moment its
        # backends are set, with no rule change left between healthy and served.
        endpoints = await self._publish_ports(env, service)
        if endpoints:
            await self._ledger.change(
                env.name,
                lambda e: replace(e, endpoints=(*(x for x in e.endpoints if x.service != service.name), *endpoints)),
            )
        return endpoints

    async def _prepare_replicas(
        self,
        env: Environment,
        service: ServiceSpec,
        image: domain.Image,
        network: asyncio.Future[None],
        made: list[str],
        after: asyncio.Future[None] | None,
    ) -> list[tuple[int, str, str]]:
        """Prepare every replica with its task set up ahead; ``made`` collects their ids as they are ready."""

        async def one(index: int) -> tuple[int, str, str]:
            prepared = await self._prepare_replica(
                env, service, image, index, network=network, prestart=True, after=after
            )
            made.append(prepared[1])
            return prepared

        return await asyncio.gather(*(one(index) for index in range(service.replicas)))

    async def _bring_up_service(
        self,
        env: Environment,
        service: ServiceSpec,
        milestones: dict[str, _Milestones],
        network: asyncio.Future[None],
    ) -> list[domain.Endpoint]:
        """Bring one service up once its dependencies allow; returns its published endpoints.

        A service that depends on others creates its containers at once, but sets up the rest
        (address and ports, network attachment, tasks) once the services that depend on nothing
        are prepared, not started: with PostgreSQL from a template they are healthy about a
        tenth of a second after their start, about what a dependent's set-up takes, so it
        overlaps their start; and it leaves them the machine while they prepare, which on a busy
        host (three task set-ups at once on two cores) is most of a deploy. A container's
        creation is mostly waiting on containerd, so it goes ahead of that.
        """
        image = await self._pull_image(env.name, service)
        roots = _roots(env.spec.services) if service.depends_on else set()
        after = asyncio.ensure_future(_all_set(m.prepared for name, m in milestones.items() if name in roots))
        # Every task is set up (shim, runc create) while the network, the dependencies and the
        # other services come up; a service's turn is then followed by the exec alone.
        made: list[str] = []
        try:
            endpoints, prepared = await _both(
                self._address(env, service, network, after),
                self._prepare_replicas(env, service, image, network, made, after),
            )
            milestones[service.name].prepared.set()
            await self._dependencies(service, milestones)
        except BaseException:
            # Tasks set up ahead must not linger as processes that never ran.
            await asyncio.shield(asyncio.gather(*(self._unprestart(cid) for cid in made)))
            raise
        finally:
            after.cancel()
        replicas = await asyncio.gather(*(self._launch_replica(env, service, p) for p in prepared))
        mine = milestones[service.name]
        mine.started.set()
        ids_ips = list(replicas)
        marks: list[asyncio.Future[None]] = []
        if service.health.kind is not HealthCheckKind.NONE:
            marks = await asyncio.gather(*(self._checked(env.name, service, cid, ip, t0) for cid, ip, t0 in ids_ips))
        # Traffic goes to the replicas while their statuses are written: the supervisor leaves a
        # deploying environment's traffic to the deploy, and looks at it again once it is RUNNING.
        await asyncio.gather(self._network.set_backends(env.name, service.name, [ip for _, ip, _ in ids_ips]), *marks)
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
        return endpoints

    async def _checked(
        self, name: str, service: ServiceSpec, cid: str, ip: str, started: float
    ) -> asyncio.Future[None]:
        """Probe a replica until it is healthy; returns its healthy status being recorded."""
        detail = await self._probe_until_healthy(name, service, cid, ip, started)
        return asyncio.ensure_future(self._mark_healthy(name, service.name, cid, detail))


async def _both(first: Coroutine[Any, Any, A], second: Coroutine[Any, Any, B]) -> tuple[A, B]:
    """Run two steps at once; the first failure cancels the other and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            one = group.create_task(first)
            two = group.create_task(second)
    except BaseExceptionGroup as failed:
        raise _first(failed) from None
    return one.result(), two.result()


async def _all_set(events: Iterable[asyncio.Event]) -> None:
    """Until every one of ``events`` is set."""
    for event in list(events):
        await event.wait()


def _roots(services: Iterable[ServiceSpec]) -> set[str]:
    """Names of the services that depend on nothing."""
    return {s.name for s in services if not s.depends_on}


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first failure of a (possibly nested) task group."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf
