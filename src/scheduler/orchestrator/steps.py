"""The steps every operation is made of: replicas prepared, started, health-gated and removed.

Deploy, rollout and teardown (each in its own module) are built from these steps and share
nothing else: none of them imports another. Every status change goes through the ledger (one
owner per environment), as a change applied to the current state.

One class over 400 lines on purpose: its methods are the shared vocabulary of those
operations and call each other (prepare, create, launch, health-gate, record, remove); split,
each part would need the others' private state.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from scheduler import domain, errors, labels, log
from scheduler.domain import (
    Condition,
    ContainerState,
    ContainerStatus,
    Environment,
    EnvironmentStatus,
    Event,
    EventType,
    Health,
    HealthCheckKind,
    ServiceSpec,
)
from scheduler.network.base import Attachment, NetworkManager
from scheduler.orchestrator import health
from scheduler.orchestrator.clone import first_start
from scheduler.orchestrator.events import EventBus
from scheduler.orchestrator.expected import ExpectedExits
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.observer import Observer, ProbeSteps
from scheduler.orchestrator.status import now, with_condition
from scheduler.orchestrator.templates import Templates
from scheduler.runtime.base import ContainerRuntime
from scheduler.stacks.graph import topological_order
from scheduler.volumes.base import VolumeStore

_log = log.get("orchestrator")


@dataclass(frozen=True)
class OrchestratorSettings:
    """What the orchestrator needs from the daemon's configuration."""

    logs_dir: Path
    """Root of per-container log directories."""
    log_max_bytes: int = 100 * 1024 * 1024
    """Size at which a container's log file is rotated."""
    log_max_files: int = 3
    """Log files kept per container and stream."""
    pull_policy: domain.PullPolicy = domain.PullPolicy.IF_NOT_PRESENT
    host_ip: str = "127.0.0.1"
    """Default host address of published ports."""
    sleep_keeps_tasks: bool = False
    """A sleeping environment's containers keep a created, unstarted task (see ``sleep.py``)."""
    deploy_concurrency: int = 0
    """Deploys and updates admitted at once; 0: from twice the CPUs, growing to 32 per CPU."""
    admission_hold: float = 60.0
    """Seconds an admitted deploy holds its slot at most before the next one is admitted anyway."""


