"""Startup reconciliation over fakes: a 'crashed' daemon's world is handed to a fresh one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from scheduler import domain
from scheduler.domain import (
    ChangeAction,
    ContainerState,
    ContainerStatus,
    Environment,
    EnvironmentSpec,
    EnvironmentStatus,
    Health,
    RestartMode,
)
from scheduler.network.fake import FakeNetwork
from scheduler.orchestrator.reconcile import Reconciler, interrupted, unfinished_services
from scheduler.runtime.containerd import labels
from scheduler.runtime.fake import FakeContainer, FakeRuntime
from scheduler.storage.memory import MemoryStateStore
from tests.unit.orchestrator.test_supervisor import IMAGE, World, make_world, service


@pytest.fixture
async def worlds(tmp_path: Path) -> AsyncIterator[list[World]]:
    made: list[World] = []
    yield made
    for world in made:
        await world.supervisor.close()
        await world.orchestrator.close()


async def crash_and_restart(old: World, worlds: list[World]) -> World:
    """Drop the old daemon's in-memory state (its containers keep running) and boot a new one."""
    await old.supervisor.close()
    await old.orchestrator.close()
    new = await make_world(old.tmp, old.store, old.runtime, old.network)
    worlds.append(new)
    return new


async def first_world(tmp: Path, worlds: list[World]) -> World:
    world = await make_world(tmp, MemoryStateStore(), FakeRuntime().with_image(IMAGE), FakeNetwork())
    worlds.append(world)
    return world


def stray(runtime: FakeRuntime, env: str, cid: str) -> None:
    image = runtime.images[IMAGE]
    config = domain.ContainerConfig(
        id=cid,
        image=image,
        labels={labels.OWNER: labels.OWNER_VALUE, labels.ENV: env, labels.SERVICE: "app", labels.REPLICA: "0"},
    )
    runtime.containers[cid] = FakeContainer(config=config, state=domain.TaskState.RUNNING, pid=4242)


async def test_running_containers_are_adopted_without_a_restart(tmp_path: Path, worlds: list[World]) -> None:
    old = await first_world(tmp_path, worlds)
    await old.deploy("shop", service("web", RestartMode.ALWAYS, replicas=2), service("db", RestartMode.NO))
    before = {c.container_id: c.pid for c in (await old.env("shop")).containers}
    starts = len(old.runtime.calls_of("start"))

    new = await crash_and_restart(old, worlds)
    report = await Reconciler(new.ledger, new.runtime, new.network, new.supervisor, new.orchestrator).run()
    await new.orchestrator.start()

    assert sorted(report.adopted) == sorted(before)
    assert report.removed == [] and report.exited == [] and report.redeployed == []
    assert len(new.runtime.calls_of("start")) == starts  # nothing started again
    env = await new.env("shop")
    assert env.status is EnvironmentStatus.RUNNING
    assert {c.container_id: c.pid for c in env.containers} == before
    assert new.network.swept == [{"shop"}]
    # The new supervisor owns them: a crash now is restarted per policy.
    web = next(c for c in env.containers if c.service == "web")
    new.runtime.crash(web.container_id, code=1)
    await new.until(
        "restart by the new supervisor",
        lambda: _restarted(new, "shop", web.container_id),
    )


async def test_a_container_left_frozen_by_an_interrupted_clone_is_thawed(tmp_path: Path, worlds: list[World]) -> None:
    old = await first_world(tmp_path, worlds)
    await old.deploy("staging", service("db", RestartMode.NO))
    db = (await old.env("staging")).containers[0]
    await old.runtime.pause(db.container_id)  # the daemon stopped during a clone's last pass

    new = await crash_and_restart(old, worlds)
    report = await Reconciler(new.ledger, new.runtime, new.network, new.supervisor, new.orchestrator).run()
    assert report.adopted == [db.container_id]
    assert [c[1] for c in new.runtime.calls_of("resume")] == [db.container_id]
    assert new.runtime.containers[db.container_id].state is domain.TaskState.RUNNING


