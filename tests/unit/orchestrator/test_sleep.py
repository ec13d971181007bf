"""Sleep and wake over fakes: order, what is kept, supervision, idle detection, request ids."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from scheduler.config import LimitSettings
from scheduler.domain import (
    ContainerState,
    Dependency,
    DependencyCondition,
    Endpoint,
    EnvironmentRequest,
    EnvironmentStatus,
    RestartMode,
    ServiceSpec,
    etag,
)
from scheduler.errors import Conflict, FailedPrecondition
from scheduler.network.ports import bind
from scheduler.orchestrator.sleeper import Sleeper, SleepPolicy
from scheduler.service import EnvironmentService
from scheduler.stacks.catalog import Catalog
from tests.unit.orchestrator.test_supervisor import World, make_world, service
from tests.unit.test_service import SECRETIVE


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    made = await make_world(tmp_path)
    yield made
    await made.supervisor.close()
    await made.orchestrator.close()


def _two_tier() -> tuple[ServiceSpec, ServiceSpec]:
    db = service("db", RestartMode.ALWAYS)
    app = service("app", RestartMode.ALWAYS, depends_on=(Dependency("db", DependencyCondition.STARTED),))
    return db, app


async def test_stop_goes_in_reverse_order_keeps_containers_and_start_reuses_them(world: World) -> None:
    deployed = await world.deploy("e", *_two_tier())
    ids = {c.service: c.container_id for c in deployed.containers}
    world.runtime.calls.clear()

    world.orchestrator.submit_stop("e", "Requested", "by a test")
    await world.orchestrator.wait_idle("e")
    asleep = await world.env("e")
    assert asleep.status is EnvironmentStatus.STOPPED
    assert {c.state for c in asleep.containers} == {ContainerState.STOPPED}
    stops = [c[1] for c in world.runtime.calls_of("stop")]
    assert stops == [ids["app"], ids["db"]]  # dependents first
    assert {c[1] for c in world.runtime.calls_of("release")} == set(ids.values())
    assert not any(c[0] == "delete" for c in world.runtime.calls)  # containers and filesystems stay
    assert world.network.backends[("e", "app")] == () and world.network.backends[("e", "db")] == ()
    sleeping = next(c for c in asleep.conditions if c.type == "Sleeping")
    assert sleeping.status and sleeping.reason == "Requested" and sleeping.message == "by a test"
    # Exits on purpose are not failures: the supervisor restarts nothing of a sleeping environment.
    await world.supervisor.resync()
    assert (await world.env("e")).status is EnvironmentStatus.STOPPED
    assert not world.runtime.calls_of("start")

    world.orchestrator.submit_start("e", "by a test")
    await world.orchestrator.wait_idle("e")
    awake = await world.env("e")
    assert awake.status is EnvironmentStatus.RUNNING
    starts = [c[1] for c in world.runtime.calls_of("start")]
    assert starts == [ids["db"], ids["app"]]  # dependencies first
    assert {c.container_id for c in awake.containers} == set(ids.values())
    assert {c.ip for c in awake.containers} == {c.ip for c in deployed.containers}
    assert world.network.backends[("e", "app")] != ()
    # Awake, the containers are supervised again: an exit is restarted by the policy.
    app = await world.container("e", "app")
    world.runtime.crash(app.container_id, 1)
    await world.until("app restarted", lambda: len(world.runtime.calls_of("start")) == 3)


async def test_idle_environments_with_published_ports_fall_asleep(world: World) -> None:
    await world.deploy("busy", service("app"))
    await world.deploy("quiet", service("app"))
    await world.deploy("portless", service("app"))
    published = (Endpoint("app", "127.0.0.1", 20000, 80),)
    for name in ("busy", "quiet"):
        await world.ledger.change(name, lambda e: replace(e, endpoints=published))
    sleeper = world.orchestrator.sleeper
    sleeper.policy = SleepPolicy(idle_after=timedelta(milliseconds=50))
    world.network.counts = {"busy": 1, "quiet": 7}
    await sleeper.check()  # first reading: nobody is idle yet
    assert (await world.env("quiet")).status is EnvironmentStatus.RUNNING
    await asyncio.sleep(0.1)
    world.network.counts["busy"] = 2  # a new connection
    await sleeper.check()
    await world.orchestrator.wait_idle("quiet")
    assert (await world.env("quiet")).status is EnvironmentStatus.STOPPED
    assert (await world.env("busy")).status is EnvironmentStatus.RUNNING
    assert (await world.env("portless")).status is EnvironmentStatus.RUNNING
    sleeping = next(c for c in (await world.env("quiet")).conditions if c.type == "Sleeping")
    assert sleeping.reason == "Idle" and "no connection on its published ports since" in sleeping.message


async def test_service_stop_and_start_check_state_etag_and_request_ids(world: World) -> None:
    svc = EnvironmentService(world.ledger, world.orchestrator, world.bus, Catalog([SECRETIVE]), LimitSettings())
    await svc.create("s", EnvironmentRequest(stack="secretive"))
    await world.orchestrator.wait_idle("s")
    current = await svc.get("s")
    with pytest.raises(Conflict):
        await svc.stop("s", etag="stale")
    assert (await svc.stop("s", validate_only=True)).status is EnvironmentStatus.RUNNING
    await world.orchestrator.wait_idle("s")
    assert (await svc.get("s")).status is EnvironmentStatus.RUNNING  # validate_only stopped nothing
    await svc.stop("s", etag=etag(current), request_id="r-1", actor="tester")
    await world.orchestrator.wait_idle("s")
    assert (await svc.get("s")).status is EnvironmentStatus.STOPPED
    with pytest.raises(FailedPrecondition, match="start it"):
        await svc.update("s", lambda request: request)
    await svc.start("s", request_id="r-2")
    await world.orchestrator.wait_idle("s")
    assert (await svc.get("s")).status is EnvironmentStatus.RUNNING
    await svc.stop("s", request_id="r-1")  # a retry of the first stop: recognised, nothing stops
    await world.orchestrator.wait_idle("s")
    assert (await svc.get("s")).status is EnvironmentStatus.RUNNING
    history = [(e.action, e.actor) for e in await world.ledger.history("s")]
    assert history.count(("stop", "tester")) == 1 and [a for a, _ in history].count("start") == 1
    await svc.delete("s")
    with pytest.raises(FailedPrecondition, match="deleted"):
        await svc.start("s")


async def test_with_keep_tasks_a_sleeping_container_keeps_a_created_task(tmp_path: Path) -> None:
    made = await make_world(tmp_path)
    try:
        made.orchestrator._sleep._settings = replace(made.orchestrator._sleep._settings, sleep_keeps_tasks=True)
        deployed = await made.deploy("k", service("app"))
        cid = deployed.containers[0].container_id
        made.runtime.calls.clear()
        made.orchestrator.submit_stop("k", "Requested", "by a test")
        await made.orchestrator.wait_idle("k")
        kinds = [c[0] for c in made.runtime.calls if len(c) > 1 and c[1] == cid]
        assert kinds[-2:] == ["release", "prepare_start"], kinds
        assert (await made.env("k")).status is EnvironmentStatus.STOPPED
    finally:
        await made.supervisor.close()
        await made.orchestrator.close()


async def test_after_a_restart_a_sleeping_environment_is_held_and_woken_again(world: World) -> None:
    await world.deploy("r", service("app"))
    world.orchestrator.submit_stop("r", "Requested", "by a test")
    await world.orchestrator.wait_idle("r")
    sock = bind("127.0.0.1", 0, "tcp")
    endpoint = Endpoint("app", "127.0.0.1", sock.getsockname()[1], 80)
    world.network.held["r"] = [(endpoint, sock)]
    woken: list[tuple[str, str]] = []
    # What a restarted daemon builds over the same ledger: its sleeper holds the ports at start.
    sleeper = Sleeper(
        world.ledger,
        world.network,
        SleepPolicy(wake_deadline=5),
        submit_stop=lambda *_: None,
        submit_start=lambda name, message: woken.append((name, message)),
        busy=lambda name: False,
    )
    sleeper.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.host_port)
        await world.until("the wake is submitted", lambda: woken)
        assert woken == [("r", f"woken by a connection to 127.0.0.1:{endpoint.host_port}")]
        writer.close()
    finally:
        await sleeper.close()
        sock.close()
