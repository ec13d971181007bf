"""Sleep and wake: stop an environment's processes and start them again, keeping everything else.

A stopped (sleeping) environment keeps its containers and their filesystems, its volumes, its
network (addresses, service VIPs, attachments) and its published ports; only the processes end,
and with them their shims and log writers, which is what a sleeping environment saves. This is
``docker compose stop``/``start``, not Kubernetes' ``replicas: 0`` (which would delete the pods):
the environment comes back on the same addresses, and its writable layers are kept too.

Stop first takes every service out of its rules (no backends: new connections to a published
port reach the daemon's own socket, where wake on connection holds them), then stops containers
in reverse dependency order. Start runs the containers again in dependency order, each service
health-gated before its backends are restored and before the services depending on it start.
Every task is created first, all at once (shim, log writer, ``runc create``: the slow part of a
start), or already kept created while asleep (``sleep.keep_tasks``), so that the ordered part
only starts processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from scheduler import errors, log
from scheduler.domain import (
    Condition,
    ContainerState,
    ContainerStatus,
    DependencyCondition,
    Environment,
    EnvironmentStatus,
    EventType,
    Health,
    HealthCheckKind,
    ServiceSpec,
)
from scheduler.network.wake import PortKey, Target
from scheduler.orchestrator.status import now
from scheduler.orchestrator.steps import DeployFailure, Steps
from scheduler.stacks.graph import topological_order

_log = log.get("orchestrator")

SLEEPING = "Sleeping"
"""Condition type telling whether, why and since when an environment sleeps."""
STOPPABLE = (EnvironmentStatus.RUNNING, EnvironmentStatus.DEGRADED, EnvironmentStatus.FAILED)
"""Statuses an environment can be stopped from."""


class Sleep(Steps):
    """Stops and starts one environment's containers."""

    async def stop(self, name: str, reason: str, message: str, unrouted: Callable[[], None] = lambda: None) -> bool:
        """Stop ``name``'s containers, keeping all else; False when its status no longer allows it.

        ``unrouted`` is called once no new connection is routed to the containers any more: from
        then on connections reach the daemon's own sockets, which must listen before the
        containers go (and before anyone can read STOPPED), or they would be refused.
        """
        try:
            env = await self._ledger.get(name)
        except errors.NotFound:
            return False
        if env.status not in STOPPABLE:
            return False
        for service in env.spec.services:
            try:
                await self._network.set_backends(name, service.name, [])
            except errors.NotFound:
                pass
        unrouted()
        grace = {s.name: s.stop_grace for s in env.spec.services}
        by_service: dict[str, list[ContainerStatus]] = {}
        for status in env.containers:
            by_service.setdefault(status.service, []).append(status)
        for wave in reversed(topological_order(env.spec.services)):
            await asyncio.gather(
                *(self._stop_container(name, c, grace[svc]) for svc in wave for c in by_service.get(svc, []))
            )
        condition = Condition(SLEEPING, True, reason, message, last_transition=now())
        ready = Condition("Ready", False, reason, "stopped: " + message, last_transition=now())
        await self._set_status(
            name,
            EnvironmentStatus.STOPPED,
            EventType.ENVIRONMENT_STOPPED,
            message,
            condition=condition,
            also=lambda e: replace(e, conditions=(*(c for c in e.conditions if c.type != "Ready"), ready)),
        )
        _log.info("environment.stopped", env=name, reason=reason)
        return True

    async def _stop_container(self, name: str, status: ContainerStatus, grace: timedelta) -> None:
        cid = status.container_id
        self.expected_exits.add(cid)
        code = None
        if status.state in (ContainerState.RUNNING, ContainerState.RESTARTING, ContainerState.CREATED):
            try:
                exit_status = await self._runtime.stop(cid, grace)
                code = exit_status.code
            except errors.NotFound:
                pass
            except errors.SchedulerError as err:
                _log.warning("stop.failed", container=cid, error=err.message)
        try:
            await self._runtime.release(cid)
            if self._settings.sleep_keeps_tasks:
                # Created again at once, not started: the wake then skips the slow part of a start.
                await self._runtime.prepare_start(cid)
        except errors.NotFound:
            pass
        except errors.SchedulerError as err:
            _log.warning("stop.release_failed", container=cid, error=err.message)
        await self._update_container(
            name,
            cid,
            state=ContainerState.STOPPED,
            health=Health.UNKNOWN,
            pid=0,
            exit_code=code,
            finished_at=now(),
            message="stopped: the environment sleeps",
        )
        self._observer.step(name, "stop", status.service, cid)

    async def start(self, name: str, message: str) -> dict[PortKey, Target] | None:
        """Start a stopped ``name`` again; returns where its published TCP ports lead, None if it did not come up."""
        try:
            env = await self._ledger.get(name)
        except errors.NotFound:
            return None
        if env.status is not EnvironmentStatus.STOPPED:
            return None
        self._observer.step(name, "wake", "", message)
        woken = Condition(SLEEPING, False, "Started", message, last_transition=now())
        env = await self._set_status(
            name, EnvironmentStatus.DEPLOYING, EventType.ENVIRONMENT_DEPLOYING, message, condition=woken
        )
        try:
            await self._start_services(env)
        except DeployFailure as failure:
            _log.warning("start.failed", env=name, service=failure.service, reason=failure.message)
            condition = Condition("Ready", False, failure.reason, failure.message, failure.service, now())
            await self._set_status(
                name, EnvironmentStatus.FAILED, EventType.ENVIRONMENT_FAILED, failure.message, condition=condition
            )
            return None
        ready = Condition("Ready", True, "Started", "every service is up again", last_transition=now())
        await self._set_status(name, EnvironmentStatus.RUNNING, EventType.ENVIRONMENT_RUNNING, condition=ready)
        return await self.targets(name)

    async def _start_services(self, env: Environment) -> None:
        by_service: dict[str, list[ContainerStatus]] = {}
        for status in env.containers:
            by_service.setdefault(status.service, []).append(status)
        # Every process is created at once (the slow part of a start), then started in order.
        await asyncio.gather(*(self._prepare(env.name, c) for c in env.containers))
        specs = {s.name: s for s in env.spec.services}
        completed = DependencyCondition.COMPLETED
        awaited = {d.service for s in env.spec.services for d in s.depends_on if d.condition is completed}
        for wave in topological_order(env.spec.services):
            await asyncio.gather(
                *(self._start_service(env, specs[svc], by_service.get(svc, []), svc in awaited) for svc in wave)
            )

    async def _prepare(self, name: str, status: ContainerStatus) -> None:
        try:
            await self._runtime.prepare_start(status.container_id)
        except errors.SchedulerError as err:
            raise DeployFailure(status.service, "StartFailed", f"service {status.service}: {err.message}") from err
        self._observer.step(name, "prepare", status.service, status.container_id)

    async def _start_service(
        self, env: Environment, service: ServiceSpec, replicas: list[ContainerStatus], completes: bool
    ) -> None:
        if not replicas:
            raise DeployFailure(service.name, "StartFailed", f"service {service.name} has no container to start")
        for status in replicas:
            self.expected_exits.discard(status.container_id)
        launched = await asyncio.gather(
            *(self._launch_replica(env, service, (s.replica, s.container_id, s.ip)) for s in replicas)
        )
        if service.health.kind is not HealthCheckKind.NONE:
            await asyncio.gather(*(self._await_health(env.name, service, cid, ip, t0) for cid, ip, t0 in launched))
        await self._network.set_backends(env.name, service.name, [ip for _, ip, _ in launched])
        self._observer.step(env.name, "traffic", service.name, "to " + ", ".join(ip for _, ip, _ in launched))
        if completes:
            codes = await asyncio.gather(*(self._runtime.wait(cid) for cid, _, _ in launched))
            failed = [status.code for status in codes if status.code != 0]
            if failed:
                raise DeployFailure(
                    service.name, "CompletedWithError", f"service {service.name} exited with code {failed[0]}"
                )

    async def targets(self, name: str) -> dict[PortKey, Target]:
        """Each published TCP port's first backend: where connections held while waking go."""
        env = await self._ledger.get(name)
        ips = {c.service: c.ip for c in sorted(env.containers, key=lambda c: -c.replica) if c.ip}
        targets: dict[PortKey, Target] = {}
        for endpoint in env.endpoints:
            ip = ips.get(endpoint.service)
            if ip:
                targets[(endpoint.host_ip, endpoint.host_port)] = (ip, endpoint.container_port)
        return targets