async def _restarted(world: World, env: str, cid: str) -> bool:
    status = next(c for c in (await world.env(env)).containers if c.container_id == cid)
    return status.restart_count == 1 and status.state is ContainerState.RUNNING


async def test_containers_that_died_while_down_follow_their_policy(tmp_path: Path, worlds: list[World]) -> None:
    old = await first_world(tmp_path, worlds)
    await old.deploy("shop", service("web", RestartMode.ALWAYS), service("db", RestartMode.NO))
    env = await old.env("shop")
    web = next(c for c in env.containers if c.service == "web")
    db = next(c for c in env.containers if c.service == "db")
    await old.supervisor.close()  # down: nobody hears these exits
    old.runtime.crash(web.container_id, code=137)
    old.runtime.crash(db.container_id, code=1)

    new = await crash_and_restart(old, worlds)
    report = await Reconciler(new.ledger, new.runtime, new.network, new.supervisor, new.orchestrator).run()
    assert sorted(report.exited) == sorted([web.container_id, db.container_id])
    await new.until("web restarted", lambda: _restarted(new, "shop", web.container_id))
    after = await new.env("shop")
    db_after = next(c for c in after.containers if c.service == "db")
    assert db_after.state is ContainerState.EXITED and db_after.exit_code == 1
    assert after.status is EnvironmentStatus.DEGRADED
    ready = next(c for c in after.conditions if c.type == "Ready")
    assert ready.service == "db" and not ready.status


async def test_strays_are_removed_and_allocations_swept(tmp_path: Path, worlds: list[World]) -> None:
    old = await first_world(tmp_path, worlds)
    await old.deploy("shop", service("web", RestartMode.ALWAYS))
    stray(old.runtime, "ghost", "ghost.app.0.aaaaaa")  # environment deleted from the store
    stray(old.runtime, "shop", "shop.app.0.bbbbbb")  # created, then the daemon died before recording it
    old.network.envs.add("ghost")

    new = await crash_and_restart(old, worlds)
    report = await Reconciler(new.ledger, new.runtime, new.network, new.supervisor, new.orchestrator).run()
    assert sorted(report.removed) == ["ghost.app.0.aaaaaa", "shop.app.0.bbbbbb"]
    assert set(new.runtime.containers) == {c.container_id for c in (await new.env("shop")).containers}
    assert "ghost" not in new.network.envs
    assert not [e for e in new.seen if e.type is domain.EventType.CONTAINER_RESTARTED]
    # A second pass finds nothing left to do.
    again = await Reconciler(new.ledger, new.runtime, new.network, new.supervisor, new.orchestrator).run()
    assert again.removed == [] and again.exited == [] and len(again.adopted) == 1


async def test_an_interrupted_deploy_converges_without_duplicates(tmp_path: Path, worlds: list[World]) -> None:
    old = await first_world(tmp_path, worlds)
    spec = (service("web", RestartMode.ALWAYS, replicas=2), service("db", RestartMode.ALWAYS))
    await old.deploy("shop", *spec)
    # Pretend the daemon died mid-deploy: the status says DEPLOYING and only some containers are recorded.
    env = await old.env("shop")
    half = replace(env, status=EnvironmentStatus.DEPLOYING, containers=env.containers[:1], observed_generation=0)
    await old.store.put(half, expected_revision=env.revision)

    new = await crash_and_restart(old, worlds)
    report = await Reconciler(new.ledger, new.runtime, new.network, new.supervisor, new.orchestrator).run()
    assert report.redeployed == ["shop"] and len(report.removed) == 3
    await new.orchestrator.start()
    await new.orchestrator.wait_idle("shop")
    after = await new.env("shop")
    assert after.status is EnvironmentStatus.RUNNING
    assert len(after.containers) == 3 and set(new.runtime.containers) == {c.container_id for c in after.containers}
    assert not set(new.runtime.containers) & {c.container_id for c in env.containers}
    history = [h.action for h in await new.store.history("shop")]
    assert "resume" in history


