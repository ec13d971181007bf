"""Self-healing: restart policies, continuous health checks and honest environment status.

The orchestrator brings environments up and changes them; the supervisor keeps them up between
those operations. It listens to the runtime's task events (exits, OOM kills) and to the event bus
(new healthy containers, finished operations), and:

- records an exit in the container's status and applies the service's ``RestartPolicy`` with
  capped exponential backoff (the same container gets a new task, so its id, rootfs, network
  namespace and log files stay);
- probes running containers with a health check for as long as they run; ``retries`` consecutive
  failures make one UNHEALTHY, take it out of its service's backends and, unless its policy is
  ``no``, kill it so that the restart policy replaces the process;
- keeps a service's backends to its running, healthy replicas, and the environment DEGRADED (with
  a ``Ready`` condition naming the service and why) while any replica is not.

The decisions themselves (restart or not, the backoff, what keeps an environment from RUNNING)
are pure functions in ``policy.py``. What remains here is one state machine per replica (exit,
backoff, restart, health) and its bookkeeping: one cohesive thing, longer than a screen.

Exits of containers the orchestrator stops on purpose are announced in :class:`ExpectedExits`
and ignored. While an operation runs on an environment the supervisor still restarts containers
but leaves the environment's status and the adding of backends to the operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from scheduler import errors, labels, log
from scheduler.domain import (
    ContainerState,
    ContainerStatus,
    Environment,
    EnvironmentStatus,
    Event,
    EventType,
    Health,
    HealthCheckKind,
    RestartMode,
    ServiceChange,
    ServiceSpec,
    TaskEventKind,
    TaskState,
)
from scheduler.network.base import NetworkManager
from scheduler.orchestrator import health
from scheduler.orchestrator.events import EventBus
from scheduler.orchestrator.expected import ExpectedExits
from scheduler.orchestrator.ledger import Ledger, Owns, owns_all
from scheduler.orchestrator.observer import NULL_OBSERVER, Observer
from scheduler.orchestrator.policy import Backoff, problems, ready_condition, should_restart
from scheduler.orchestrator.status import now, with_condition
from scheduler.runtime.base import ContainerRuntime, EventStream

_log = log.get("supervisor")

RESYNC_INTERVAL = 30.0
"""Seconds between comparisons of recorded containers with the runtime, a safety net for exits
whose events were lost (the event stream's reconnection triggers one at once)."""
RESUBSCRIBE_DELAY = 5.0
"""Seconds before subscribing again to task events after the runtime gave up (a resync follows)."""
PENDING_WAIT = 3.0
"""Longest wait for a deploy to record a container that exited right after it started."""
SUPERVISED = (EnvironmentStatus.RUNNING, EnvironmentStatus.DEGRADED)
"""Environment states whose status the supervisor maintains."""


# --- collaborators ------------------------------------------------------------------------------


class Operations(Protocol):
    """What the supervisor needs from the orchestrator (the ``Orchestrator`` provides it)."""

    expected_exits: ExpectedExits

    def busy(self, name: str) -> bool:
        """Whether a deploy, update or delete runs on environment ``name``."""
        ...

    async def wait_idle(self, name: str) -> None:
        """Wait until no operation runs on ``name``."""
        ...

    def submit_update(self, name: str, previous: Environment, changes: list[ServiceChange], drain: timedelta) -> None:
        """Roll out the stored spec of ``name`` for ``changes`` in the background."""
        ...


@dataclass
class _Replica:
    """What the supervisor keeps about one container between events."""

    env: str
    service: str
    backoff: Backoff
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    handled_pid: int = -1
    """Pid of the last process whose exit was handled (events can repeat, resync can race them)."""
    up_since: float = 0.0
    """Monotonic time the process started, or became healthy."""
    kill_reason: str = ""
    """Why the supervisor itself killed the process (unhealthy), for the exit message."""
    monitor: asyncio.Task[None] | None = None
    restart: asyncio.Task[None] | None = None


class Supervisor:
    """Watches running environments and heals them; see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        runtime: ContainerRuntime,
        network: NetworkManager,
        events: EventBus,
        operations: Operations,
        *,
        resync_interval: float = RESYNC_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer = NULL_OBSERVER,
        owns: Owns = owns_all,
    ) -> None:
        self._observer = observer
        self._owns = owns
        """In a fleet, containers of environments placed on other nodes are not this one's to check."""
        self._ledger = ledger
        self._runtime = runtime
        self._network = network
        self._events = events
        self._ops = operations
        self._resync_interval = resync_interval
        self._clock = clock
        self._replicas: dict[str, _Replica] = {}
        self._oom: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._stream: EventStream | None = None
        self._settling: set[str] = set()
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to task events and the event bus, then keep watching in the background.

        Call before the reconciler and the orchestrator's ``start``, so that no exit is missed.
        """
        self._stream = self._runtime.events()
        await self._stream.connected()
        self._loops = [
            asyncio.create_task(self._consume_tasks(self._stream), name="supervisor:tasks"),
            asyncio.create_task(self._consume_bus(), name="supervisor:bus"),
            asyncio.create_task(self._resync_loop(), name="supervisor:resync"),
        ]
        # Let the bus consumer register its subscription before anything is published.
        await asyncio.sleep(0)

    async def close(self) -> None:
        """Stop watching; running containers keep running and are adopted on the next start."""
        self._closed = True
        pending = [*self._loops, *self._tasks]
        for replica in self._replicas.values():
            pending += [t for t in (replica.monitor, replica.restart) if t is not None]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.aclose()

    # --- entry points for the reconciler -----------------------------------------------------

    def adopt(self, env: str, status: ContainerStatus, spec: ServiceSpec, *, up_for: float = 0.0) -> None:
        """Take over a running container found at start: watch its health from now on."""
        replica = self._replica(status.container_id, env, spec)
        replica.up_since = self._clock() - up_for
        replica.handled_pid = -1
        if spec.health.kind is not HealthCheckKind.NONE and status.state is ContainerState.RUNNING:
            self._start_monitor(status.container_id, replica, gate=status.health is not Health.HEALTHY)

    async def container_exited(
        self, env: str, container_id: str, pid: int, code: int | None, at: datetime | None = None
    ) -> None:
        """Handle the exit of a container's process (from an event, the resync or the reconciler)."""
        await self._handle_exit(container_id, pid, code, at, env_hint=env)

    async def settle(self, env: str) -> None:
        """Bring ``env``'s status and service backends in line with its containers now."""
        await self._evaluate(env)

    # --- consumers ---------------------------------------------------------------------------

    async def _consume_tasks(self, stream: EventStream) -> None:
        while not self._closed:
            try:
                async for event in stream:
                    if event.kind is TaskEventKind.OOM:
                        self._oom.add(event.container_id)
                    elif event.kind is TaskEventKind.EXIT:
                        self._spawn(self._handle_exit(event.container_id, event.pid, event.exit_code, event.at))
                return
            except errors.SchedulerError as err:
                # The runtime gave up resubscribing: try again later; the resync covers the gap.
                _log.error("task_events.lost", error=err.message)
            await asyncio.sleep(RESUBSCRIBE_DELAY)
            stream = self._stream = self._runtime.events()
            with contextlib.suppress(errors.SchedulerError):
                await stream.connected()
            self._spawn(self.resync())

    async def _consume_bus(self) -> None:
        async for event in self._events.subscribe():
            if event.type is EventType.CONTAINER_HEALTHY and event.container_id:
                replica = self._replicas.get(event.container_id)
                if replica is None or replica.monitor is None or replica.monitor.done():
                    self._spawn(self._watch_new(event.environment, event.container_id))
            elif event.type in (
                EventType.ENVIRONMENT_RUNNING,
                EventType.ENVIRONMENT_ROLLED_BACK,
            ):
                if event.environment not in self._settling:
                    self._settling.add(event.environment)
                    self._spawn(self._settle_after_operation(event.environment))
            elif event.type is EventType.ENVIRONMENT_DELETED:
                self._forget_environment(event.environment)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._resync_interval)
            try:
                await self.resync()
            except errors.SchedulerError as err:
                _log.warning("resync.failed", error=err.message)

    async def resync(self) -> None:
        """Compare RUNNING containers with the runtime; handle exits whose events were lost.

        Runs when the event stream reconnects, and now and then as a safety net. Only what
        differs is touched: an environment whose containers all run as recorded is not written,
        evaluated or probed again.
        """
        envs = [e for e in self._ledger.all(SUPERVISED) if self._owns(e) and not self._ops.busy(e.name)]
        if not envs:
            return
        found = {info.id: info for info in await self._runtime.list({})}
        for env in envs:
            changed = False
            for status in env.containers:
                if status.state is not ContainerState.RUNNING or status.container_id in self._ops.expected_exits:
                    continue
                info = found.get(status.container_id)
                if info is None:
                    await self._mark_missing(env.name, status)
                    changed = True
                elif info.task_state is None or info.task_state is TaskState.STOPPED:
                    await self._handle_exit(status.container_id, status.pid, info.exit_status, None, env_hint=env.name)
                    changed = True
            self._tidy(env.name)
            if changed:
                await self._evaluate(env.name)

    def _tidy(self, name: str) -> None:
        """Forget containers the environment no longer lists; watch health where nobody does."""
        env = self._ledger.find(name)  # exits handled just now changed it
        if env is None:
            return
        listed = {c.container_id: c for c in env.containers}
        for cid in [cid for cid, r in self._replicas.items() if r.env == env.name and cid not in listed]:
            replica = self._replicas.pop(cid)
            self._cancel(replica.monitor)
            self._cancel(replica.restart)
        specs = {s.name: s for s in env.spec.services}
        for cid, status in listed.items():
            spec = specs.get(status.service)
            if spec is None or spec.health.kind is HealthCheckKind.NONE or status.state is not ContainerState.RUNNING:
                continue
            replica = self._replica(cid, env.name, spec)
            if (replica.monitor is None or replica.monitor.done()) and replica.restart is None:
                self._start_monitor(cid, replica, gate=status.health is not Health.HEALTHY)

    # --- exits and restarts --------------------------------------------------------------------

    async def _handle_exit(self, cid: str, pid: int, code: int | None, at: datetime | None, env_hint: str = "") -> None:
        if cid in self._ops.expected_exits or self._closed:
            return
        located = await self._locate(cid, env_hint)
        if located is None:
            return
        env_name, spec = located
        replica = self._replica(cid, env_name, spec)
        async with replica.lock:
            if pid and pid == replica.handled_pid:
                return
            status = await self._recorded(env_name, cid)
            if status is None or status.state in (ContainerState.EXITED, ContainerState.UNKNOWN):
                return
            if pid and status.pid and status.pid != pid:
                return  # the exit of a process already replaced
            live = await self._runtime.task_pid(cid)
            if live is not None and live != pid:
                return
            if status.state is ContainerState.RESTARTING and replica.restart is not None:
                return  # already handled (by the resync); the restart is scheduled
            replica.handled_pid = pid
            self._cancel(replica.monitor)
            ran_for = self._clock() - replica.up_since if replica.up_since else 0.0
            oom = cid in self._oom
            self._oom.discard(cid)
            what = f"exited with code {code}" if code is not None else "exited (code unknown)"
            if oom:
                what += ", killed by the out-of-memory killer"
            # A process killed for failing its health check failed, whatever its exit code says.
            verdict = None if replica.kill_reason else code
            reason = "unhealthy" if replica.kill_reason else "oom" if oom else "completed" if code == 0 else "error"
            if replica.kill_reason:
                what = f"{replica.kill_reason}; {what}"
                replica.kill_reason = ""
            restart = should_restart(spec.restart, verdict, status.restart_count)
            delay = replica.backoff.next_delay(ran_for) if restart else 0.0
            if restart:
                message = f"{what}; restarting in {delay:g}s"
            elif spec.restart.mode is RestartMode.NO:
                message = f"{what}; restart policy is no"
            elif code == 0:
                message = f"{what}; restart policy is on-failure"
            else:
                message = f"{what}; gave up after {status.restart_count} restarts"
            updated = await self._update(
                env_name,
                cid,
                state=ContainerState.RESTARTING if restart else ContainerState.EXITED,
                exit_code=code,
                finished_at=at or now(),
                oom_killed=oom,
                pid=0,
                message=message,
            )
            if updated is None:
                return
            _log.info("container.exited", env=env_name, container=cid, code=code, restart_in=delay if restart else None)
            self._publish(EventType.CONTAINER_EXITED, env_name, updated, message)
            if restart:
                self._observer.container_restarted(reason)
                replica.restart = self._owned(self._restart_after(cid, replica, spec, delay), f"restart:{cid}")
        await self._sync_backends(env_name, spec.name)
        await self._evaluate(env_name)

    async def _restart_after(self, cid: str, replica: _Replica, spec: ServiceSpec, delay: float) -> None:
        await asyncio.sleep(delay)
        env_name = replica.env
        async with replica.lock:
            replica.restart = None
            if cid in self._ops.expected_exits:
                return
            status = await self._recorded(env_name, cid)
            if status is None or status.state is not ContainerState.RESTARTING:
                return
            try:
                pid = await self._runtime.start(cid)
            except errors.NotFound:
                await self._update(env_name, cid, state=ContainerState.UNKNOWN, message="container is gone")
                return
            except errors.SchedulerError as err:
                delay = replica.backoff.next_delay(0.0)
                await self._update(env_name, cid, message=f"restart failed: {err.message}; retrying in {delay:g}s")
                replica.restart = self._owned(self._restart_after(cid, replica, spec, delay), f"restart:{cid}")
                return
            replica.up_since = self._clock()
            checked = spec.health.kind is not HealthCheckKind.NONE
            updated = await self._update(
                env_name,
                cid,
                state=ContainerState.RUNNING,
                health=Health.STARTING if checked else Health.NONE,
                pid=pid,
                started_at=now(),
                restart_count=status.restart_count + 1,
                message=f"restarted; the previous process {status.message.split(';')[0]}",
            )
            if updated is None:
                return
            _log.info("container.restarted", env=env_name, container=cid, pid=pid, count=updated.restart_count)
            self._publish(EventType.CONTAINER_RESTARTED, env_name, updated, updated.message)
            if checked:
                self._start_monitor(cid, replica, gate=True)
        if not checked:
            await self._sync_backends(env_name, spec.name)
            await self._evaluate(env_name)
            # Without a health check the replica counts as up once it ran reset_after: look again then.
            self._spawn(self._evaluate_later(env_name, spec.restart.reset_after.total_seconds() + 0.05))

    async def _evaluate_later(self, env_name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._evaluate(env_name)

    async def _mark_missing(self, env_name: str, status: ContainerStatus) -> None:
        updated = await self._update(
            env_name, status.container_id, state=ContainerState.UNKNOWN, pid=0, message="container no longer exists"
        )
        if updated is not None:
            self._publish(EventType.CONTAINER_EXITED, env_name, updated, updated.message)
            await self._sync_backends(env_name, status.service)

    # --- health ------------------------------------------------------------------------------

    async def _watch_new(self, env_name: str, cid: str) -> None:
        located = await self._locate(cid, env_name)
        if located is None:
            return
        _, spec = located
        if spec.health.kind is HealthCheckKind.NONE:
            return
        replica = self._replica(cid, env_name, spec)
        if replica.monitor is None or replica.monitor.done():
            replica.up_since = replica.up_since or self._clock()
            self._start_monitor(cid, replica, gate=False)

    def _start_monitor(self, cid: str, replica: _Replica, *, gate: bool) -> None:
        self._cancel(replica.monitor)
        replica.monitor = self._owned(self._monitor(cid, replica, gate), f"health:{cid}")

    async def _monitor(self, cid: str, replica: _Replica, gate: bool) -> None:
        env_name = replica.env
        located = await self._locate(cid, env_name)
        if located is None:
            return
        _, spec = located
        check = spec.health
        status = await self._recorded(env_name, cid)
        if status is None:
            return
        ip = status.ip
        healthy = True
        if gate:
            started = replica.up_since or self._clock()
            try:
                result = await health.wait_healthy(check, self._runtime, cid, ip, started, self._observer)
            except health.Unhealthy as unhealthy:
                healthy = False
                await self._became_unhealthy(env_name, cid, replica, spec, unhealthy.detail)
            else:
                replica.up_since = self._clock()
                await self._became_healthy(env_name, cid, spec, result.detail)
        failures = 0
        while cid not in self._ops.expected_exits:
            await asyncio.sleep(check.interval.total_seconds())
            result = await health.probe(check, self._runtime, cid, ip, self._observer)
            if result.ok:
                failures = 0
                if not healthy:
                    healthy = True
                    replica.up_since = self._clock()
                    await self._became_healthy(env_name, cid, spec, result.detail)
                continue
            failures += 1
            if failures < check.retries or not healthy:
                continue
            current = await self._recorded(env_name, cid)
            if current is None or current.state is not ContainerState.RUNNING:
                return
            healthy = False
            await self._became_unhealthy(env_name, cid, replica, spec, result.detail)

    async def _became_healthy(self, env_name: str, cid: str, spec: ServiceSpec, detail: str) -> None:
        updated = await self._update(env_name, cid, health=Health.HEALTHY, message=detail)
        if updated is None:
            return
        self._publish(EventType.CONTAINER_HEALTHY, env_name, updated, detail)
        await self._sync_backends(env_name, spec.name)
        await self._evaluate(env_name)

    async def _became_unhealthy(
        self, env_name: str, cid: str, replica: _Replica, spec: ServiceSpec, detail: str
    ) -> None:
        updated = await self._update(env_name, cid, health=Health.UNHEALTHY, message=detail)
        if updated is None:
            return
        _log.warning("container.unhealthy", env=env_name, container=cid, detail=detail)
        self._publish(EventType.CONTAINER_UNHEALTHY, env_name, updated, detail)
        await self._sync_backends(env_name, spec.name)
        await self._evaluate(env_name)
        if spec.restart.mode is RestartMode.NO:
            return
        # Docker only reports an unhealthy container; we replace its process (the exit event,
        # or the resync if that is lost, drives the restart through the policy).
        replica.kill_reason = f"was unhealthy ({detail}), killed"
        try:
            exit_status = await self._runtime.stop(cid, spec.stop_grace)
        except errors.NotFound:
            return
        except errors.SchedulerError as err:
            _log.warning("unhealthy.kill_failed", container=cid, error=err.message)
            return
        self._spawn(self._handle_exit(cid, updated.pid, exit_status.code, exit_status.exited_at, env_hint=env_name))

    # --- environment status and backends -------------------------------------------------------

    async def _settle_after_operation(self, env_name: str) -> None:
        try:
            await self._ops.wait_idle(env_name)
        finally:
            self._settling.discard(env_name)
        await self._evaluate(env_name)

    async def _evaluate(self, env_name: str) -> None:
        if self._ops.busy(env_name):
            return
        event: Event | None = None

        def assess(env: Environment) -> Environment | None:
            nonlocal event
            if env.status not in SUPERVISED:
                return None
            at = now()
            found = problems(env, at)
            status = EnvironmentStatus.DEGRADED if found else EnvironmentStatus.RUNNING
            condition = ready_condition(found, at)
            previous = next((c for c in env.conditions if c.type == "Ready"), None)
            if status is env.status and (
                status is EnvironmentStatus.RUNNING or (previous is not None and previous.message == condition.message)
            ):
                return None
            if status is not env.status:
                kind = EventType.ENVIRONMENT_DEGRADED if found else EventType.ENVIRONMENT_RUNNING
                event = Event(kind, env_name, at, message=condition.message, generation=env.generation)
                _log.info("environment.status", env=env_name, status=status.value, reason=condition.message)
            return replace(env, status=status, conditions=with_condition(env.conditions, condition), updated_at=at)

        try:
            env = await self._ledger.change(env_name, assess)
        except errors.NotFound:
            return
        if env.status not in SUPERVISED:
            return
        if event is not None:
            self._events.publish(event)
        for service in env.spec.services:
            await self._sync_backends(env_name, service.name)

    async def _sync_backends(self, env_name: str, service: str) -> None:
        """Take failing replicas out of the service's address, and (between operations) put healthy ones in."""
        try:
            env = await self._ledger.get(env_name)
            info = await self._network.service(env_name, service)
        except errors.NotFound:
            return
        mine = [c for c in env.containers if c.service == service and c.ip]
        serving = {
            c.ip for c in mine if c.state is ContainerState.RUNNING and c.health in (Health.HEALTHY, Health.NONE)
        }
        current = list(info.backends)
        # Only what the store knows is touched: an address it does not list stays where it is.
        failing = {c.ip for c in mine} - serving
        wanted = [ip for ip in current if ip not in failing]
        if not self._ops.busy(env_name) and env.status in SUPERVISED:
            wanted += sorted(serving - set(wanted))
        if sorted(wanted) == sorted(current):
            return
        try:
            await self._network.set_backends(env_name, service, wanted)
        except errors.SchedulerError as err:
            _log.warning("backends.failed", env=env_name, service=service, error=err.message)
            return
        _log.info("backends.set", env=env_name, service=service, backends=wanted)

    # --- helpers -----------------------------------------------------------------------------

    async def _locate(self, cid: str, env_hint: str) -> tuple[str, ServiceSpec] | None:
        """The environment and service spec of a container, from what we know or the store."""
        known = self._replicas.get(cid)
        names: Iterable[str] = [known.env] if known else [env_hint] if env_hint else []
        if not names:
            names = [info.labels.get(labels.ENV, "") for info in await self._runtime.list({}) if info.id == cid]
        for name in names:
            try:
                env = await self._ledger.get(name)
            except errors.NotFound:
                continue
            status = next((c for c in env.containers if c.container_id == cid), None)
            if status is None:
                continue
            spec = next((s for s in env.spec.services if s.name == status.service), None)
            if spec is not None:
                return name, spec
        return None

    def _replica(self, cid: str, env_name: str, spec: ServiceSpec) -> _Replica:
        replica = self._replicas.get(cid)
        if replica is None:
            replica = _Replica(env=env_name, service=spec.name, backoff=Backoff(spec.restart), up_since=self._clock())
            self._replicas[cid] = replica
        else:
            replica.backoff.policy = spec.restart
        return replica

    async def _recorded(self, env_name: str, cid: str) -> ContainerStatus | None:
        """The stored status of ``cid``, waiting briefly while a deploy has not recorded its start."""
        deadline = self._clock() + PENDING_WAIT
        while True:
            try:
                env = await self._ledger.get(env_name)
            except errors.NotFound:
                return None
            status = next((c for c in env.containers if c.container_id == cid), None)
            if status is None or status.state not in (ContainerState.PENDING, ContainerState.CREATED):
                return status
            if self._clock() >= deadline:
                return status
            await asyncio.sleep(0.05)

    async def _update(self, env_name: str, cid: str, **changes: Any) -> ContainerStatus | None:
        return await self._ledger.change_container(env_name, cid, unless_deleting=True, **changes)

    def _publish(self, kind: EventType, env_name: str, status: ContainerStatus, message: str) -> None:
        self._events.publish(
            Event(
                kind,
                env_name,
                now(),
                service=status.service,
                replica=status.replica,
                container_id=status.container_id,
                message=message,
            )
        )

    def _forget_environment(self, env_name: str) -> None:
        for cid in [cid for cid, r in self._replicas.items() if r.env == env_name]:
            replica = self._replicas.pop(cid)
            self._cancel(replica.monitor)
            self._cancel(replica.restart)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _owned(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task kept by a replica (cancelled through it); its failure is logged, not lost."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("supervisor.task_failed", exc_info=task.exception())

    @staticmethod
    def _cancel(task: asyncio.Task[Any] | None) -> None:
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
