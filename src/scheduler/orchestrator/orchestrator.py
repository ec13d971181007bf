"""Dependency-ordered deploy and teardown of environments, one operation per environment at a time.

A deploy runs one task per service. Each service task waits until every dependency reached its
condition (started, healthy, completed) within that edge's deadline, then starts its replicas
(network attach, create, start in parallel), waits for health, and only then puts the replicas
behind the service's stable address. Independent services therefore start in parallel. The first
failure cancels the rest and marks the environment FAILED with the service and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from scheduler import domain, errors, log
from scheduler.domain import (
    Condition,
    ContainerState,
    ContainerStatus,
    DependencyCondition,
    Environment,
    EnvironmentStatus,
    Event,
    EventType,
    Health,
    HealthCheckKind,
    HistoryEntry,
    ServiceSpec,
)
from scheduler.network.base import NetworkManager
from scheduler.orchestrator import health
from scheduler.orchestrator.events import EventBus
from scheduler.orchestrator.logs import remove_logs
from scheduler.orchestrator.observer import NULL_OBSERVER, Observer
from scheduler.orchestrator.status import now, with_condition
from scheduler.orchestrator.supervisor import ExpectedExits
from scheduler.runtime.base import ContainerRuntime
from scheduler.runtime.containerd import labels
from scheduler.stacks.graph import topological_order
from scheduler.storage.base import StateStore
from scheduler.volumes import VolumeStore

_log = log.get("orchestrator")


TTL_CHECK_SECONDS = 2.0
"""How often environments are checked for an expired time to live."""


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


class DeployFailure(Exception):
    """A service could not be brought up; carries the service and a machine-readable reason."""

    def __init__(self, service: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.service = service
        self.reason = reason
        self.message = message


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


def container_id(env: str, service: str, replica: int) -> str:
    """A fresh container id: readable, unique per container instance, valid for containerd."""
    return f"{env}.{service}.{replica}.{secrets.token_hex(3)}"


class Orchestrator:
    """Runs deploys and deletions in the background, serialised per environment."""

    def __init__(
        self,
        store: StateStore,
        runtime: ContainerRuntime,
        network: NetworkManager,
        volumes: VolumeStore,
        events: EventBus,
        settings: OrchestratorSettings,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        self._observer = observer
        self._store = store
        self._runtime = runtime
        self._network = network
        self._volumes = volumes
        self._events = events
        self._settings = settings
        self._locks: dict[str, asyncio.Lock] = {}
        self._operations: dict[str, asyncio.Task[None]] = {}
        self._status_lock: dict[str, asyncio.Lock] = {}
        self._closed = False
        self._expiry: asyncio.Task[None] | None = None
        self.expected_exits = ExpectedExits()
        """Containers being stopped on purpose; the supervisor does not treat their exits as failures."""

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume operations a previous run left unfinished (deploys and deletions)."""
        token = ""
        while True:
            page, token = await self._store.list(page_size=200, page_token=token)
            for env in page:
                if env.status in (EnvironmentStatus.PENDING, EnvironmentStatus.DEPLOYING):
                    _log.info("resume.deploy", env=env.name)
                    self.submit_deploy(env.name)
                elif env.status is EnvironmentStatus.DELETING:
                    _log.info("resume.delete", env=env.name)
                    self.submit_delete(env.name, keep_volumes=False)
            if not token:
                break
        self._expiry = asyncio.create_task(self._expire_loop(), name="ttl-expiry")

    async def _expire_loop(self) -> None:
        """Delete environments whose TTL ran out (checked every few seconds while the daemon runs)."""
        while not self._closed:
            try:
                await self.expire_due(now())
            except errors.SchedulerError as err:
                _log.warning("ttl.check_failed", error=err.message)
            await asyncio.sleep(TTL_CHECK_SECONDS)

    async def expire_due(self, at: datetime) -> list[str]:
        """Start deleting every environment whose ``created_at + ttl`` is past; returns their names."""
        expired = []
        token = ""
        while True:
            page, token = await self._store.list(page_size=200, page_token=token)
            for env in page:
                ttl = env.request.ttl if env.request is not None else env.spec.ttl
                if ttl is None or env.created_at is None or env.status is EnvironmentStatus.DELETING:
                    continue
                if env.created_at + ttl <= at:
                    expired.append(env.name)
            if not token:
                break
        for name in expired:
            async with self.status_lock(name):
                env = await self._store.get(name)
                await self._store.put(replace(env, status=EnvironmentStatus.DELETING, updated_at=at))
            await self._store.append_history(
                HistoryEntry(name, env.generation, at, "scheduler", "delete", "time to live expired")
            )
            _log.info("ttl.expired", env=name)
            self.submit_delete(name, keep_volumes=False)
        return expired

    async def close(self) -> None:
        """Cancel running operations; their environments are resumed by the next :meth:`start`."""
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
        tasks = list(self._operations.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def logs_dir(self) -> Path:
        """Root of the per-container log directories."""
        return self._settings.logs_dir

    async def sample_metrics(self, env: Environment, window: timedelta) -> list[domain.ContainerSample]:
        """Sample the environment's running containers twice, ``window`` apart, for CPU rates."""
        owners = {c.container_id: c for c in env.containers if c.state is ContainerState.RUNNING}
        if not owners:
            return []
        first = {m.container_id: m for m in await self._runtime.metrics(list(owners))}
        await asyncio.sleep(window.total_seconds())
        samples = []
        for metrics in await self._runtime.metrics(list(owners)):
            owner = owners[metrics.container_id]
            before = first.get(metrics.container_id)
            cores = 0.0
            if before is not None:
                elapsed = (metrics.at - before.at).total_seconds() or window.total_seconds()
                cores = max(0.0, (metrics.cpu_usage_ns - before.cpu_usage_ns) / 1e9 / elapsed)
            samples.append(domain.ContainerSample(owner.service, owner.replica, metrics, round(cores, 4)))
        return sorted(samples, key=lambda s: (s.service, s.replica))

    # --- operations --------------------------------------------------------------------------------

    def submit_deploy(self, name: str) -> None:
        """Deploy ``name`` in the background."""
        self._submit(name, lambda: self._observed("deploy", name, lambda: self._deploy(name)))

    def submit_delete(self, name: str, keep_volumes: bool) -> None:
        """Delete ``name`` in the background, cancelling a deploy that is under way."""
        running = self._operations.get(name)
        if running is not None and not running.done():
            running.cancel()
        self._submit(name, lambda: self._observed("delete", name, lambda: self._delete(name, keep_volumes)))

    async def _observed(self, operation: str, name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run one operation and tell the observer how long it took and how it ended."""
        started = time.monotonic()
        stack = ""
        outcome = "failed"
        with contextlib.suppress(errors.NotFound):
            stack = (await self._store.get(name)).spec.stack
        try:
            await body()
            outcome = await self._outcome(operation, name)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            if stack:
                self._observer.operation_finished(operation, stack, outcome, time.monotonic() - started)

    async def _outcome(self, operation: str, name: str) -> str:
        try:
            env = await self._store.get(name)
        except errors.NotFound:
            return "succeeded" if operation == "delete" else "cancelled"
        if operation == "delete":
            return "failed"
        if env.status is EnvironmentStatus.FAILED:
            return "failed"
        if operation == "update" and _rolled_back_last(env):
            return "rolled_back"
        return "succeeded"

    def busy(self, name: str) -> bool:
        """Whether a deploy, update or delete runs on ``name`` (the supervisor then leaves its status alone)."""
        task = self._operations.get(name)
        return task is not None and not task.done()

    def status_lock(self, name: str) -> asyncio.Lock:
        """The lock serialising read-modify-write of ``name``'s stored status, shared with the supervisor."""
        return self._status_lock.setdefault(name, asyncio.Lock())

    async def wait_idle(self, name: str) -> None:
        """Wait until no operation runs on ``name`` (for tests and shutdown)."""
        while (task := self._operations.get(name)) is not None and not task.done():
            await asyncio.gather(task, return_exceptions=True)

    def _submit(self, name: str, operation: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._closed:
            raise errors.Unavailable("the daemon is shutting down")
        lock = self._locks.setdefault(name, asyncio.Lock())

        async def serialised() -> None:
            async with lock:
                await operation()

        task = asyncio.create_task(serialised(), name=f"env:{name}")
        self._operations[name] = task
        task.add_done_callback(lambda t: self._finished(name, t))

    def _finished(self, name: str, task: asyncio.Task[None]) -> None:
        if self._operations.get(name) is task:
            del self._operations[name]
        if not task.cancelled() and task.exception() is not None:
            _log.error("operation.crashed", env=name, exc_info=task.exception())

    # --- deploy -------------------------------------------------------------------------------------

    async def _deploy(self, name: str) -> None:
        try:
            env = await self._store.get(name)
        except errors.NotFound:
            return
        if env.status is EnvironmentStatus.DELETING:
            return
        env = await self._set_status(env, EnvironmentStatus.DEPLOYING, EventType.ENVIRONMENT_DEPLOYING)
        started = time.monotonic()
        try:
            env = await self._bring_up(env)
        except DeployFailure as failure:
            _log.warning("deploy.failed", env=name, service=failure.service, reason=failure.message)
            env = await self._refresh(name)
            condition = Condition(
                type="Ready",
                status=False,
                reason=failure.reason,
                message=failure.message,
                service=failure.service,
                last_transition=now(),
            )
            env = replace(env, conditions=with_condition(env.conditions, condition))
            await self._set_status(env, EnvironmentStatus.FAILED, EventType.ENVIRONMENT_FAILED, failure.message)
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
        env = replace(env, conditions=with_condition(env.conditions, condition), observed_generation=env.generation)
        await self._set_status(env, EnvironmentStatus.RUNNING, EventType.ENVIRONMENT_RUNNING)
        _log.info("deploy.done", env=name, seconds=round(time.monotonic() - started, 3))

    async def _fail(self, name: str, reason: str, message: str) -> None:
        env = await self._refresh(name)
        condition = Condition(type="Ready", status=False, reason=reason, message=message, last_transition=now())
        env = replace(env, conditions=with_condition(env.conditions, condition))
        await self._set_status(env, EnvironmentStatus.FAILED, EventType.ENVIRONMENT_FAILED, message)

    async def _bring_up(self, env: Environment) -> Environment:
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
        env = await self._refresh(name)
        return replace(env, endpoints=tuple(endpoints))

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
                    protocol="udp" if port.protocol is domain.Protocol.UDP else "tcp",
                )
            except errors.SchedulerError as err:
                raise DeployFailure(service.name, "PortUnavailable", err.message) from err
            endpoints.append(endpoint)
        return endpoints

    async def _pull_image(self, service: ServiceSpec) -> domain.Image:
        fetched: dict[str, int] = {}

        def progress(update: domain.PullProgress) -> None:
            fetched[update.digest] = max(update.done, fetched.get(update.digest, 0))

        started = time.monotonic()
        try:
            image = await self._runtime.ensure_image(service.image, self._settings.pull_policy, progress)
        except errors.SchedulerError as err:
            self._observer.image_ensured("failed", time.monotonic() - started, sum(fetched.values()))
            raise DeployFailure(service.name, "ImageUnavailable", f"image {service.image}: {err.message}") from err
        outcome = "pulled" if fetched else "present"
        self._observer.image_ensured(outcome, time.monotonic() - started, sum(fetched.values()))
        return image

    async def _bring_up_service(
        self,
        env: Environment,
        service: ServiceSpec,
        milestones: dict[str, _Milestones],
    ) -> None:
        # Each service pulls its own image and gets its address in its own task: a slow pull
        # overlaps other services' start-up, and only a root's own setup precedes its start.
        image = await self._pull_image(service)
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
        replicas = await asyncio.gather(*(self._launch_replica(env, service, p) for p in prepared))
        mine = milestones[service.name]
        mine.started.set()
        ids_ips = list(replicas)
        if service.health.kind is not HealthCheckKind.NONE:
            await asyncio.gather(*(self._await_health(env.name, service, cid, ip, t0) for cid, ip, t0 in ids_ips))
        await self._network.set_backends(env.name, service.name, [ip for _, ip, _ in ids_ips])
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

    async def _start_replica(
        self, env: Environment, service: ServiceSpec, image: domain.Image, index: int
    ) -> tuple[str, str, float]:
        """Prepare and start one replica; returns its id, address and start time."""
        return await self._launch_replica(env, service, await self._prepare_replica(env, service, image, index))

    async def _prepare_replica(
        self, env: Environment, service: ServiceSpec, image: domain.Image, index: int
    ) -> tuple[int, str, str]:
        """Attach a new container to the network and create it, without starting it.

        This part does not depend on other services, so a deploy runs it for every service at
        once, while dependencies are still coming up. Returns the replica index, id and address.
        """
        cid = container_id(env.name, service.name, index)
        await self._record(env.name, ContainerStatus(service=service.name, replica=index, container_id=cid))
        try:
            attachment = await self._network.attach(
                env.name, cid, hostname=f"{service.name}-{index}", aliases=(service.name,)
            )
            mounts = [
                domain.Mount("/etc/hosts", attachment.hosts_path, options=("rbind", "ro")),
                domain.Mount("/etc/resolv.conf", attachment.resolv_path, options=("rbind", "ro")),
            ]
            for volume in service.volumes:
                source = await asyncio.to_thread(self._volumes.ensure, env.name, volume.name)
                mounts.append(
                    domain.Mount(volume.path, str(source), options=("rbind", "ro" if volume.read_only else "rw"))
                )
            log_dir = self._settings.logs_dir / env.name / cid
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
                hostname=f"{service.name}-{index}",
                mounts=tuple(mounts),
                netns_path=attachment.netns_path,
                resources=service.resources,
                read_only_rootfs=service.read_only_rootfs,
                security=service.security,
                log_dir=str(log_dir),
                log_max_bytes=self._settings.log_max_bytes,
                log_max_files=self._settings.log_max_files,
            )
            await self._runtime.create(config)
        except errors.SchedulerError as err:
            await self._failed_replica(env.name, service.name, index, cid, err)
            raise DeployFailure(service.name, "CreateFailed", f"service {service.name}: {err.message}") from err
        await self._record(
            env.name,
            ContainerStatus(
                service=service.name, replica=index, container_id=cid, state=ContainerState.CREATED, ip=attachment.ip
            ),
        )
        self._publish(env, EventType.CONTAINER_CREATED, service.name, index, cid)
        return index, cid, attachment.ip

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
        try:
            result = await health.wait_healthy(service.health, self._runtime, cid, ip, started, self._observer)
        except health.Unhealthy as unhealthy:
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
        await self._update_container(name, cid, health=Health.HEALTHY, message=result.detail)
        self._events.publish(Event(EventType.CONTAINER_HEALTHY, name, now(), service=service.name, container_id=cid))

    # --- update -------------------------------------------------------------------------------------

    def submit_update(
        self, name: str, previous: Environment, changes: list[domain.ServiceChange], drain: timedelta
    ) -> None:
        """Roll out the stored (new) spec of ``name`` in the background; ``previous`` is the rollback target."""
        self._submit(name, lambda: self._observed("update", name, lambda: self._update(name, previous, changes, drain)))

    async def _update(
        self, name: str, previous: Environment, changes: list[domain.ServiceChange], drain: timedelta
    ) -> None:
        try:
            env = await self._store.get(name)
        except errors.NotFound:
            return
        if previous.status is EnvironmentStatus.FAILED:
            # Nothing reliable to keep serving: start over with the new spec.
            await self._remove_containers(name, previous)
            await self._deploy(name)
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
        env = await self._refresh(name)
        env = replace(
            env,
            observed_generation=env.generation,
            endpoints=await self._network.endpoints(name),
            conditions=with_condition(
                env.conditions,
                Condition("Ready", True, "Updated", f"generation {env.generation} rolled out", last_transition=now()),
            ),
        )
        await self._set_status(env, EnvironmentStatus.RUNNING, EventType.ENVIRONMENT_RUNNING)
        _log.info("update.done", env=name, generation=env.generation)

    async def _roll_service(
        self,
        env: Environment,
        service: ServiceSpec,
        old: ServiceSpec | None,
        action: domain.ChangeAction,
        drain: timedelta,
    ) -> None:
        """Bring ``service`` to its new spec with no gap in service (stateful ones stop first)."""
        image = await self._pull_image(service)
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
        await self._network.set_backends(env.name, service.name, [c.ip for c in keep] + [ip for _, ip, _ in started])
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
        env = await self._refresh(name)
        rolled = replace(
            env,
            spec=previous.spec,
            request=previous.request,
            generation=env.generation + 1,
            observed_generation=env.generation + 1,
            conditions=with_condition(
                env.conditions,
                Condition(
                    "RolledBack",
                    True,
                    failure.reason,
                    f"generation {attempted.generation} rolled back: {failure.message}{rollback_error}",
                    service=failure.service,
                    last_transition=now(),
                ),
            ),
        )
        await self._store.append_history(
            HistoryEntry(name, rolled.generation, now(), "scheduler", "rollback", failure.message)
        )
        status = EnvironmentStatus.DEGRADED if rollback_error else EnvironmentStatus.RUNNING
        await self._set_status(rolled, status, EventType.ENVIRONMENT_ROLLED_BACK, failure.message)

    async def _containers_of(self, name: str, service: str) -> list[ContainerStatus]:
        env = await self._store.get(name)
        return [c for c in env.containers if c.service == service]

    async def _restore_statuses(self, name: str, serving: list[ContainerStatus], failed: set[str]) -> None:
        """After a failed replacement, list again the replicas that kept serving (the new ones took their slots)."""
        async with self.status_lock(name):
            env = await self._store.get(name)
            slots = {(c.service, c.replica) for c in serving}
            others = [c for c in env.containers if c.container_id not in failed and (c.service, c.replica) not in slots]
            containers = tuple(sorted([*others, *serving], key=lambda c: (c.service, c.replica)))
            await self._store.put(replace(env, containers=containers, updated_at=now()))

    async def _forget_retired(self, name: str, retired: set[str], started: set[str]) -> None:
        """Drop statuses of removed containers (a started one may have taken their replica slot)."""
        async with self.status_lock(name):
            env = await self._store.get(name)
            kept = tuple(c for c in env.containers if c.container_id not in retired or c.container_id in started)
            await self._store.put(replace(env, containers=kept, updated_at=now()))

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

    # --- delete -------------------------------------------------------------------------------------

    async def _delete(self, name: str, keep_volumes: bool) -> None:
        try:
            env: Environment | None = await self._store.get(name)
        except errors.NotFound:
            env = None
        placeholder = Environment(name=name, uid="", spec=domain.EnvironmentSpec(stack="", services=()))
        await self._remove_containers(name, env or placeholder)
        await self._network.delete_environment(name)
        await asyncio.to_thread(remove_logs, self._settings.logs_dir, name)
        if not keep_volumes:
            await asyncio.to_thread(self._volumes.remove_environment, name)
        await self._store.delete(name)
        await self._store.append_history(
            HistoryEntry(
                env=name,
                generation=env.generation if env else 0,
                at=now(),
                actor="scheduler",
                action="deleted",
                detail="volumes kept" if keep_volumes else "",
            )
        )
        self._events.publish(Event(EventType.ENVIRONMENT_DELETED, name, now(), generation=env.generation if env else 0))
        self._locks.pop(name, None)
        _log.info("delete.done", env=name)

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
        self._events.publish(Event(EventType.CONTAINER_REMOVED, name, now(), container_id=cid))

    # --- status bookkeeping ------------------------------------------------------------------------

    async def _refresh(self, name: str) -> Environment:
        return await self._store.get(name)

    async def _set_status(
        self, env: Environment, status: EnvironmentStatus, event: EventType, message: str = ""
    ) -> Environment:
        async with self.status_lock(env.name):
            current = await self._store.get(env.name)
            if current.status is EnvironmentStatus.DELETING:
                # A deletion was accepted meanwhile; it owns the status from now on.
                return current
            updated = replace(env, status=status, updated_at=now(), containers=current.containers)
            await self._store.put(updated)
        self._events.publish(Event(event, env.name, now(), message=message, generation=env.generation))
        return updated

    async def _record(self, name: str, status: ContainerStatus) -> None:
        """Store one replica's status, replacing the previous status of that service replica."""
        async with self.status_lock(name):
            env = await self._store.get(name)
            others = [c for c in env.containers if not (c.service == status.service and c.replica == status.replica)]
            containers = sorted([*others, status], key=lambda c: (c.service, c.replica))
            await self._store.put(replace(env, containers=tuple(containers), updated_at=now()))

    async def _update_container(self, name: str, cid: str, **changes: Any) -> None:
        async with self.status_lock(name):
            env = await self._store.get(name)
            containers = tuple(replace(c, **changes) if c.container_id == cid else c for c in env.containers)
            await self._store.put(replace(env, containers=containers, updated_at=now()))

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


def _rolled_back_last(env: Environment) -> bool:
    """Whether the latest condition set on ``env`` is its RolledBack one."""
    latest = max(env.conditions, key=lambda c: c.last_transition or datetime.min.replace(tzinfo=UTC), default=None)
    return latest is not None and latest.type == "RolledBack"


def _roots(services: Iterable[ServiceSpec]) -> set[str]:
    """Names of the services that depend on nothing."""
    return {s.name for s in services if not s.depends_on}
