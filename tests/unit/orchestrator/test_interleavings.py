"""Random interleavings of operations and runtime events on one environment keep its invariants.

Hypothesis draws a sequence of updates (replicas, new versions of a stateless and a stateful
service), container crashes, supervisor resyncs, pauses and a delete, and throws them at one
environment through the service, the orchestrator and the supervisor over the fakes. Checked:

- never two live containers of the stateful service at once (watched at every start);
- once everything settled, the recorded containers are exactly the runtime's, running ones
  with the runtime's pid, and the status is RUNNING or DEGRADED accordingly;
- after the delete, nothing is left: no container, attachment, backend or record.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler import domain, labels
from scheduler.config import LimitSettings
from scheduler.domain import (
    ContainerState,
    Dependency,
    DependencyCondition,
    EnvironmentRequest,
    EnvironmentStatus,
    RestartMode,
    RestartPolicy,
    ServiceOverride,
    ServiceSpec,
)
from scheduler.errors import FailedPrecondition, NotFound
from scheduler.runtime.fake import FakeRuntime
from scheduler.service import EnvironmentService
from scheduler.stacks.catalog import Catalog
from scheduler.stacks.stack import Stack
from tests.unit.orchestrator.test_supervisor import IMAGE, World, make_world, ms

NAME = "prop"
POLICY = RestartPolicy(RestartMode.ALWAYS, 0, ms(5), ms(20), ms(50))
STACK = Stack(
    name="pair",
    description="A stateful database and a stateless web tier that needs it.",
    services=(
        ServiceSpec(name="db", image=IMAGE, stateful=True, restart=POLICY, stop_grace=ms(20)),
        ServiceSpec(
            name="web",
            image=IMAGE,
            restart=POLICY,
            stop_grace=ms(20),
            depends_on=(Dependency("db", DependencyCondition.STARTED),),
        ),
    ),
)


class WatchfulRuntime(FakeRuntime):
    """Records every moment two containers of the stateful service would run at once."""

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[str] = []

    async def start(self, container_id: str) -> int:
        mine = self.containers.get(container_id)
        if mine is not None and mine.config.labels.get(labels.SERVICE) == "db":
            live = [
                cid
                for cid, c in self.containers.items()
                if cid != container_id
                and c.config.labels.get(labels.SERVICE) == "db"
                and c.state is domain.TaskState.RUNNING
            ]
            if live:
                self.violations.append(f"{container_id} started while {live} ran")
        return await super().start(container_id)


Op = tuple[str, int, int]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("update-web"), st.integers(1, 3), st.integers(1, 3)),
        st.tuples(st.just("update-db"), st.integers(1, 3), st.just(0)),
        st.tuples(st.just("crash"), st.integers(0, 3), st.integers(0, 2)),
        st.tuples(st.just("pause"), st.integers(0, 15), st.just(0)),
        st.tuples(st.just("resync"), st.just(0), st.just(0)),
        st.tuples(st.just("delete"), st.just(0), st.just(0)),
    ),
    max_size=12,
)


def request(web_replicas: int, web_version: int, db_version: int) -> EnvironmentRequest:
    return EnvironmentRequest(
        stack="pair",
        services={
            "web": ServiceOverride(replicas=web_replicas, env={"VERSION": str(web_version)}),
            "db": ServiceOverride(env={"VERSION": str(db_version)}),
        },
    )


def disagreement(world: World, runtime: FakeRuntime) -> str:
    """How the recorded state differs from the runtime's; empty when they agree."""
    env = world.ledger.find(NAME)
    if env is None:
        return ""
    if env.status not in (EnvironmentStatus.RUNNING, EnvironmentStatus.DEGRADED, EnvironmentStatus.FAILED):
        return f"status {env.status}"
    ours = {cid: c for cid, c in runtime.containers.items() if c.config.labels.get(labels.ENV) == NAME}
    if {c.container_id for c in env.containers} != set(ours):
        return f"recorded {[c.container_id for c in env.containers]}, running {list(ours)}"
    for status in env.containers:
        if status.state in (ContainerState.RESTARTING, ContainerState.PENDING, ContainerState.CREATED):
            return f"{status.container_id} is {status.state}"
        real = ours[status.container_id]
        if status.state is ContainerState.RUNNING and (
            real.state is not domain.TaskState.RUNNING or real.pid != status.pid
        ):
            return f"{status.container_id} recorded running as {status.pid}, is {real.state} as {real.pid}"
    running = all(c.state is ContainerState.RUNNING for c in env.containers)
    if env.status is EnvironmentStatus.RUNNING and not running:
        return "RUNNING with containers that are not"
    return ""


async def settle(world: World, runtime: FakeRuntime) -> None:
    """Wait (bounded) until no operation runs and the record agrees with the runtime."""
    problem = ""
    for _ in range(500):
        await world.orchestrator.wait_idle(NAME)
        problem = disagreement(world, runtime)
        if not problem:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never settled: {problem}")


async def scenario(tmp: Path, steps: list[Op]) -> None:
    runtime = WatchfulRuntime().with_image(IMAGE)
    world = await make_world(tmp, runtime=runtime)
    assert isinstance(world.runtime, WatchfulRuntime)
    service = EnvironmentService(world.ledger, world.orchestrator, world.bus, Catalog([STACK]), LimitSettings())
    versions = {"web": (1, 1), "db": 1}
    try:
        await service.create(NAME, request(1, 1, 1))
        deleted = False
        for kind, a, b in steps:
            if kind == "update-web" or kind == "update-db":
                web = (a, b) if kind == "update-web" else versions["web"]
                db = a if kind == "update-db" else versions["db"]
                try:
                    await service.update(NAME, lambda _, web=web, db=db: request(*web, db), drain=ms(1))
                    versions = {"web": web, "db": db}
                except (FailedPrecondition, NotFound):
                    pass  # deploying or deleting: refused, as a client would see
            elif kind == "crash":
                running = sorted(cid for cid, c in runtime.containers.items() if c.state is domain.TaskState.RUNNING)
                if running:
                    runtime.crash(running[a % len(running)], code=b)
            elif kind == "pause":
                await asyncio.sleep(a / 1000)
            elif kind == "resync":
                await world.supervisor.resync()
            elif kind == "delete" and not deleted:
                await service.delete(NAME)
                deleted = True
            await asyncio.sleep(0)

        await settle(world, runtime)
        env = world.ledger.find(NAME)
        if env is not None:
            if env.status is EnvironmentStatus.RUNNING:
                assert sorted(c.service for c in env.containers) == sorted(["db"] + ["web"] * versions["web"][0])
            assert await world.store.get(NAME) == env  # memory and store agree
            if not deleted:
                await service.delete(NAME)
        await world.orchestrator.wait_idle(NAME)
        assert world.ledger.find(NAME) is None
        assert runtime.containers == {}
        assert world.network.attached == {} and world.network.backends == {}
        assert runtime.violations == []
    finally:
        await world.supervisor.close()
        await world.orchestrator.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_random_interleavings_keep_the_invariants(steps: list[Op]) -> None:
    with tempfile.TemporaryDirectory(prefix="interleave-") as tmp:
        asyncio.run(asyncio.wait_for(scenario(Path(tmp), steps), 30))
