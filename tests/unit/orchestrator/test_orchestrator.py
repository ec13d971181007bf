"""Deploy, update, rollback and delete over the fakes: order, partial failure, races with the supervisor."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from scheduler import domain, labels
from scheduler.domain import (
    ContainerState,
    Dependency,
    DependencyCondition,
    Environment,
    EnvironmentSpec,
    EnvironmentStatus,
    EventType,
    HealthCheck,
    HealthCheckKind,
    PortSpec,
    RestartMode,
)
from scheduler.errors import AlreadyExists, Unavailable
from tests.unit.orchestrator.test_supervisor import IMAGE, World, ms, service

EXEC_CHECK = HealthCheck(HealthCheckKind.EXEC, command=("check",), interval=ms(10), timeout=ms(50), retries=2)


def starts(world: World) -> list[str]:
    """Services in the order their containers were started."""
    return [world.runtime.containers[c[1]].config.labels[labels.SERVICE] for c in world.runtime.calls_of("start")]


def leftovers(world: World, name: str) -> list[str]:
    """Containers, attachments and backends the environment still holds."""
    held = [cid for cid in world.runtime.containers if cid.startswith(f"{name}.")]
    held += [cid for cid, env in world.network.owners.items() if env == name]
    held += [f"{env}/{svc}" for env, svc in world.network.backends if env == name]
    return held


async def test_a_deploy_starts_services_in_dependency_order(world: World) -> None:
    after_db = (Dependency("db", DependencyCondition.STARTED),)
    after_api = (Dependency("api", DependencyCondition.STARTED),)
    env = await world.deploy(
        "shop",
        service("web", depends_on=after_api),
        service("api", depends_on=after_db, replicas=2),
        service("db"),
    )
    assert starts(world) == ["db", "api", "api", "web"]
    assert env.observed_generation == env.generation
    assert [(c.service, c.state) for c in env.containers] == [
        ("api", ContainerState.RUNNING),
        ("api", ContainerState.RUNNING),
        ("db", ContainerState.RUNNING),
        ("web", ContainerState.RUNNING),
    ]
    kinds = [e.type for e in world.seen if e.environment == "shop"]
    assert kinds.index(EventType.ENVIRONMENT_DEPLOYING) < kinds.index(EventType.ENVIRONMENT_RUNNING)


async def test_a_failed_start_fails_the_deploy_naming_the_service_and_stops_its_dependents(world: World) -> None:
    world.runtime.fail_next("start", Unavailable("no more pids"))
    after_db = (Dependency("db", DependencyCondition.STARTED),)
    spec = EnvironmentSpec(stack="toolbox", services=(service("db"), service("api", depends_on=after_db)))
    await world.ledger.create(Environment(name="shop", uid="u1", spec=spec))
    world.orchestrator.submit_deploy("shop")
    await world.orchestrator.wait_idle("shop")
    env = await world.env("shop")
    assert env.status is EnvironmentStatus.FAILED
    ready = next(c for c in env.conditions if c.type == "Ready")
    assert (ready.status, ready.service, ready.reason) == (False, "db", "StartFailed")
    assert "no more pids" in ready.message
    assert "api" not in starts(world)  # the dependent never started
    # Deleting a failed environment leaves nothing behind.
    await world.ledger.change("shop", lambda e: replace(e, status=EnvironmentStatus.DELETING))
    world.orchestrator.submit_delete("shop", keep_volumes=False)
    await world.orchestrator.wait_idle("shop")
    assert world.ledger.find("shop") is None
    assert leftovers(world, "shop") == []


async def test_a_port_taken_fails_the_deploy_and_leaves_no_task_set_up_ahead(world: World) -> None:
    # Every service prepares at once, its task included; a failure before a service's start
    # (here its published port, once the other services' tasks are set up) must not leave them.
    async def taken(env: str, service: str, container_port: int, **_: object) -> domain.Endpoint:
        await world.until("tasks set up", lambda: len(world.runtime.calls_of("prepare_start")) >= 2)
        raise AlreadyExists(f"port 8080 is published by environment other (service {service})")

    world.network.publish = taken  # type: ignore[method-assign,assignment]
    after_db = (Dependency("db", DependencyCondition.HEALTHY, deadline=ms(60_000)),)
    web = replace(service("web", depends_on=after_db), ports=(PortSpec(80, publish=True, host_port=8080),))
    spec = EnvironmentSpec(stack="toolbox", services=(service("db"), service("api", depends_on=after_db), web))
    await world.ledger.create(Environment(name="shop", uid="u1", spec=spec))
    world.orchestrator.submit_deploy("shop")
    await world.orchestrator.wait_idle("shop")
    env = await world.env("shop")
    ready = next(c for c in env.conditions if c.type == "Ready")
    assert (env.status, ready.service, ready.reason) == (EnvironmentStatus.FAILED, "web", "PortUnavailable")
    prepared = {c[1] for c in world.runtime.calls_of("prepare_start")}
    started = {c[1] for c in world.runtime.calls_of("start")}
    cancelled = {c[1] for c in world.runtime.calls_of("cancel_start")}
    assert len(prepared) >= 2 and prepared - started <= cancelled, (prepared, started, cancelled)
    assert not any(world.runtime.containers[c].config.labels[labels.SERVICE] == "web" for c in started)


async def test_a_delete_during_a_deploy_cancels_it_and_leaves_nothing(world: World) -> None:
    # The api waits for a db that never becomes healthy: the deploy is stuck in the middle.
    world.runtime.exec_handler = lambda cid, argv: domain.ExecResult(1, "not yet")
    slow_db = service("db", health=replace(EXEC_CHECK, start_period=ms(60_000)))
    after_db = (Dependency("db", DependencyCondition.HEALTHY, deadline=ms(60_000)),)
    spec = EnvironmentSpec(stack="toolbox", services=(slow_db, service("api", depends_on=after_db)))
    await world.ledger.create(Environment(name="shop", uid="u1", spec=spec))
    world.orchestrator.submit_deploy("shop")
    await world.until("db started", lambda: "db" in starts(world))
    assert (await world.env("shop")).status is EnvironmentStatus.DEPLOYING

    await world.ledger.change("shop", lambda e: replace(e, status=EnvironmentStatus.DELETING))
    world.orchestrator.submit_delete("shop", keep_volumes=False)
    await asyncio.wait_for(world.orchestrator.wait_idle("shop"), 5)
    assert world.ledger.find("shop") is None
    assert leftovers(world, "shop") == []
    kinds = [e.type for e in world.seen if e.environment == "shop"]
    assert EventType.ENVIRONMENT_DELETED in kinds
    assert EventType.ENVIRONMENT_FAILED not in kinds and EventType.ENVIRONMENT_RUNNING not in kinds


async def test_a_failed_update_rolls_back_to_the_previous_spec_and_keeps_serving(world: World) -> None:
    serving: set[str] = set()  # once set, only these pass their health check
    world.runtime.exec_handler = lambda cid, argv: domain.ExecResult(0 if not serving or cid in serving else 1, "")
    env = await world.deploy("roll", service("app", health=EXEC_CHECK, replicas=2))
    serving.update(c.container_id for c in env.containers)
    before_ips = set(world.network.backends[("roll", "app")])
    broken = replace(env.spec, services=(replace(env.spec.services[0], args=("broken",)),))
    await world.ledger.change("roll", lambda e: replace(e, spec=broken, generation=2))
    world.orchestrator.submit_update("roll", env, [domain.ServiceChange("app", domain.ChangeAction.REPLACE)], ms(5))
    await world.orchestrator.wait_idle("roll")

    rolled = await world.env("roll")
    assert rolled.spec == env.spec and rolled.generation == 3 and rolled.observed_generation == 3
    assert rolled.status is EnvironmentStatus.RUNNING
    assert any(c.type == "RolledBack" and c.service == "app" for c in rolled.conditions)
    assert {c.container_id for c in rolled.containers} == serving  # the old replicas kept serving
    assert set(world.network.backends[("roll", "app")]) == before_ips
    assert set(world.runtime.containers) == serving  # the failed new replicas are gone
    assert "rollback" in [h.action for h in await world.ledger.history("roll")]


async def test_a_crash_of_another_service_during_an_update_is_recorded_and_healed(world: World) -> None:
    env = await world.deploy("mix", service("web", replicas=2), service("worker", RestartMode.ALWAYS))
    worker = await world.container("mix", "worker")
    newer = replace(env.spec, services=(replace(env.spec.services[0], args=("v2",)), env.spec.services[1]))
    await world.ledger.change("mix", lambda e: replace(e, spec=newer, generation=2))
    changes = [domain.ServiceChange("web", domain.ChangeAction.REPLACE)]
    world.orchestrator.submit_update("mix", env, changes, ms(100))  # the drain leaves time for the crash
    await world.until("new web replicas", lambda: len(world.runtime.calls_of("start")) >= 5)
    world.runtime.crash(worker.container_id, code=3)
    await world.orchestrator.wait_idle("mix")
    await world.until("worker restarted", lambda: world.runtime.containers[worker.container_id].starts == 2)
    await world.until(
        "environment settled",
        lambda: _settled(world, "mix"),
    )
    final = await world.env("mix")
    assert final.status is EnvironmentStatus.RUNNING and final.observed_generation == 2
    restarted = next(c for c in final.containers if c.service == "worker")
    assert restarted.restart_count == 1 and restarted.exit_code == 3
    assert {c.container_id for c in final.containers} == set(world.runtime.containers)


async def _settled(world: World, name: str) -> bool:
    env = await world.env(name)
    return env.status is EnvironmentStatus.RUNNING and all(c.state is ContainerState.RUNNING for c in env.containers)


async def test_every_write_goes_through_the_ledger_with_a_fresh_revision(world: World) -> None:
    await world.deploy("rev", service("app"))
    stored = await world.store.get("rev")
    assert stored == await world.env("rev")
    assert stored.revision > 3  # created, deploying, recorded containers, running: each a revision
    assert IMAGE in world.runtime.images


async def test_a_delete_that_fails_is_tried_again_promptly_until_nothing_is_left(world: World) -> None:
    await world.deploy("flaky", service("app", replicas=2))
    # containerd restarting under the delete: the first two tries of a container's removal fail.
    world.runtime.fail_next("delete", Unavailable("containerd is restarting"))
    world.runtime.fail_next("delete", Unavailable("containerd is restarting"))
    await world.ledger.change("flaky", lambda e: replace(e, status=EnvironmentStatus.DELETING))
    world.orchestrator.submit_delete("flaky", keep_volumes=False)
    await asyncio.wait_for(world.orchestrator.wait_idle("flaky"), 20)
    assert world.ledger.find("flaky") is None
    assert leftovers(world, "flaky") == []
    deletes = [c for c in world.runtime.calls if c[0] == "delete"]
    assert len(deletes) >= 4  # two replicas, and the two failed tries again
    kinds = [e.type for e in world.seen if e.environment == "flaky"]
    assert kinds.count(EventType.ENVIRONMENT_DELETED) == 1
