"""Supervisor: restart policies, backoff, continuous health and environment status, over fakes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scheduler import domain
from scheduler.domain import (
    ContainerState,
    ContainerStatus,
    Dependency,
    DependencyCondition,
    Environment,
    EnvironmentSpec,
    EnvironmentStatus,
    EventType,
    Health,
    HealthCheck,
    HealthCheckKind,
    RestartMode,
    RestartPolicy,
    ServiceSpec,
)
from scheduler.network.fake import FakeNetwork
from scheduler.orchestrator.events import EventBus
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.orchestrator import Orchestrator, OrchestratorSettings
from scheduler.orchestrator.supervisor import (
    Backoff,
    ExpectedExits,
    Supervisor,
    problems,
    ready_condition,
    should_restart,
)
from scheduler.runtime.fake import FakeRuntime
from scheduler.storage.memory import MemoryStateStore
from scheduler.volumes.host import HostVolumeStore

IMAGE = "docker.io/library/app:1"


def ms(n: int) -> timedelta:
    return timedelta(milliseconds=n)


MS10, MS40, MS300 = ms(10), ms(40), ms(300)


# --- a small world ---------------------------------------------------------------------------------


@dataclass
class World:
    store: MemoryStateStore
    ledger: Ledger
    runtime: FakeRuntime
    network: FakeNetwork
    bus: EventBus
    orchestrator: Orchestrator
    supervisor: Supervisor
    seen: list[domain.Event]
    tmp: Path

    async def deploy(self, name: str, *services: ServiceSpec, status: EnvironmentStatus | None = None) -> Environment:
        env = Environment(name=name, uid=f"uid-{name}", spec=EnvironmentSpec(stack="toolbox", services=services))
        await self.ledger.create(env)
        self.orchestrator.submit_deploy(name)
        await self.orchestrator.wait_idle(name)
        deployed = await self.ledger.get(name)
        assert deployed.status is EnvironmentStatus.RUNNING, deployed
        return deployed

    async def env(self, name: str) -> Environment:
        return await self.ledger.get(name)

    async def container(self, name: str, service: str, replica: int = 0) -> ContainerStatus:
        env = await self.ledger.get(name)
        return next(c for c in env.containers if c.service == service and c.replica == replica)

    async def until(self, what: str, check: Callable[[], object], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")

    def events_of(self, kind: EventType) -> list[domain.Event]:
        return [e for e in self.seen if e.type is kind]

    async def first(self, kind: EventType) -> domain.Event:
        """The first event of ``kind``, once the recorder has seen it."""
        await self.until(kind.value, lambda: self.events_of(kind))
        return self.events_of(kind)[0]


async def make_world(
    tmp: Path,
    store: MemoryStateStore | None = None,
    runtime: FakeRuntime | None = None,
    network: FakeNetwork | None = None,
    *,
    start_supervisor: bool = True,
) -> World:
    store = store or MemoryStateStore()
    runtime = runtime or FakeRuntime().with_image(IMAGE)
    network = network or FakeNetwork()
    bus = EventBus()
    ledger = await Ledger.open(store)
    orchestrator = Orchestrator(
        ledger, runtime, network, HostVolumeStore(tmp / "volumes"), bus, OrchestratorSettings(logs_dir=tmp / "logs")
    )
    supervisor = Supervisor(ledger, runtime, network, bus, orchestrator, resync_interval=3600)
    seen: list[domain.Event] = []
    world = World(store, ledger, runtime, network, bus, orchestrator, supervisor, seen, tmp)
    if start_supervisor:
        await supervisor.start()
    return world


def service(
    name: str = "app",
    mode: RestartMode = RestartMode.ALWAYS,
    *,
    max_retries: int = 0,
    initial: timedelta = MS10,
    cap: timedelta = MS40,
    reset_after: timedelta = MS300,
    health: HealthCheck | None = None,
    replicas: int = 1,
    depends_on: tuple[Dependency, ...] = (),
) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        image=IMAGE,
        restart=RestartPolicy(mode, max_retries, initial, cap, reset_after),
        health=health or HealthCheck(),
        replicas=replicas,
        depends_on=depends_on,
        stop_grace=ms(50),
    )


# --- pure decisions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "max_retries", "code", "restarts", "expected"),
    [
        (RestartMode.NO, 0, 1, 0, False),
        (RestartMode.NO, 0, 0, 0, False),
        (RestartMode.ALWAYS, 0, 0, 0, True),
        (RestartMode.ALWAYS, 0, 137, 50, True),
        (RestartMode.UNLESS_STOPPED, 0, 0, 3, True),
        (RestartMode.ON_FAILURE, 0, 0, 0, False),
        (RestartMode.ON_FAILURE, 0, 2, 99, True),
        (RestartMode.ON_FAILURE, 3, 2, 2, True),
        (RestartMode.ON_FAILURE, 3, 2, 3, False),
        (RestartMode.ON_FAILURE, 3, None, 0, True),
    ],
)
def test_policy_decisions(mode: RestartMode, max_retries: int, code: int | None, restarts: int, expected: bool) -> None:
    assert should_restart(RestartPolicy(mode, max_retries), code, restarts) is expected


def test_backoff_doubles_up_to_its_cap_and_resets_after_a_long_enough_run() -> None:
    backoff = Backoff(RestartPolicy(RestartMode.ALWAYS, 0, ms(100), timedelta(seconds=1), timedelta(seconds=10)))
    delays = [backoff.next_delay(ran_for=0.5) for _ in range(7)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert backoff.next_delay(ran_for=10.0) == 0.1
    assert backoff.next_delay(ran_for=0.0) == 0.2
    many = Backoff(RestartPolicy(RestartMode.ALWAYS, 0, ms(100), timedelta(seconds=30), timedelta(seconds=10)))
    assert [many.next_delay(0) for _ in range(200)][-1] == 30.0  # no overflow after many attempts


def test_expected_exits_forget_the_oldest_beyond_capacity() -> None:
    expected = ExpectedExits(capacity=3)
    for cid in ("a", "b", "c", "d"):
        expected.add(cid)
    assert "a" not in expected and all(c in expected for c in ("b", "c", "d"))
    expected.add("b")  # refreshed: now the newest
    expected.add("e")
    assert "b" in expected and "c" not in expected


def _env(*containers: ContainerStatus, services: tuple[ServiceSpec, ...] | None = None) -> Environment:
    specs = services or (service("app"), service("job", RestartMode.NO))
    return Environment("e", "u", EnvironmentSpec("s", specs), status=EnvironmentStatus.RUNNING, containers=containers)


def test_problems_name_the_service_and_why() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    looping = ContainerStatus(
        "app", 0, "c1", ContainerState.RESTARTING, exit_code=3, restart_count=4, message="exited with code 3"
    )
    found = problems(_env(looping), at)
    assert [(p.service, p.reason) for p in found] == [("app", "CrashLoopBackOff")]
    assert "restarted 4 times" in found[0].message and "last exit code 3" in found[0].message
    condition = ready_condition(found, at)
    assert not condition.status and condition.service == "app" and condition.reason == "CrashLoopBackOff"

    exited = ContainerStatus("job", 0, "c2", ContainerState.EXITED, exit_code=1, message="restart policy is no")
    assert [p.reason for p in problems(_env(exited), at)] == ["Exited"]
    unhealthy = ContainerStatus("app", 0, "c3", ContainerState.RUNNING, Health.UNHEALTHY, message="GET /: 503")
    assert [p.reason for p in problems(_env(unhealthy), at)] == ["Unhealthy"]
    assert ready_condition([], at).status


def test_a_restarted_replica_counts_as_up_only_after_it_settled() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    fresh = ContainerStatus(
        "app", 0, "c", ContainerState.RUNNING, Health.NONE, exit_code=1, restart_count=1, started_at=at - ms(100)
    )
    assert [p.reason for p in problems(_env(fresh), at)] == ["Restarting"]
    assert problems(_env(replace(fresh, started_at=at - ms(400))), at) == []
    gated = replace(fresh, health=Health.STARTING)
    assert [p.reason for p in problems(_env(gated), at + timedelta(hours=1))] == ["Restarting"]
    assert problems(_env(replace(gated, health=Health.HEALTHY)), at) == []
    looping = problems(_env(replace(fresh, restart_count=3)), at)
    assert [p.reason for p in looping] == ["CrashLoopBackOff"] and "crash-looping" in looping[0].message


def test_a_completed_one_shot_job_is_not_a_problem() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    specs = (
        service("migrate", RestartMode.NO),
        service("app", depends_on=(Dependency("migrate", DependencyCondition.COMPLETED),)),
    )
    done = ContainerStatus("migrate", 0, "m", ContainerState.EXITED, exit_code=0)
    assert problems(_env(done, services=specs), at) == []
    assert [p.reason for p in problems(_env(replace(done, exit_code=1), services=specs), at)] == ["Exited"]


# --- behaviour over the fakes ----------------------------------------------------------------------


async def test_a_crashed_container_is_restarted_in_place(world: World) -> None:
    await world.deploy("web", service("app", RestartMode.ALWAYS))
    before = await world.container("web", "app")
    assert world.network.backends[("web", "app")] == (before.ip,)

    world.runtime.crash(before.container_id, code=3)
    await world.until("restart", lambda: world.container("web", "app"))
    await world.until("restarted", lambda: _is(world.container("web", "app"), lambda c: c.restart_count == 1 and c.pid))
    after = await world.container("web", "app")
    assert after.container_id == before.container_id and after.pid != before.pid
    assert after.state is ContainerState.RUNNING and after.exit_code == 3
    assert world.runtime.containers[before.container_id].starts == 2
    assert world.runtime.calls_of("create") == [("create", before.container_id)]
    await world.until("backends back", lambda: world.network.backends[("web", "app")] == (before.ip,))
    # The replica was out of the address while it was down.
    assert ("web", "app", ()) in world.network.backend_calls
    await world.first(EventType.CONTAINER_RESTARTED)
    kinds = [e.type for e in world.seen if e.container_id == before.container_id]
    assert kinds.index(EventType.CONTAINER_EXITED) < kinds.index(EventType.CONTAINER_RESTARTED)
    exited = await world.first(EventType.CONTAINER_EXITED)
    assert "exited with code 3" in exited.message and exited.service == "app"
    await world.until("running again", lambda: _is(world.env("web"), lambda e: e.status is EnvironmentStatus.RUNNING))


async def _is(coro: object, predicate: Callable[..., object]) -> bool:
    value = await coro  # type: ignore[misc]
    return bool(predicate(value))


async def test_policy_no_leaves_it_exited_and_the_environment_degraded(world: World) -> None:
    await world.deploy("once", service("app", RestartMode.NO))
    cid = (await world.container("once", "app")).container_id
    world.runtime.crash(cid, code=2)
    await world.until("degraded", lambda: _is(world.env("once"), lambda e: e.status is EnvironmentStatus.DEGRADED))
    env = await world.env("once")
    status = env.containers[0]
    assert status.state is ContainerState.EXITED and status.exit_code == 2 and status.finished_at is not None
    assert status.restart_count == 0 and world.runtime.containers[cid].starts == 1
    ready = next(c for c in env.conditions if c.type == "Ready")
    assert not ready.status and ready.service == "app" and ready.reason == "Exited"
    assert "exit code 2" in ready.message
    assert world.network.backends[("once", "app")] == ()
    assert await world.first(EventType.ENVIRONMENT_DEGRADED)


async def test_on_failure_gives_up_after_max_retries_and_ignores_a_clean_exit(world: World) -> None:
    await world.deploy("flaky", service("app", RestartMode.ON_FAILURE, max_retries=2))
    cid = (await world.container("flaky", "app")).container_id
    for count in (1, 2):
        await world.until("running", lambda: world.runtime.containers[cid].state is domain.TaskState.RUNNING)
        world.runtime.crash(cid, code=1)
        await world.until(
            f"restart {count}",
            lambda c=count: _is(world.container("flaky", "app"), lambda s: s.restart_count == c and s.pid),
        )
    world.runtime.crash(cid, code=1)
    await world.until(
        "gave up", lambda: _is(world.container("flaky", "app"), lambda s: s.state is ContainerState.EXITED)
    )
    status = await world.container("flaky", "app")
    assert "gave up after 2 restarts" in status.message and world.runtime.containers[cid].starts == 3

    await world.deploy("clean", service("app", RestartMode.ON_FAILURE))
    cid = (await world.container("clean", "app")).container_id
    world.runtime.crash(cid, code=0)
    await world.until(
        "exited", lambda: _is(world.container("clean", "app"), lambda s: s.state is ContainerState.EXITED)
    )
    await asyncio.sleep(0.1)
    assert world.runtime.containers[cid].starts == 1


async def test_a_crash_loop_backs_off_to_the_cap_then_recovers(world: World) -> None:
    spec = service("app", RestartMode.ALWAYS, initial=ms(10), cap=ms(40), reset_after=ms(300))
    await world.deploy("loop", spec)
    cid = (await world.container("loop", "app")).container_id
    delays = []
    for count in range(1, 6):
        world.runtime.crash(cid, code=7)
        await world.until(
            "restarting", lambda: _is(world.container("loop", "app"), lambda s: s.state is not ContainerState.RUNNING)
        )
        delays.append((await world.container("loop", "app")).message)
        await world.until(
            "restart", lambda c=count: _is(world.container("loop", "app"), lambda s: s.restart_count == c and s.pid)
        )
    assert [m.split("restarting in ")[1] for m in delays] == ["0.01s", "0.02s", "0.04s", "0.04s", "0.04s"]
    env = await world.env("loop")
    assert env.status is EnvironmentStatus.DEGRADED
    ready = next(c for c in env.conditions if c.type == "Ready")
    assert ready.service == "app" and "restarted 5 times" in ready.message and "last exit code 7" in ready.message
    # Left alone for reset_after, the replica counts as up again.
    await world.until("recovered", lambda: _is(world.env("loop"), lambda e: e.status is EnvironmentStatus.RUNNING), 3)
    assert next(c for c in (await world.env("loop")).conditions if c.type == "Ready").status


async def test_deleting_an_environment_restarts_nothing(world: World) -> None:
    await world.deploy("gone", service("app", RestartMode.ALWAYS))
    cid = (await world.container("gone", "app")).container_id
    world.orchestrator.submit_delete("gone", keep_volumes=False)
    await world.orchestrator.wait_idle("gone")
    await asyncio.sleep(0.1)
    assert cid not in world.runtime.containers
    assert [c for c in world.runtime.calls_of("start") if c[1] == cid] == [("start", cid)]
    assert not world.events_of(EventType.CONTAINER_RESTARTED)


@pytest.mark.parametrize("mode", [RestartMode.ALWAYS, RestartMode.ON_FAILURE])
async def test_an_unhealthy_container_leaves_the_address_and_is_restarted(world: World, mode: RestartMode) -> None:
    # The fake's processes exit 0 on SIGTERM: on-failure must restart them all the same.
    failing: set[str] = set()
    world.runtime.exec_handler = lambda cid, argv: domain.ExecResult(1 if cid in failing else 0, "probe")
    check = HealthCheck(HealthCheckKind.EXEC, command=("check",), interval=ms(20), timeout=ms(500), retries=2)
    await world.deploy("hc", service("app", mode, health=check, replicas=2))
    first = await world.container("hc", "app", 0)
    second = await world.container("hc", "app", 1)
    assert set(world.network.backends[("hc", "app")]) == {first.ip, second.ip}

    failing.add(first.container_id)
    await world.until("out of the address", lambda: world.network.backends[("hc", "app")] == (second.ip,))
    assert (await world.first(EventType.CONTAINER_UNHEALTHY)).container_id == first.container_id
    await world.until("restarted", lambda: _is(world.container("hc", "app", 0), lambda s: s.restart_count == 1))
    assert "was unhealthy" in (await world.first(EventType.CONTAINER_EXITED)).message
    failing.clear()
    await world.until("back in", lambda: set(world.network.backends[("hc", "app")]) == {first.ip, second.ip})
    status = await world.container("hc", "app", 0)
    assert status.health is Health.HEALTHY and status.state is ContainerState.RUNNING
    await world.until("running", lambda: _is(world.env("hc"), lambda e: e.status is EnvironmentStatus.RUNNING))


async def test_with_policy_no_an_unhealthy_container_recovers_in_place(world: World) -> None:
    failing = {"on": False}
    world.runtime.exec_handler = lambda cid, argv: domain.ExecResult(1 if failing["on"] else 0, "")
    check = HealthCheck(HealthCheckKind.EXEC, command=("check",), interval=ms(20), timeout=ms(500), retries=2)
    await world.deploy("nohc", service("app", RestartMode.NO, health=check))
    status = await world.container("nohc", "app")
    failing["on"] = True
    await world.until("degraded", lambda: _is(world.env("nohc"), lambda e: e.status is EnvironmentStatus.DEGRADED))
    assert world.network.backends[("nohc", "app")] == ()
    assert world.runtime.containers[status.container_id].state is domain.TaskState.RUNNING
    failing["on"] = False
    await world.until("running", lambda: _is(world.env("nohc"), lambda e: e.status is EnvironmentStatus.RUNNING))
    assert world.network.backends[("nohc", "app")] == (status.ip,)
    assert world.runtime.containers[status.container_id].starts == 1


async def test_resync_handles_an_exit_whose_event_was_lost(world: World) -> None:
    await world.deploy("quiet", service("app", RestartMode.ALWAYS))
    cid = (await world.container("quiet", "app")).container_id
    container = world.runtime.containers[cid]
    container.state = domain.TaskState.STOPPED  # died without an event reaching us
    container.exit = domain.ExitStatus(9)
    await world.supervisor.resync()
    await world.until(
        "restarted", lambda: _is(world.container("quiet", "app"), lambda s: s.restart_count == 1 and s.pid)
    )
    assert (await world.container("quiet", "app")).exit_code == 9


async def test_resync_marks_vanished_containers_and_watches_unwatched_health(world: World) -> None:
    failing = {"on": False}
    world.runtime.exec_handler = lambda cid, argv: domain.ExecResult(1 if failing["on"] else 0, "")
    check = HealthCheck(HealthCheckKind.EXEC, command=("check",), interval=ms(20), timeout=ms(500), retries=2)
    await world.deploy("hc2", service("app", RestartMode.NO, health=check), service("other", RestartMode.NO))
    app = await world.container("hc2", "app")
    other = await world.container("hc2", "other")
    # A supervisor that never saw the deploy's events (as after a restart) still watches health.
    fresh = Supervisor(world.ledger, world.runtime, world.network, world.bus, world.orchestrator, resync_interval=3600)
    await world.supervisor.close()
    world.supervisor = fresh
    await fresh.start()
    await fresh.resync()
    del world.runtime.containers[other.container_id]  # gone behind our back
    failing["on"] = True
    await fresh.resync()
    await world.until("unhealthy", lambda: _is(world.container("hc2", "app"), lambda s: s.health is Health.UNHEALTHY))
    gone = await world.container("hc2", "other")
    assert gone.state is ContainerState.UNKNOWN and "no longer exists" in gone.message
    env = await world.env("hc2")
    assert env.status is EnvironmentStatus.DEGRADED
    assert {p.split(":")[0] for p in next(c for c in env.conditions if c.type == "Ready").message.split("; ")} == {
        "service app replica 0 is unhealthy",
        "service other replica 0",
    }
    assert world.network.backends[("hc2", "app")] == () and app.ip not in world.network.backends[("hc2", "other")]


async def test_a_rolled_back_update_leaves_the_serving_replicas_listed_and_in_the_address(world: World) -> None:
    original: set[str] = set()
    check = HealthCheck(HealthCheckKind.EXEC, command=("check",), interval=ms(20), timeout=ms(500), retries=2)
    world.runtime.exec_handler = lambda cid, argv: domain.ExecResult(0 if not original or cid in original else 1, "")
    env = await world.deploy("roll", service("app", RestartMode.ALWAYS, health=check, replicas=2))
    original.update(c.container_id for c in env.containers)
    ips = set(world.network.backends[("roll", "app")])
    broken = replace(env.spec, services=(replace(env.spec.services[0], args=("broken",)),))
    await world.ledger.change("roll", lambda e: replace(e, spec=broken, generation=2))
    world.orchestrator.submit_update("roll", env, [domain.ServiceChange("app", domain.ChangeAction.REPLACE)], ms(10))
    await world.orchestrator.wait_idle("roll")
    await world.first(EventType.ENVIRONMENT_ROLLED_BACK)
    await asyncio.sleep(0.2)  # the supervisor settles the environment after the operation
    after = await world.env("roll")
    assert after.status is EnvironmentStatus.RUNNING, after.conditions
    assert {c.container_id for c in after.containers} == original
    assert set(world.network.backends[("roll", "app")]) == ips


async def test_an_oom_kill_is_recorded_on_the_container(world: World) -> None:
    await world.deploy("oom", service("app", RestartMode.NO))
    cid = (await world.container("oom", "app")).container_id
    world.runtime.crash(cid, code=137, oom=True)
    await world.until("exited", lambda: _is(world.container("oom", "app"), lambda s: s.state is ContainerState.EXITED))
    status = await world.container("oom", "app")
    assert status.oom_killed and status.exit_code == 137 and "out-of-memory" in status.message
    assert "out-of-memory" in (await world.first(EventType.CONTAINER_EXITED)).message