class DeployFailure(Exception):
    """A service could not be brought up; carries the service and a machine-readable reason."""

    def __init__(self, service: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.service = service
        self.reason = reason
        self.message = message


def container_id(env: str, service: str, replica: int) -> str:
    """A fresh container id: readable, unique per container instance, valid for containerd."""
    return f"{env}.{service}.{replica}.{secrets.token_hex(3)}"


class Steps:
    """The shared steps, over the collaborators every operation needs."""

    def __init__(
        self,
        ledger: Ledger,
        runtime: ContainerRuntime,
        network: NetworkManager,
        volumes: VolumeStore,
        events: EventBus,
        settings: OrchestratorSettings,
        observer: Observer,
        expected_exits: ExpectedExits,
        *,
        templates: Templates | None = None,
    ) -> None:
        self._ledger = ledger
        self._runtime = runtime
        self._network = network
        self._volumes = volumes
        self._events = events
        self._settings = settings
        self._observer = observer
        self.expected_exits = expected_exits
        self._templates = templates

    async def _publish_ports(self, env: Environment, service: ServiceSpec) -> list[domain.Endpoint]:
        """Publish the service's published ports on the host; returns their endpoints."""
        endpoints = []
        for port in service.ports:
            if not port.publish:
                continue
            try:
                endpoint = await self._network.publish(
                    env.name,
                    service.name,
                    port.container_port,
                    host_port=port.host_port,
                    host_ip=port.host_ip or env.spec.network.host_ip or self._settings.host_ip,
                    protocol="udp" if port.protocol is domain.PortProtocol.UDP else "tcp",
                )
            except errors.SchedulerError as err:
                raise DeployFailure(service.name, "PortUnavailable", err.message) from err
            endpoints.append(endpoint)
        return endpoints

    async def _pull_image(self, env: str, service: ServiceSpec) -> domain.Image:
        fetched: dict[str, int] = {}

        def progress(update: domain.PullProgress) -> None:
            fetched[update.digest] = max(update.done, fetched.get(update.digest, 0))

        started = time.monotonic()
        try:
            image = await self._runtime.ensure_image(service.image, self._settings.pull_policy, progress)
        except errors.SchedulerError as err:
            self._observer.image_ensured("failed", time.monotonic() - started, sum(fetched.values()))
            self._observer.step(env, "pull", service.name, f"{service.image}: failed: {err.message}")
            raise DeployFailure(service.name, "ImageUnavailable", f"image {service.image}: {err.message}") from err
        outcome = "pulled" if fetched else "present"
        seconds = time.monotonic() - started
        self._observer.image_ensured(outcome, seconds, sum(fetched.values()))
        self._observer.step(
            env, "pull", service.name, f"{service.image}: {outcome}, {sum(fetched.values())} bytes in {seconds:.3f}s"
        )
        return image

    async def _start_replica(
        self, env: Environment, service: ServiceSpec, image: domain.Image, index: int
    ) -> tuple[str, str, float]:
        """Prepare and start one replica; returns its id, address and start time."""
        return await self._launch_replica(env, service, await self._prepare_replica(env, service, image, index))

    async def _prepare_replica(
        self,
        env: Environment,
        service: ServiceSpec,
        image: domain.Image,
        index: int,
        *,
        network: asyncio.Future[None] | None = None,
        prestart: bool = False,
        after: asyncio.Future[None] | None = None,
    ) -> tuple[int, str, str]:
        """Attach a new container to the network and create it, without starting it.

        This part does not depend on other services, so a deploy runs it for every service at
        once, while dependencies are still coming up. The network's slow part (the CNI plugins)
        runs alongside the rest: the container's namespace and files are reserved first, so the
        volume, the container and, with ``prestart``, its task (shim, ``runc create``) are made
        meanwhile. ``network`` is the environment's bridge being made, when it is not there yet;
        the CPU-heavy parts (the CNI plugins, the task) wait for ``after`` when it is given.
        Returns the replica index, id and address.
        """
        cid = container_id(env.name, service.name, index)
        hostname = f"{service.name}-{index}"
        await self._record(env.name, ContainerStatus(service=service.name, replica=index, container_id=cid))
        attaching: asyncio.Future[Attachment] | None = None
        created = False
        try:
            reserved = await self._network.reserve(env.name, cid, hostname)
            attaching = asyncio.ensure_future(self._attach(env.name, cid, hostname, service.name, network, after))
            paths = reserved or await attaching
            await self._create(env, service, image, index, cid, paths)
            created = True
            if after is not None:
                await asyncio.shield(after)
            if prestart:
                await self._prestart(env.name, service.name, cid)
            attachment = await attaching
        except errors.SchedulerError as err:
            await asyncio.shield(self._abandon(env.name, cid, attaching, created, prestart))
            await self._failed_replica(env.name, service.name, index, cid, err)
            raise DeployFailure(service.name, "CreateFailed", f"service {service.name}: {err.message}") from err
        except BaseException:
            await asyncio.shield(self._abandon(env.name, cid, attaching, created, prestart))
            raise
        await self._record(
            env.name,
            ContainerStatus(
                service=service.name, replica=index, container_id=cid, state=ContainerState.CREATED, ip=attachment.ip
            ),
        )
        self._publish(env, EventType.CONTAINER_CREATED, service.name, index, cid)
        self._observer.step(env.name, "create", service.name, f"{cid} at {attachment.ip}")
        return index, cid, attachment.ip

    async def _attach(
        self,
        env: str,
        cid: str,
        hostname: str,
        service: str,
        network: asyncio.Future[None] | None,
        after: asyncio.Future[None] | None = None,
    ) -> Attachment:
        await awaited(network, after)
        return await self._network.attach(env, cid, hostname=hostname, aliases=(service,))

    async def _abandon(
        self, env: str, cid: str, attaching: asyncio.Future[Attachment] | None, created: bool, prestart: bool
    ) -> None:
        """After a failed preparation: stop the attach; leave no task that never ran, no namespace of no container."""
        if attaching is not None:
            attaching.cancel()
            await asyncio.gather(attaching, return_exceptions=True)
        if created:
            # The container holds the namespace (removing the container detaches it).
            if prestart:
                await self._unprestart(cid)
            return
        try:
            await self._network.detach(env, cid)
        except errors.SchedulerError as err:
            _log.warning("deploy.detach_failed", env=env, container=cid, error=err.message)

    async def _unprestart(self, cid: str) -> None:
        """Delete a task set up ahead that will not run now (its exit is expected, not a crash)."""
        self.expected_exits.add(cid)
        try:
            await self._runtime.cancel_start(cid)
        except errors.SchedulerError as err:
            _log.warning("deploy.cancel_start_failed", container=cid, error=err.message)

    async def _prestart(self, env: str, service: str, cid: str) -> None:
        """Create the task ahead of its start; a failure here is left to the start, which tries again."""
        try:
            await self._runtime.prepare_start(cid)
        except errors.SchedulerError as err:
            _log.info("deploy.prestart_failed", env=env, service=service, container=cid, error=err.message)

    async def _create(
        self, env: Environment, service: ServiceSpec, image: domain.Image, index: int, cid: str, paths: Attachment
    ) -> None:
        """Seed the volumes and create the container (no task) in the namespace at ``paths``."""
        mounts = [
            domain.Mount("/etc/hosts", paths.hosts_path, options=("rbind", "ro")),
            domain.Mount("/etc/resolv.conf", paths.resolv_path, options=("rbind", "ro")),
        ]
        if self._templates is not None:
            # A new database volume starts as a copy of its template; the service may then
            # run a first-start step before the image's entrypoint.
            before = time.monotonic()
            prepared = await self._templates.prepare(env.name, service, image)
            if prepared is not service:
                seconds = time.monotonic() - before
                self._observer.step(env.name, "template", service.name, f"first start of a copy, {seconds:.3f}s")
            service = prepared
        # A clone's database still holds its source's password: its first start sets its own.
        service = await first_start(self._volumes, env.name, service, image)
        for volume in service.volumes:
            source = await asyncio.to_thread(self._volumes.ensure, env.name, volume.name)
            mounts.append(domain.Mount(volume.path, str(source), options=("rbind", "ro" if volume.read_only else "rw")))
        config = domain.ContainerConfig(
            id=cid,
            image=image,
            labels={
                labels.OWNER: labels.OWNER_VALUE,
                labels.ENV: env.name,
                labels.SERVICE: service.name,
                labels.REPLICA: str(index),
                labels.GENERATION: str(env.generation),
            },
            command=service.command,
            args=service.args,
            env=service.env,
            user=service.user,
            working_dir=service.working_dir,
            hostname=paths.hostname,
            mounts=tuple(mounts),
            netns_path=paths.netns_path,
            resources=service.resources,
            read_only_rootfs=service.read_only_rootfs,
            security=service.security,
            log_dir=str(self._settings.logs_dir / env.name / cid),
            log_max_bytes=self._settings.log_max_bytes,
            log_max_files=self._settings.log_max_files,
            group=env.name,
        )
        await self._runtime.create(config)

    async def _launch_replica(
        self, env: Environment, service: ServiceSpec, prepared: tuple[int, str, str]
    ) -> tuple[str, str, float]:
        """Start a prepared replica; returns its id, address and start time (monotonic clock)."""
        index, cid, ip = prepared
        try:
            pid = await self._runtime.start(cid)
        except errors.SchedulerError as err:
            await self._failed_replica(env.name, service.name, index, cid, err)
            raise DeployFailure(service.name, "StartFailed", f"service {service.name}: {err.message}") from err
        self._observer.step(env.name, "start", service.name, f"{cid} pid {pid}")
        started = time.monotonic()
        health_state = Health.NONE if service.health.kind is HealthCheckKind.NONE else Health.STARTING
        await self._record(
            env.name,
            ContainerStatus(
                service=service.name,
                replica=index,
                container_id=cid,
                state=ContainerState.RUNNING,
                health=health_state,
                pid=pid,
                ip=ip,
                started_at=now(),
            ),
        )
        self._publish(env, EventType.CONTAINER_STARTED, service.name, index, cid)
        return cid, ip, started

    async def _failed_replica(self, name: str, service: str, index: int, cid: str, err: errors.SchedulerError) -> None:
        await self._record(
            name,
            ContainerStatus(
                service=service, replica=index, container_id=cid, state=ContainerState.UNKNOWN, message=err.message
            ),
        )

    async def _await_health(self, name: str, service: ServiceSpec, cid: str, ip: str, started: float) -> None:
        """Wait until the replica passes its health check, then record it healthy."""
        detail = await self._probe_until_healthy(name, service, cid, ip, started)
        await self._mark_healthy(name, service.name, cid, detail)

    async def _probe_until_healthy(self, name: str, service: ServiceSpec, cid: str, ip: str, started: float) -> str:
        """Probe the replica until it is healthy (returns the probe's detail) or unhealthy (DeployFailure)."""
        try:
            probes = ProbeSteps(self._observer, name, service.name, cid)
            result = await health.wait_healthy(service.health, self._runtime, cid, ip, started, probes)
        except health.Unhealthy as unhealthy:
            self._observer.step(name, "unhealthy", service.name, f"{cid}: {unhealthy.detail}")
            await self._update_container(name, cid, health=Health.UNHEALTHY, message=unhealthy.detail)
            self._events.publish(
                Event(
                    EventType.CONTAINER_UNHEALTHY,
                    name,
                    now(),
                    service=service.name,
                    container_id=cid,
                    message=unhealthy.detail,
                )
            )
            raise DeployFailure(
                service.name, "HealthCheckFailed", f"service {service.name} is unhealthy: {unhealthy.detail}"
            ) from None
        self._observer.step(name, "healthy", service.name, cid)
        return result.detail

    async def _mark_healthy(self, name: str, service: str, cid: str, detail: str) -> None:
        """Record a replica healthy and tell the event stream."""
        await self._update_container(name, cid, health=Health.HEALTHY, message=detail)
        self._events.publish(Event(EventType.CONTAINER_HEALTHY, name, now(), service=service, container_id=cid))

    async def _containers_of(self, name: str, service: str) -> list[ContainerStatus]:
        env = await self._ledger.get(name)
        return [c for c in env.containers if c.service == service]

    async def _restore_statuses(self, name: str, serving: list[ContainerStatus], failed: set[str]) -> None:
        """After a failed replacement, list again the replicas that kept serving (the new ones took their slots)."""
        slots = {(c.service, c.replica) for c in serving}

        def change(env: Environment) -> Environment:
            others = [c for c in env.containers if c.container_id not in failed and (c.service, c.replica) not in slots]
            containers = tuple(sorted([*others, *serving], key=lambda c: (c.service, c.replica)))
            return replace(env, containers=containers, updated_at=now())

        await self._ledger.change(name, change)

    async def _forget_retired(self, name: str, retired: set[str], started: set[str]) -> None:
        """Drop statuses of removed containers (a started one may have taken their replica slot)."""

        def change(env: Environment) -> Environment:
            kept = tuple(c for c in env.containers if c.container_id not in retired or c.container_id in started)
            return replace(env, containers=kept, updated_at=now())

        await self._ledger.change(name, change)

    async def _remove_containers(self, name: str, env: Environment) -> None:
        """Stop and remove every container of ``name`` in reverse dependency order."""
        found = await self._runtime.list({labels.ENV: name})
        by_service: dict[str, list[str]] = {}
        for info in found:
            by_service.setdefault(info.labels.get(labels.SERVICE, ""), []).append(info.id)
        grace = {s.name: s.stop_grace for s in env.spec.services}
        order = topological_order(env.spec.services)
        ordered = [svc for wave in order for svc in wave]
        leftovers = [[svc] for svc in by_service if svc not in ordered]
        for wave in [*leftovers, *reversed(order)]:
            await asyncio.gather(
                *(
                    self._remove_container(name, cid, grace.get(svc, timedelta(seconds=10)))
                    for svc in wave
                    for cid in by_service.get(svc, [])
                )
            )

    async def _remove_container(self, name: str, cid: str, grace: timedelta) -> None:
        self.expected_exits.add(cid)
        try:
            await self._runtime.stop(cid, grace)
        except errors.NotFound:
            pass
        except errors.SchedulerError as err:
            _log.warning("stop.failed", container=cid, error=err.message)
        await self._runtime.delete(cid)
        await self._network.detach(name, cid)
        self._observer.step(name, "remove", "", cid)
        self._events.publish(Event(EventType.CONTAINER_REMOVED, name, now(), container_id=cid))

    async def _set_status(
        self,
        name: str,
        status: EnvironmentStatus,
        event: EventType,
        message: str = "",
        *,
        condition: Condition | None = None,
        also: Callable[[Environment], Environment] = lambda env: env,
    ) -> Environment:
        """Set the status (and ``condition``, and what ``also`` changes) unless a deletion took over."""
        deleting = False

        def change(current: Environment) -> Environment | None:
            nonlocal deleting
            if current.status is EnvironmentStatus.DELETING:
                # A deletion was accepted meanwhile; it owns the status from now on.
                deleting = True
                return None
            conditions = current.conditions if condition is None else with_condition(current.conditions, condition)
            return also(replace(current, status=status, conditions=conditions, updated_at=now()))

        updated = await self._ledger.change(name, change)
        if not deleting:
            self._events.publish(Event(event, name, now(), message=message, generation=updated.generation))
        return updated

    async def _record(self, name: str, status: ContainerStatus) -> None:
        """Store one replica's status, replacing the previous status of that service replica."""

        def change(env: Environment) -> Environment:
            others = [c for c in env.containers if not (c.service == status.service and c.replica == status.replica)]
            containers = sorted([*others, status], key=lambda c: (c.service, c.replica))
            return replace(env, containers=tuple(containers), updated_at=now())

        await self._ledger.change(name, change)

    async def _update_container(self, name: str, cid: str, **changes: Any) -> None:
        await self._ledger.change_container(name, cid, **changes)

    def _publish(self, env: Environment, kind: EventType, service: str, replica: int, cid: str) -> None:
        self._events.publish(
            Event(
                kind,
                env.name,
                now(),
                service=service,
                replica=replica,
                container_id=cid,
                generation=env.generation,
            )
        )


async def awaited(*futures: asyncio.Future[None] | None) -> None:
    """Wait for each of ``futures`` given, shielded: they are shared, and a cancelled waiter leaves them running."""
    for future in futures:
        if future is not None:
            await asyncio.shield(future)