def test_interrupted_covers_deploys_and_half_done_updates() -> None:
    spec = EnvironmentSpec("s", (service(),))
    base = Environment("e", "u", spec, generation=2, observed_generation=2, status=EnvironmentStatus.RUNNING)
    assert not interrupted(base)
    assert interrupted(replace(base, observed_generation=1))
    assert interrupted(replace(base, status=EnvironmentStatus.PENDING))
    assert not interrupted(replace(base, status=EnvironmentStatus.FAILED, observed_generation=1))
    assert not interrupted(replace(base, status=EnvironmentStatus.DELETING, observed_generation=1))


async def test_an_interrupted_update_is_rolled_out_without_downtime_or_duplicates(
    tmp_path: Path, worlds: list[World]
) -> None:
    old = await first_world(tmp_path, worlds)
    await old.deploy("shop", service("web", RestartMode.ALWAYS, replicas=2), service("db", RestartMode.ALWAYS))
    env = await old.env("shop")
    before = {c.container_id for c in env.containers}
    # The update was accepted (new spec stored, generation 2) and the daemon died before rolling it out.
    newer = replace(
        env.spec, services=(service("web", RestartMode.ALWAYS, replicas=3), service("db", RestartMode.ALWAYS))
    )
    await old.store.put(replace(env, spec=newer, generation=2), expected_revision=env.revision)

    new = await crash_and_restart(old, worlds)
    reconciler = Reconciler(
        new.ledger, new.runtime, new.network, new.supervisor, new.orchestrator, resume_drain=timedelta(milliseconds=20)
    )
    report = await reconciler.run()
    assert report.resumed == ["shop"] and report.redeployed == [] and sorted(report.adopted) == sorted(before)
    assert new.orchestrator.busy("shop")
    # While the rollout runs, the adopted replicas keep serving.
    assert len(new.network.backends[("shop", "web")]) == 2
    await new.orchestrator.wait_idle("shop")
    after = await new.env("shop")
    assert after.status is EnvironmentStatus.RUNNING and after.observed_generation == after.generation == 2
    assert sorted((c.service, c.replica) for c in after.containers) == [("db", 0), ("web", 0), ("web", 1), ("web", 2)]
    assert set(new.runtime.containers) == {c.container_id for c in after.containers}
    assert not set(new.runtime.containers) & before
    assert all(new.runtime.containers[c.container_id].config.labels[labels.GENERATION] == "2" for c in after.containers)
    assert len(new.network.backends[("shop", "web")]) == 3
    assert "resume" in [h.action for h in await new.store.history("shop")]


def test_unfinished_services_reads_generation_labels() -> None:
    spec = EnvironmentSpec("s", (service("a", replicas=2), service("b"), service("c")))

    def status(svc: str, replica: int, cid: str, state: ContainerState = ContainerState.RUNNING) -> ContainerStatus:
        return ContainerStatus(svc, replica, cid, state, Health.HEALTHY)

    env = Environment(
        "e",
        "u",
        spec,
        generation=3,
        observed_generation=2,
        status=EnvironmentStatus.RUNNING,
        containers=(status("a", 0, "a0"), status("a", 1, "a1"), status("b", 0, "b0", ContainerState.UNKNOWN)),
    )
    changes = unfinished_services(env, {"a0": "3", "a1": "3", "b0": "3"})
    assert [(c.service, c.action) for c in changes] == [("b", ChangeAction.REPLACE), ("c", ChangeAction.ADD)]
    older = unfinished_services(env, {"a0": "3", "a1": "2", "b0": "3"})
    assert ("a", ChangeAction.REPLACE) in [(c.service, c.action) for c in older]
    starting = replace(env, containers=(replace(env.containers[0], health=Health.STARTING), *env.containers[1:]))
    assert ("a", ChangeAction.REPLACE) in [(c.service, c.action) for c in unfinished_services(starting, {"a0": "3"})]
